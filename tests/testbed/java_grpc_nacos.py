"""A Nacos 2.x gRPC server (grpcio, raw bytes) that behaves as Java Nacos does where it
differs from r-nacos, each behaviour a switchable rule citing the alibaba/nacos source it
follows (paths at the develop branch; ``…/`` is ``src/main/java/com/alibaba/nacos/``).
It is written from reading that source, not from running Java Nacos, which cannot be
installed here; the official client (``nacos-sdk-python``) checks that it speaks the
protocol as a real client expects (``tests/e2e/test_java_semantics.py``).

It holds its own instances (``register``/``deregister``), which it pushes; HTTP polls in
the tests go to r-nacos, registered alike.

A client is its TCP connection, known here by grpcio's ``context.peer()`` (the remote
address and port, one per HTTP/2 connection), as Java knows it by the transport's remote
address (``core/…/core/remote/grpc/AddressTransportFilter.java``). grpcio cannot close a
TCP connection from the server side: where Java closes the connection, this server ends
the registered stream and forgets the connection, so the client's next unary call on it
gets ``301 Connection is unregistered`` as a new connection would until it sets up.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass

import grpc

from testbed.faulty_grpc_nacos import client_ip, decode, encode, serve_nacos_grpc
from testbed.waiting import free_port


@dataclass
class JavaRules:
    """What this server does like Java Nacos; each off is how r-nacos 0.8.8 does it."""

    # A second ConnectionSetupRequest on a registered connection keeps the first stream:
    # ``register`` returns at once when the connection id is known
    # (core/…/core/remote/ConnectionManager.java).
    first_stream_wins: bool = True
    # Unary calls but ServerCheck on a connection without a set-up stream are answered
    # ErrorResponse 301 "Connection is unregistered." (core/…/core/remote/grpc/GrpcRequestAcceptor.java).
    unregistered_301: bool = True
    # One subscriber per (connection, service): a second subscription replaces the
    # first's clusters (naming/…/naming/core/v2/client/AbstractClient.java, subscribers.put).
    one_subscriber_per_service: bool = True
    # Pushes carry the subscriber's clusters and only their instances
    # (naming/…/naming/push/v2/task/PushExecuteTask.java); off: clusters "" and all.
    push_subscriber_clusters: bool = True
    # Only the first subscription of a (connection, service) is pushed its list
    # ("only first time add need notify event", naming/…/naming/core/v2/index/ClientServiceIndexesManager.java).
    push_first_subscription: bool = True
    # ServerCheck is answered before the registration check and does not refresh the
    # connection's activity (GrpcRequestAcceptor.java); every other request does.
    server_check_is_activity: bool = False
    # Idle this long, a connection is sent ClientDetectionRequest and dropped if it does
    # not answer within detection_timeout_s (core/…/core/remote/NacosRuntimeConnectionEjector.java:
    # KEEP_ALIVE_TIME 20 s, checked every 3 s, 1 s to answer). None: off.
    idle_detection_s: float | None = 20.0
    detection_check_s: float = 3.0
    detection_timeout_s: float = 1.0
    # A push not acknowledged in time is pushed again (naming/…/naming/push/v2/task/PushExecuteTask.java
    # re-adds the task on failure); None: off.
    repush_after_s: float | None = 3.0
    # Pushes wait this long after a change (nacos.naming.push.pushTaskDelay, 500 ms).
    push_delay_s: float = 0.5
    # Subscriptions need this access token; refused as the handler's response type with
    # resultCode 500 / errorCode 403 (core/…/core/auth/RemoteRequestAuthFilter.java). None: open.
    access_token: str | None = None


class _Stream:
    """One bi-stream: what to send on it and whether it is still open."""

    def __init__(self, context):
        self.context = context
        self.outbox: queue.Queue = queue.Queue()
        self.ended = threading.Event()
        self.dropped = False  # the server closed it, as Java closes the connection

    def alive(self) -> bool:
        return not self.ended.is_set() and self.context.is_active()


class _Connection:
    def __init__(self, peer: str):
        _, _, address = peer.partition(":")
        self.id = f"{int(time.time() * 1000)}_{address.replace(':', '_')}"
        self.stream: _Stream | None = None  # the registered stream
        self.streams: list = []  # every stream opened on it, registered or not
        self.last_active = time.monotonic()
        self.subscribers: list = []  # [(namespace, group, name), clusters]


class JavaGrpcNacos:
    log_name = "java-grpc-nacos"

    def __init__(self, rules: JavaRules | None = None):
        self.rules = rules or JavaRules()
        self.port = free_port()
        self.received: list = []  # (peer, type, body) of every message a client sent
        self.client_ips: set = set()  # the metadata clientIp of every message
        self.events: list = []  # what the server did, for the tests and the log
        self._instances: dict = {}  # (group, name) -> {(ip, port): host}
        # Test knob, not a Java rule: the next push of a service carries this many bytes
        # of instance metadata (an oversized push), then pushes are plain again.
        self.pad_next_push = 0
        # Test knob: the next HealthCheckRequest is answered this many seconds late.
        self.stall_next_health_check_s = 0.0
        self._connections: dict = {}  # peer -> _Connection
        self._pending: dict = {}  # requestId -> threading.Event, answered on a stream
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._server = serve_nacos_grpc(self.port, self._unary, self._stream, workers=32)
        if self.rules.idle_detection_s is not None:
            threading.Thread(target=self._detect_idle, daemon=True).start()

    # ------------------------------------------------------------------ registry

    def register(self, port: int, ip: str = "127.0.0.1", service: str = "demo", cluster: str = "DEFAULT") -> None:
        group = "DEFAULT_GROUP"
        host = {
            "instanceId": f"{ip}#{port}#{cluster}#{group}@@{service}",
            "ip": ip,
            "port": port,
            "weight": 1.0,
            "healthy": True,
            "enabled": True,
            "ephemeral": True,
            "clusterName": cluster,
            "serviceName": f"{group}@@{service}",
            "metadata": {},
        }
        with self._lock:
            self._instances.setdefault(("DEFAULT_GROUP", service), {})[(ip, port)] = host
        self._changed(service)

    def deregister(self, port: int, ip: str = "127.0.0.1", service: str = "demo") -> None:
        with self._lock:
            self._instances.get(("DEFAULT_GROUP", service), {}).pop((ip, port), None)
        self._changed(service)

    def _service_info(self, group: str, name: str, clusters: str) -> dict:
        hosts = list(self._instances.get((group, name), {}).values())
        wanted = [c for c in clusters.split(",") if c] if self.rules.push_subscriber_clusters else []
        if wanted:
            hosts = [h for h in hosts if h["clusterName"] in wanted]
        shown = clusters if self.rules.push_subscriber_clusters else ""
        # The bare name and a lastRefTime, as ServiceStorage.getPushData fills them
        # (naming/…/naming/core/v2/index/ServiceStorage.java): the official client keys
        # its cache by groupName@@name and drops a list not newer than the one it holds.
        return {
            "name": name,
            "groupName": group,
            "clusters": shown,
            "cacheMillis": 10000,
            "hosts": hosts,
            "lastRefTime": int(time.time() * 1000),
            "checksum": "",
            "allIPs": False,
            "reachProtectionThreshold": False,
        }

    def _changed(self, service: str) -> None:
        def later():
            time.sleep(self.rules.push_delay_s)
            with self._lock:
                targets = [
                    (c, sub)
                    for c in self._connections.values()
                    for sub in c.subscribers
                    if sub[0][1:] == ("DEFAULT_GROUP", service)
                ]
            for connection, (key, clusters) in targets:
                self._push(connection, key, clusters)

        threading.Thread(target=later, daemon=True).start()

    # ------------------------------------------------------------------ pushing

    def _push(self, connection: _Connection, key: tuple, clusters: str) -> None:
        """Push the service to the connection's registered stream, again until it is
        acknowledged; a push that cannot be written drops the connection, as Java's
        RpcPushService does on ConnectionAlreadyClosedException."""
        namespace, group, name = key
        while not self._stopped.is_set():
            request_id = str(next(self._ids))
            info = self._service_info(group, name, clusters)
            pad, self.pad_next_push = self.pad_next_push, 0
            if pad:
                info["hosts"] = [dict(h, metadata={"pad": "x" * pad}) for h in info["hosts"]]
            body = {
                "requestId": request_id,
                "headers": {},
                "module": "naming",
                "namespace": namespace,
                "serviceName": name,
                "groupName": group,
                "serviceInfo": info,
            }
            answered = self._request(connection, "NotifySubscriberRequest", body)
            if answered is None:
                return
            self.events.append(("push", connection.id, request_id, name))
            if self.rules.repush_after_s is None or answered.wait(self.rules.repush_after_s):
                return
            self.events.append(("repush", connection.id, name))

    def _request(self, connection: _Connection, kind: str, body: dict):
        """Send a server request on the registered stream; the event its answer sets,
        or None when the stream is dead (the connection is then dropped)."""
        stream = connection.stream
        if stream is None or not stream.alive():
            self.events.append(("push to a dead stream", connection.id, kind))
            self._drop(connection, f"{kind} could not be written")
            return None
        answered = threading.Event()
        self._pending[body["requestId"]] = answered
        stream.outbox.put(encode(kind, _json(body)))
        return answered

    def _drop(self, connection: _Connection, why: str) -> None:
        with self._lock:
            for peer, known in list(self._connections.items()):
                if known is connection:
                    del self._connections[peer]
        # Java closes the TCP connection: every stream on it ends, registered or not.
        for stream in connection.streams:
            stream.dropped = True
            stream.ended.set()
        self.events.append(("dropped", connection.id, why))

    def reset(self, wait_s: float = 3.0) -> list:
        """Send ConnectResetRequest to every registered connection, wait up to ``wait_s``
        for each answer, then drop it (ConnectionManager.java, loadSingle); whether each
        was answered."""
        with self._lock:
            connections = [c for c in self._connections.values() if c.stream is not None]
        answers = []
        for connection in connections:
            request_id = str(next(self._ids))
            body = {"requestId": request_id, "headers": {}, "module": "internal", "serverIp": "", "serverPort": ""}
            answered = self._request(connection, "ConnectResetRequest", body)
            answers.append(answered is not None and answered.wait(wait_s))
            self._drop(connection, "reset")
        return answers

    def _detect_idle(self) -> None:
        rules = self.rules
        while not self._stopped.wait(rules.detection_check_s):
            now = time.monotonic()
            with self._lock:
                idle = [
                    c
                    for c in self._connections.values()
                    if c.stream is not None and now - c.last_active >= rules.idle_detection_s
                ]
            for connection in idle:
                body = {"requestId": str(next(self._ids)), "headers": {}, "module": "internal"}
                answered = self._request(connection, "ClientDetectionRequest", body)
                self.events.append(("detection", connection.id))
                if answered is not None and not answered.wait(rules.detection_timeout_s):
                    self._drop(connection, "no answer to ClientDetectionRequest")

    # ------------------------------------------------------------------ serving

    def _connection(self, peer: str) -> _Connection:
        with self._lock:
            if peer not in self._connections:
                self._connections[peer] = _Connection(peer)
            return self._connections[peer]

    def _unary(self, request: bytes, context) -> bytes:
        kind, body = decode(request)
        peer = context.peer()
        self.received.append((peer, kind, body))
        self.client_ips.add(client_ip(request))
        connection = self._connection(peer)
        if kind == "ServerCheckRequest":
            if self.rules.server_check_is_activity:
                connection.last_active = time.monotonic()
            return _answer("ServerCheckResponse", connectionId=connection.id)
        if self.rules.unregistered_301 and connection.stream is None:
            return _answer("ErrorResponse", 500, 301, "Connection is unregistered.")
        connection.last_active = time.monotonic()
        asked = json.loads(body or b"{}")
        if kind == "HealthCheckRequest":
            stall, self.stall_next_health_check_s = self.stall_next_health_check_s, 0.0
            time.sleep(stall)
            return _answer("HealthCheckResponse")
        if kind == "SubscribeServiceRequest":
            return self._subscribe(connection, asked)
        if kind == "InstanceRequest":
            return self._instance(asked)
        return _answer("ErrorResponse", 500, 500, f"unexpected {kind}")

    def _subscribe(self, connection: _Connection, asked: dict) -> bytes:
        token = self.rules.access_token
        if token is not None and (asked.get("headers") or {}).get("accessToken") != token:
            return _answer("SubscribeServiceResponse", 500, 403, "authorization failed!")
        key = (asked.get("namespace") or "public", asked.get("groupName") or "DEFAULT_GROUP", asked["serviceName"])
        clusters = asked.get("clusters") or ""
        with self._lock:
            known = [sub for sub in connection.subscribers if sub[0] == key]
            first = not known
            if asked.get("subscribe", True):
                if self.rules.one_subscriber_per_service:
                    connection.subscribers = [sub for sub in connection.subscribers if sub[0] != key]
                connection.subscribers.append((key, clusters))
            else:
                connection.subscribers = [sub for sub in connection.subscribers if sub[0] != key]
            info = self._service_info(key[1], key[2], clusters)
        if first and asked.get("subscribe", True) and self.rules.push_first_subscription:
            threading.Thread(target=self._push, args=(connection, key, clusters), daemon=True).start()
        return _answer("SubscribeServiceResponse", serviceInfo=info)

    def _instance(self, asked: dict) -> bytes:
        """An ephemeral instance (de)registered by a client, as InstanceRequestHandler
        does (naming/…/naming/remote/rpc/handler/InstanceRequestHandler.java; the types are
        NamingRemoteConstants.REGISTER_INSTANCE and DE_REGISTER_INSTANCE); the
        instance is not tied to the connection here."""
        instance, service = asked.get("instance") or {}, asked.get("serviceName", "")
        ip, port = instance.get("ip", ""), int(instance.get("port", 0))
        if asked.get("type") == "registerInstance":
            self.register(port, ip, service, instance.get("clusterName") or "DEFAULT")
        elif asked.get("type") == "deregisterInstance":
            self.deregister(port, ip, service)
        else:
            return _answer("InstanceResponse", 500, 400, f"unsupported request type {asked.get('type')}")
        return _answer("InstanceResponse", type=asked["type"])

    def _stream(self, requests, context):
        peer = context.peer()
        stream = _Stream(context)
        connection = self._connection(peer)
        connection.streams.append(stream)

        def read():
            try:
                for message in requests:
                    kind, body = decode(message)
                    self.received.append((peer, kind, body))
                    self.client_ips.add(client_ip(message))
                    connection.last_active = time.monotonic()
                    if kind == "ConnectionSetupRequest":
                        with self._lock:
                            kept = self.rules.first_stream_wins and connection.stream is not None
                            if not kept:
                                connection.stream = stream
                        self.events.append(("setup", connection.id, "first stream kept" if kept else "registered"))
                    elif kind.endswith("Response"):
                        answered = self._pending.pop(json.loads(body or b"{}").get("requestId", ""), None)
                        if answered is not None:
                            answered.set()
            except grpc.RpcError:
                pass
            stream.ended.set()
            self.events.append(("stream ended", connection.id, peer))

        threading.Thread(target=read, daemon=True).start()
        while stream.alive() and not self._stopped.is_set():
            try:
                yield stream.outbox.get(timeout=0.05)
            except queue.Empty:
                continue
        if stream.dropped:
            # Java closes the TCP connection; the nearest grpcio can do is end the stream
            # with an error, which a client reads as a broken stream, not a finished one.
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection closed by the server")

    # ------------------------------------------------------------------ life

    def connections(self) -> int:
        """Connections with a registered stream."""
        with self._lock:
            return sum(1 for c in self._connections.values() if c.stream is not None)

    def sent(self, kind: str) -> list:
        """Bodies of the ``kind`` messages clients sent."""
        return [json.loads(body or b"{}") for _, k, body in self.received if k == kind]

    def stop(self) -> None:
        self._stopped.set()
        self._server.stop(grace=None)

    def log_text(self) -> str:
        lines = [" ".join(map(str, event)) for event in self.events]
        lines += [f"{peer} {kind} {body[:200]!r}" for peer, kind, body in self.received[-200:]]
        return "\n".join(lines)


def _answer(kind: str, result_code: int = 200, error_code: int = 0, message: str = "", **fields) -> bytes:
    body = {"resultCode": result_code, "errorCode": error_code, "message": message, "success": result_code == 200}
    return encode(kind, _json(body | fields))


def _json(body: dict) -> bytes:
    """Compact, as Jackson writes it (no blanks after ``:`` and ``,``)."""
    return json.dumps(body, separators=(",", ":")).encode()
