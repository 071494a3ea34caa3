"""A scripted Nacos gRPC server (grpcio, raw bytes) for what real r-nacos never sends:
a push that does not parse. It answers ``ServerCheck`` and ``SubscribeService`` like
r-nacos 0.8.8 does (the shapes in ``src/pure/push/captured``), and pushes whatever a
test gives it on the bidirectional stream, recording the answers the plugin sends."""

from __future__ import annotations

import json
import queue
import threading
from concurrent import futures

import grpc

from testbed.waiting import free_port

# ------------------------------------------------------------ Nacos's Payload message


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def encode(message_type: str, body: bytes) -> bytes:
    """``Payload { Metadata metadata = 2 { string type = 3 }; Any body = 3 { bytes value = 2 } }``."""
    return _field(2, _field(3, message_type.encode())) + _field(3, _field(2, body))


def _fields(data: bytes):
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        if key & 7 != 2:
            raise ValueError("only length-delimited fields are expected")
        size, i = _read_varint(data, i)
        yield key >> 3, data[i : i + size]
        i += size


def _read_varint(data: bytes, i: int):
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def client_ip(data: bytes) -> str:
    """``Payload.metadata.clientIp`` (``Metadata { string clientIp = 8 }``), "" if absent."""
    for number, value in _fields(data):
        if number == 2:
            return dict(_fields(value)).get(8, b"").decode()
    return ""


def decode(data: bytes) -> tuple:
    """``(type, body)`` of a Payload."""
    message_type, body = "", b""
    for number, value in _fields(data):
        if number == 2:
            message_type = dict(_fields(value)).get(3, b"").decode()
        elif number == 3:
            body = dict(_fields(value)).get(2, b"")
    return message_type, body


# ------------------------------------------------------------------------ the server


def serve_nacos_grpc(port: int, unary, stream, workers: int) -> grpc.Server:
    """A started gRPC server on loopback ``port`` with the Nacos 2.x services:
    ``Request/request`` answered by ``unary``, ``BiRequestStream/requestBiStream`` by
    ``stream``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("Request", {"request": grpc.unary_unary_rpc_method_handler(unary)}),
            grpc.method_handlers_generic_handler(
                "BiRequestStream", {"requestBiStream": grpc.stream_stream_rpc_method_handler(stream)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


class FaultyGrpcNacos:
    log_name = "faulty-grpc-nacos"

    def __init__(self, hosts: list):
        """``hosts``: the ``serviceInfo.hosts`` every subscription is answered with."""
        self.hosts = hosts
        self.port = free_port()
        self.received: list = []  # (type, body) of every message the plugin sent
        self._pushes: queue.Queue = queue.Queue()
        self._server = serve_nacos_grpc(self.port, self._unary, self._stream, workers=8)

    def _unary(self, request: bytes, context) -> bytes:
        kind, body = decode(request)
        self.received.append((kind, body))
        if kind == "ServerCheckRequest":
            answer = {"resultCode": 200, "errorCode": 0, "success": True, "connectionId": "fake-1"}
            return encode("ServerCheckResponse", json.dumps(answer).encode())
        if kind == "SubscribeServiceRequest":
            asked = json.loads(body)
            info = self.service_info(asked["serviceName"], asked["groupName"], self.hosts)
            answer = {"resultCode": 200, "errorCode": 0, "success": True, "serviceInfo": info}
            return encode("SubscribeServiceResponse", json.dumps(answer).encode())
        answer = {"resultCode": 500, "errorCode": 500, "success": False, "message": f"unexpected {kind}"}
        return encode("ErrorResponse", json.dumps(answer).encode())

    def _stream(self, requests, context):
        def read():
            try:
                for message in requests:
                    self.received.append(decode(message))
            except grpc.RpcError:
                pass  # the stream ended: the gateway stopped, or the test did

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                yield self._pushes.get(timeout=0.1)
            except queue.Empty:
                continue

    @staticmethod
    def service_info(name: str, group: str, hosts: list) -> dict:
        return {"name": name, "groupName": group, "clusters": "", "cacheMillis": 10000, "hosts": hosts}

    def push(self, body: bytes, message_type: str = "NotifySubscriberRequest") -> None:
        """Send ``body`` as the JSON of a ``message_type`` on every open stream."""
        self._pushes.put(encode(message_type, body))

    def acks(self) -> list:
        return [json.loads(body) for kind, body in self.received if kind == "NotifySubscriberResponse"]

    def stop(self) -> None:
        self._server.stop(grace=None)

    def log_text(self) -> str:
        return "\n".join(f"{kind} {body[:200]!r}" for kind, body in self.received)
