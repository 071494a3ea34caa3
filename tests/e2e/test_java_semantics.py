"""The Java-semantics gRPC server (``tests/testbed/java_grpc_nacos.py``) checked with the
official Nacos Python client, ``nacos-sdk-python`` 3.2.0 (its ``v2.nacos`` naming client
speaks gRPC): it connects, subscribes, receives pushes, registers an instance, answers
``ClientDetectionRequest`` and stays connected while idle, and reconnects when the server
drops its connection. The same client against r-nacos 0.8.8 shows that the checks are
about the protocol, not about this server. No plugin and no Envoy here.

The server's idle detection is shortened to 2 s (Java: 20 s) to keep the test short; the
client's own keepalive is a ``HealthCheckRequest`` after 5 s without a request, so at 2 s
the detection comes first and the client must answer it to stay connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import grpc
from v2.nacos import (
    ClientConfigBuilder,
    DeregisterInstanceParam,
    GRPCConfig,
    NacosNamingService,
    RegisterInstanceParam,
    SubscribeServiceParam,
)

from testbed.faulty_grpc_nacos import decode, encode
from testbed.java_grpc_nacos import JavaGrpcNacos, JavaRules
from testbed.rnacos import RNacos

IDLE_S = 2.0


def client_config(tmp_path, grpc_port: int):
    """The official client on ``grpc_port`` directly (port offset 0: it adds 1000 to the
    HTTP port otherwise), logs and cache under the test's tmp dir."""
    return (
        ClientConfigBuilder()
        .server_address(f"127.0.0.1:{grpc_port}")
        .grpc_config(GRPCConfig(port_offset=0))
        .log_dir(str(tmp_path / "sdk-logs"))
        .cache_dir(str(tmp_path / "sdk-cache"))
        .build()
    )


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Lists:
    """What the client's subscription callback was handed: port lists, in order."""

    def __init__(self):
        self.seen: list = []

    async def __call__(self, hosts):
        self.seen.append(sorted(h.port for h in hosts))

    def last(self):
        return self.seen[-1] if self.seen else None


@contextlib.asynccontextmanager
async def subscribed_client(tmp_path, grpc_port: int, first: list):
    """The official client subscribed to ``demo``, once its callback got the port list
    ``first``: yields the client and its ``Lists``, shut down on leaving."""
    naming = await NacosNamingService.create_naming_service(client_config(tmp_path, grpc_port))
    try:
        lists = Lists()
        await naming.subscribe(SubscribeServiceParam(service_name="demo", subscribe_callback=lists))
        await until(lambda: lists.last() == first, 5, "the subscription's first list")
        yield naming, lists
    finally:
        await naming.shutdown()


def kinds(server: JavaGrpcNacos, kind: str) -> list:
    """``(peer, body)`` of the ``kind`` messages the client sent."""
    return [(peer, json.loads(body or b"{}")) for peer, k, body in server.received if k == kind]


def test_official_client_subscribes_receives_pushes_and_registers(bed, tmp_path):
    server = bed.add(JavaGrpcNacos(JavaRules(idle_detection_s=None)))
    server.register(5001)

    async def run():
        # the first subscription of a (connection, service) is pushed its list
        async with subscribed_client(tmp_path, server.port, [5001]) as (naming, lists):
            server.register(5002)
            await until(lambda: lists.last() == [5001, 5002], 5, "a pushed registration")
            # the client's own registration goes through the server's registry and back
            ok = await naming.register_instance(RegisterInstanceParam(service_name="demo", ip="127.0.0.1", port=5003))
            assert ok
            await until(lambda: lists.last() == [5001, 5002, 5003], 5, "the client's registration pushed")
            await naming.deregister_instance(DeregisterInstanceParam(service_name="demo", ip="127.0.0.1", port=5003))
            server.deregister(5001)
            await until(lambda: lists.last() == [5002], 5, "pushed deregistrations")
            # the client listed by subscription, so a list call answers from the pushes
            return lists.seen

    seen = asyncio.run(run())
    print(f"\n[official client] lists pushed: {seen}")
    setups = kinds(server, "ConnectionSetupRequest")
    assert len(setups) == 1, "one connection, set up once"
    assert setups[0][1]["labels"] == {"source": "sdk", "module": "naming"}
    assert not [e for e in server.events if e[0] in ("repush", "dropped", "push to a dead stream")], server.events
    pushes = [e for e in server.events if e[0] == "push"]
    acks = kinds(server, "NotifySubscriberResponse")
    assert pushes and {e[2] for e in pushes} == {body["requestId"] for _, body in acks}, "every push acknowledged"
    assert all(body["resultCode"] == 200 for _, body in acks)
    assert not [body for _, body in kinds(server, "SubscribeServiceRequest") if body["clusters"]], (
        "the client subscribes without a cluster filter and filters itself"
    )


def test_official_client_answers_client_detection_and_stays_connected(bed, tmp_path):
    rules = JavaRules(idle_detection_s=IDLE_S, detection_check_s=0.25, detection_timeout_s=1.0)
    server = bed.add(JavaGrpcNacos(rules))
    server.register(5001)

    async def run():
        async with subscribed_client(tmp_path, server.port, [5001]) as (_, lists):
            await asyncio.sleep(3 * IDLE_S + 1)  # idle: detections come, and are answered
            server.register(5002)
            await until(lambda: lists.last() == [5001, 5002], 5, "a push after the idle time")

    asyncio.run(run())
    detections = [e for e in server.events if e[0] == "detection"]
    answers = kinds(server, "ClientDetectionResponse")
    print(f"\n[official client, {IDLE_S:.0f} s idle detection] {len(detections)} detections, {len(answers)} answers")
    assert len(detections) >= 2
    assert len(answers) >= len(detections) - 1  # the last may be answered after the stop
    assert not [e for e in server.events if e[0] == "dropped"], server.events
    assert len(kinds(server, "ServerCheckRequest")) == 1, "no reconnection: the connection stayed"


def test_an_unanswered_client_detection_drops_the_connection(bed):
    """The rule the previous test relies on can fail: a stream that never answers the
    detection is dropped, and the connection's next unary call is refused with 301."""
    rules = JavaRules(idle_detection_s=1.0, detection_check_s=0.25, detection_timeout_s=0.5)
    server = bed.add(JavaGrpcNacos(rules))
    setup = encode("ConnectionSetupRequest", b'{"requestId":"","headers":{},"clientVersion":"silent","labels":{}}')
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        unary = channel.unary_unary("/Request/request")
        stream = channel.stream_stream("/BiRequestStream/requestBiStream")
        assert decode(unary(encode("ServerCheckRequest", b"{}"), timeout=2))[0] == "ServerCheckResponse"
        outgoing: list = [setup]

        def sent():
            while outgoing:
                yield outgoing.pop()
            time.sleep(5)  # never answers what the server asks

        reader = stream(sent(), timeout=10)
        first = decode(next(reader))
        assert first[0] == "ClientDetectionRequest", first
        deadline = time.monotonic() + 5
        while not [e for e in server.events if e[0] == "dropped"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e[2] for e in server.events if e[0] == "dropped"] == ["no answer to ClientDetectionRequest"]
        kind, body = decode(unary(encode("HealthCheckRequest", b"{}"), timeout=2))
        assert (kind, json.loads(body)["errorCode"]) == ("ErrorResponse", 301)
        reader.cancel()


def test_official_client_reconnects_when_the_server_drops_its_connection(bed, tmp_path):
    """``ConnectResetRequest`` then the connection dropped after the wait: the client comes
    back on a new connection, whose first subscription is pushed its list. (Client 3.2.0
    does not know ConnectResetRequest: it logs "unknown payload type" and does not answer;
    the plugin answers it.)"""
    server = bed.add(JavaGrpcNacos(JavaRules(idle_detection_s=None)))
    server.register(5001)
    server.register(6001, service="other")

    async def run():
        async with subscribed_client(tmp_path, server.port, [5001]) as (naming, _):
            await asyncio.to_thread(server.reset, 0.5)
            await until(lambda: len(kinds(server, "ConnectionSetupRequest")) == 2, 10, "a new connection set up")
            other = Lists()
            await naming.subscribe(SubscribeServiceParam(service_name="other", subscribe_callback=other))
            await until(lambda: other.last() == [6001], 5, "the first push on the new connection")

    asyncio.run(run())
    peers = [peer for peer, _ in kinds(server, "ConnectionSetupRequest")]
    assert len(set(peers)) == 2, "the second setup came on a new TCP connection"
    assert [e[2] for e in server.events if e[0] == "dropped"] == ["reset"]


def test_official_client_against_rnacos(bed, tmp_path):
    """The same client and checks against r-nacos 0.8.8: what the Java-semantics server
    is compared with."""
    nacos = bed.add(RNacos(bed.workdir))
    nacos.start()
    nacos.register(5001)

    async def run():
        async with subscribed_client(tmp_path, nacos.grpc_port, [5001]) as (_, lists):
            nacos.register(5002)
            await until(lambda: lists.last() == [5001, 5002], 5, "a pushed registration")

    asyncio.run(run())
