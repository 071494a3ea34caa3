"""How the files beside this script were made (not run by CI; needs grpcio).

Starts r-nacos 0.8.8 (the Makefile's copy) on loopback ports with a throwaway data dir,
then speaks Nacos 2.x gRPC to it as the plugin will, with raw protobuf bytes made by
the few lines below, and saves what the server sent, byte for byte:

  server_check.bin            ServerCheckResponse to a unary ServerCheckRequest
  subscribe_unregistered.bin  the answer to SubscribeServiceRequest sent before any stream
  subscribe_one_host.bin      SubscribeServiceResponse listing the one registered instance
  notify_two_hosts.bin        NotifySubscriberRequest after a second instance registered
  notify_empty.bin            NotifySubscriberRequest after both were deregistered
  detection.bin               ClientDetectionRequest on an idle stream
  subscribe_no_token.bin      with open-API auth on: subscribe without a token (refused)

    python3 -m venv /tmp/grpcvenv && /tmp/grpcvenv/bin/pip install grpcio
    /tmp/grpcvenv/bin/python src/pure/push/captured/capture.py

It prints what it saw and when: the push delays, the idle-stream detections and what
an unanswered one does, a subscribe before and right after the stream opens, and which
header map the access token is read from (a second r-nacos with open-API auth on).
r-nacos 0.8.8 sometimes panics on a fresh data dir at start; the script then exits and
is simply run again.
"""

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
RNACOS = Path.home() / ".cache/nacos-instance-guard/rnacos-0.8.8/bin/rnacos"
T0 = time.monotonic()


def log(*args):
    print(f"{time.monotonic() - T0:7.3f}", *args, flush=True)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def payload(message_type, body, headers=None):
    meta = field(3, message_type.encode())
    for key, value in (headers or {}).items():
        meta += field(7, field(1, key.encode()) + field(2, value.encode()))
    return field(2, meta) + field(3, field(2, json.dumps(body).encode()))


def fields(data):
    """(number, bytes) of the length-delimited fields; enough for what servers send."""
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        if key & 7 == 2:
            size, i = read_varint(data, i)
            yield key >> 3, data[i : i + size]
            i += size
        elif key & 7 == 0:
            _, i = read_varint(data, i)
        else:
            raise ValueError(f"wire type {key & 7}")


def read_varint(data, i):
    n = shift = 0
    while True:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return n, i


def parse(data):
    top = dict(fields(data))
    meta = dict(fields(top.get(2, b"")))
    body = dict(fields(top.get(3, b""))).get(2, b"")
    return meta.get(3, b"").decode(), json.loads(body or b"null")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save(name, data):
    (HERE / name).write_bytes(data)
    log("saved", name, len(data), "bytes")


class Server:
    def __init__(self, auth):
        self.dir = Path(tempfile.mkdtemp(prefix="rnacos-capture-"))
        self.http, self.grpc = free_port(), free_port()
        env = dict(
            os.environ,
            RNACOS_HTTP_PORT=str(self.http),
            RNACOS_GRPC_PORT=str(self.grpc),
            RNACOS_HTTP_CONSOLE_PORT=str(free_port()),
            RNACOS_DATA_DIR=str(self.dir / "data"),
            RNACOS_ENABLE_OPEN_API_AUTH="true" if auth else "false",
            RUST_LOG="info",
        )
        self.log = open(self.dir / "rnacos.log", "w")
        self.proc = subprocess.Popen([str(RNACOS)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                self.call("GET", "/nacos/v1/ns/instance/list", {"serviceName": "probe"})
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1.5)  # raft applies the admin user and its state shortly after start
        if "panicked" in (self.dir / "rnacos.log").read_text():
            self.stop()
            raise SystemExit("r-nacos start-up race hit; run again")

    def call(self, method, path, params, token=None):
        if token:
            params = dict(params, accessToken=token)
        url = f"http://127.0.0.1:{self.http}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def listener():
    """A port that accepts TCP: r-nacos health-checks persistent instances by connecting
    to them, and pushes list only healthy instances, so a dead port vanishes from pushes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def instance(port, ip="127.0.0.1"):
    return {
        "serviceName": "demo",
        "groupName": "DEFAULT_GROUP",
        "namespaceId": "public",
        "ip": ip,
        "port": port,
        "ephemeral": "false",
    }


def subscribe_body(request_id, headers=None):
    return {
        "requestId": request_id,
        "headers": headers or {},
        "module": "naming",
        "namespace": "public",
        "serviceName": "demo",
        "groupName": "DEFAULT_GROUP",
        "clusters": "",
        "subscribe": True,
    }


class Stream:
    """The bi-stream: what is put on `out` is sent, what arrives is logged and queued."""

    def __init__(self, channel):
        self.out = queue.Queue()
        self.got = queue.Queue()
        call = channel.stream_stream("/BiRequestStream/requestBiStream", None, None)
        self.responses = call(iter(self.out.get, None))
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        try:
            for raw in self.responses:
                kind, body = parse(raw)
                log("stream <-", kind, json.dumps(body))
                self.got.put((time.monotonic(), kind, raw, body))
        except grpc.RpcError as e:
            log("stream ended", e.code())

    def drain(self):
        while not self.got.empty():
            self.got.get()

    def next(self, kind, timeout):
        end = time.monotonic() + timeout
        while True:
            at, got, raw, body = self.got.get(timeout=max(0.01, end - time.monotonic()))
            if got == kind:
                return at, raw, body


def main():
    srv = Server(auth=False)
    backends = [listener(), listener()]
    a, b = (s.getsockname()[1] for s in backends)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc}")
        unary = channel.unary_unary("/Request/request", None, None)

        raw = unary(payload("ServerCheckRequest", {"requestId": "", "headers": {}, "module": "internal"}))
        log("unary <-", *parse(raw))
        save("server_check.bin", raw)

        raw = unary(payload("SubscribeServiceRequest", subscribe_body("s0")))
        log("subscribe before any stream <-", *parse(raw))
        save("subscribe_unregistered.bin", raw)

        log("register", a, srv.call("POST", "/nacos/v1/ns/instance", instance(a)))
        stream = Stream(channel)
        setup = {
            "requestId": "",
            "headers": {},
            "module": "internal",
            "tenant": "public",
            "clientVersion": "capture",
            "labels": {"source": "sdk", "module": "naming"},
        }
        stream.out.put(payload("ConnectionSetupRequest", setup))
        # No wait: does a subscribe right behind the stream's opening find the connection?
        raw = unary(payload("SubscribeServiceRequest", subscribe_body("s1")))
        log("subscribe right after stream open <-", *parse(raw))
        time.sleep(0.5)
        raw = unary(payload("SubscribeServiceRequest", subscribe_body("s2")))
        log("subscribe 0.5 s later <-", *parse(raw))
        save("subscribe_one_host.bin", raw)

        for name, action, params in [
            ("notify_two_hosts.bin", "POST", instance(b)),
            (None, "DELETE", instance(a)),
            ("notify_empty.bin", "DELETE", instance(b)),
        ]:
            time.sleep(3)
            stream.drain()
            sent = time.monotonic()
            log(action, params["port"], srv.call(action, "/nacos/v1/ns/instance", params))
            at, raw, body = stream.next("NotifySubscriberRequest", 10)
            log(
                f"push {at - sent:.3f} s after the HTTP call, hosts:", [h["port"] for h in body["serviceInfo"]["hosts"]]
            )
            status, listed = srv.call(
                "GET", "/nacos/v1/ns/instance/list", {"serviceName": "demo", "healthyOnly": "false"}
            )
            log("HTTP list now:", [(h["port"], h["healthy"]) for h in json.loads(listed)["hosts"]])
            if name:
                save(name, raw)
            stream.out.put(
                payload("NotifySubscriberResponse", {"requestId": body["requestId"], "resultCode": 200, "errorCode": 0})
            )

        last = time.monotonic()
        log("idle: waiting for ClientDetectionRequest")
        for i in range(2):
            at, raw, body = stream.next("ClientDetectionRequest", 40)
            log(f"detection {at - last:.3f} s after the last client message")
            if i == 0:
                save("detection.bin", raw)
            stream.out.put(
                payload("ClientDetectionResponse", {"requestId": body["requestId"], "resultCode": 200, "errorCode": 0})
            )
            last = time.monotonic()
        log("no answer to the next detection: does the server close the stream?")
        at, raw, body = stream.next("ClientDetectionRequest", 40)
        log(f"detection {at - last:.3f} s after the last client message; not answered")
        time.sleep(6)
        raw = unary(payload("SubscribeServiceRequest", subscribe_body("s3")))
        log("subscribe 6 s after an unanswered detection <-", *parse(raw))
        stream.out.put(None)
        channel.close()
    finally:
        srv.stop()

    srv = Server(auth=True)
    try:
        status, body = srv.call("POST", "/nacos/v1/auth/login", {"username": "admin", "password": "admin"})
        token = json.loads(body)["accessToken"]
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc}")
        unary = channel.unary_unary("/Request/request", None, None)
        stream = Stream(channel)
        stream.out.put(
            payload(
                "ConnectionSetupRequest",
                {"requestId": "", "headers": {}, "module": "internal", "tenant": "public", "labels": {}},
            )
        )
        time.sleep(0.5)
        raw = unary(payload("SubscribeServiceRequest", subscribe_body("a1")))
        log("auth, no token <-", *parse(raw))
        save("subscribe_no_token.bin", raw)
        raw = unary(payload("SubscribeServiceRequest", subscribe_body("a2", {"accessToken": token})))
        log("auth, token in the JSON headers only <-", *parse(raw))
        raw = unary(payload("SubscribeServiceRequest", subscribe_body("a3"), {"accessToken": token}))
        log("auth, token in the Payload metadata headers <-", *parse(raw))
        stream.out.put(None)
        channel.close()
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
