"""Push (``nacos.push``): the poller subscribes over Nacos 2.x gRPC to real r-nacos, and
every change, the empty list included, arrives as the server pushes it.

The safety poll is set to its longest (600 s), so after the first poll every change
the plugin obeys came by push: each test checks that no list poll happened meanwhile.
r-nacos delays pushes by 500 ms checked every 500 ms (``src/naming/naming_delay_nofity.rs``
in nacos-group/r-nacos), so a push lands up to about one second after the change.
"""

from __future__ import annotations

import json
import time

from testbed.backends import Backend
from testbed.envoy import NACOS_GRPC_CLUSTER
from testbed.faulty_grpc_nacos import FaultyGrpcNacos
from testbed.higress import deep_merge, plugin_config
from testbed.rejections import assert_rejection
from testbed.rnacos import RNacos
from testbed.tcp_relay import TcpRelay
from testbed.traffic import Traffic
from testbed.waiting import wait_until

SAFETY_MS = 600_000
PUSH = {"nacos": {"push": {"grpcCluster": NACOS_GRPC_CLUSTER, "safetyIntervalMs": SAFETY_MS}}}
# r-nacos pushes within about a second (see above); the rest is a loaded CI machine.
PUSH_BOUND_S = 2.0
ADMIN_LOGIN = {"nacos": {"username": "admin", "password": "admin"}}


def push_config(**overrides) -> dict:
    """plugin.yaml with push on, then ``overrides`` deep-merged on top."""
    return plugin_config(deep_merge(PUSH, overrides))


def wait_pushed(envoy, streams_before: int = 0, timeout: float = 15) -> None:
    """The link is up and the first subscription answered: polls have stopped."""
    wait_until(lambda: envoy.guard_stat("push_streams", service=None) == 1, timeout, 0.05, "a push stream")
    polls = [envoy.guard_stat("poll_success")]

    def settled():
        polls.append(envoy.guard_stat("poll_success"))
        return len(polls) > 20 and polls[-1] == polls[-20]

    wait_until(settled, timeout, 0.1, "polling replaced by push")


def last_hit_after(backend: Backend, t0: float) -> float:
    last = backend.last_hit()
    return (last - t0) if last is not None and last > t0 else 0.0


def grpc_connections(envoy) -> int:
    return envoy.stat(f"cluster.{NACOS_GRPC_CLUSTER}.upstream_cx_active")


def test_push_empty_list_rejects_without_a_poll(stack):
    """The last instance deregistered: the empty push Higress's SDK ignores is obeyed."""
    s = stack(backends=["backend-a"], global_overrides=PUSH)
    wait_pushed(s.envoy)
    a = s.be("backend-a")
    polls = s.envoy.guard_stat("poll_success")
    with Traffic(s.envoy, interval=0.01):
        time.sleep(0.3)
        s.nacos.deregister(a.port)
        t0 = time.monotonic()
        wait_until(lambda: s.envoy.request("/demo").status == 503, PUSH_BOUND_S + 1, 0.02, "the empty push")
        time.sleep(0.5)
        lag = last_hit_after(a, t0)
    print(f"\n[push] deregistration -> last request reaching backend-a: {lag * 1000:.0f} ms")
    assert lag <= PUSH_BOUND_S
    hits = a.hits
    for _ in range(5):
        assert_rejection(s.envoy.request("/demo"))
    assert a.hits == hits
    assert s.envoy.guard_stat("poll_success") == polls, "a poll, not the push, saw the change"
    assert s.envoy.guard_stat("pushes", service=None) >= 1


def test_push_a_b_and_back_with_one_connection_per_gateway(bed):
    """A/B over push, at --concurrency 4: only the poller holds a gRPC connection."""
    bed.start_registry(["backend-a", "backend-b"])
    bed.start_gateway(push_config(), concurrency=4)
    bed.wait_ready()
    envoy, a, b = bed.envoy, bed.be("backend-a"), bed.be("backend-b")
    wait_pushed(envoy)
    polls = envoy.guard_stat("poll_success")
    assert grpc_connections(envoy) == 1
    with Traffic(envoy, interval=0.01) as tr:
        time.sleep(0.3)
        bed.nacos.deregister(a.port)
        t0 = time.monotonic()
        time.sleep(PUSH_BOUND_S + 0.5)
        lag = last_hit_after(a, t0)
        b_hits = b.hits
        bed.nacos.register(a.port)
        t1 = time.monotonic()
        wait_until(lambda: a.last_hit() is not None and a.last_hit() > t1, PUSH_BOUND_S + 1, 0.02, "A back")
        back = time.monotonic() - t1
    late = tr.since(t0 + PUSH_BOUND_S)
    print(f"\n[push A/B] A gone after {lag * 1000:.0f} ms, back after {back * 1000:.0f} ms")
    assert lag <= PUSH_BOUND_S
    assert b.hits > b_hits
    assert all(r[2] == 200 for r in tr.records)
    assert all(r[3] == "backend-b" for r in late if r[0] < t1)
    assert envoy.guard_stat("poll_success") == polls
    assert grpc_connections(envoy) == 1, "one gRPC connection per gateway, the poller's"


def test_push_reaches_a_guard_that_filters_clusters(bed):
    """``service.clusters: ["blue"]``: r-nacos pushes every change with ``clusters: ""``,
    which the guard's subscription must take (issue 26, defect 1)."""
    bed.start_registry(["backend-a", "backend-b"], register=[])
    for backend in bed.backends.values():
        bed.nacos.register(backend.port, cluster="blue")
    bed.start_gateway(plugin_config(PUSH, {"service": {"clusters": ["blue"]}}))
    envoy, a = bed.envoy, bed.be("backend-a")
    wait_pushed(envoy)
    wait_until(lambda: envoy.request("/demo").status == 200, 10, 0.05, "routing")
    polls = envoy.guard_stat("poll_success")
    with Traffic(envoy, interval=0.01) as tr:
        time.sleep(0.3)
        bed.nacos.deregister(a.port, cluster="blue")
        t0 = time.monotonic()
        time.sleep(PUSH_BOUND_S + 0.5)
        lag = last_hit_after(a, t0)
    print(f"\n[push clusters=blue] A gone after {lag * 1000:.0f} ms")
    assert lag <= PUSH_BOUND_S
    assert all(r[3] == "backend-b" for r in tr.since(t0 + PUSH_BOUND_S))
    assert envoy.guard_stat("poll_success") == polls, "a poll, not the push, saw the change"


def test_push_survives_rnacos_restarts_with_and_without_data(bed):
    nacos = bed.start_registry(["backend-a"])
    bed.start_gateway(push_config(refreshIntervalMs=300))
    bed.wait_ready()
    envoy, a = bed.envoy, bed.be("backend-a")
    wait_pushed(envoy)
    reconnects = envoy.guard_stat("push_reconnects", service=None)

    # 1. with its data: the instance stays, requests never fail, the link comes back
    with Traffic(envoy, interval=0.01) as tr:
        nacos.stop()
        time.sleep(0.5)
        nacos.start()
        wait_until(lambda: envoy.guard_stat("push_reconnects", service=None) > reconnects, 15, 0.05, "push reconnected")
        wait_pushed(envoy)
    assert tr.records and all(r[2] == 200 and r[3] == "backend-a" for r in tr.records)

    # 2. without its data: the resubscription (or the polls meanwhile) say the truth
    nacos.stop()
    nacos.data_dir = bed.workdir / "rnacos-data-empty"
    nacos.data_dir.mkdir()
    nacos.start()
    bed.wait_only({503}, timeout=10)
    assert_rejection(envoy.request("/demo"))
    wait_pushed(envoy)

    # 3. subscribed again: a change on the new server arrives by push
    polls = envoy.guard_stat("poll_success")
    nacos.register(a.port)
    wait_until(lambda: envoy.request("/demo").body == "backend-a", PUSH_BOUND_S + 1, 0.05, "pushed registration")
    assert envoy.guard_stat("poll_success") == polls


def test_push_stream_reset_midway_falls_back_to_polling_and_reconnects(bed):
    nacos = bed.start_registry(["backend-a", "backend-b"])
    relay = bed.add(TcpRelay(nacos.grpc_port))
    bed.start_gateway(push_config(), nacos_grpc_port=relay.port)
    bed.wait_ready()
    envoy, a = bed.envoy, bed.be("backend-a")
    wait_pushed(envoy)
    reconnects = envoy.guard_stat("push_reconnects", service=None)
    polls = envoy.guard_stat("poll_success")

    with Traffic(envoy, interval=0.01) as tr:
        relay.cut()
        # polling takes over at once, then the link comes back
        wait_until(lambda: envoy.guard_stat("poll_success") > polls, 5, 0.05, "polls while the stream is down")
        wait_until(lambda: envoy.guard_stat("push_reconnects", service=None) > reconnects, 15, 0.05, "push reconnected")
        wait_pushed(envoy)
        polls = envoy.guard_stat("poll_success")
        nacos.deregister(a.port)
        t0 = time.monotonic()
        time.sleep(PUSH_BOUND_S + 0.3)
        lag = last_hit_after(a, t0)
    print(f"\n[push after a reset] deregistration -> last request reaching backend-a: {lag * 1000:.0f} ms")
    assert relay.cuts == 1
    assert all(r[2] == 200 for r in tr.records), {r[2] for r in tr.records}
    assert lag <= PUSH_BOUND_S
    assert envoy.guard_stat("poll_success") == polls


def test_push_with_short_token_lifetimes(bed):
    ttl = 2
    nacos = bed.add(RNacos(bed.workdir, auth=True, login_timeout=ttl))
    bed.nacos = nacos
    nacos.start()
    a, b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
    bed.backends = {"backend-a": a, "backend-b": b}
    nacos.register(a.port)
    nacos.register(b.port)
    bed.start_gateway(push_config(**ADMIN_LOGIN))
    bed.wait_ready()
    envoy = bed.envoy
    wait_pushed(envoy)
    time.sleep(2 * ttl + 0.5)  # the token the subscription carried has expired
    polls = envoy.guard_stat("poll_success")
    with Traffic(envoy, interval=0.01) as tr:
        nacos.deregister(a.port)
        t0 = time.monotonic()
        time.sleep(PUSH_BOUND_S + 0.3)
        lag = last_hit_after(a, t0)
    print(f"\n[push, tokenTtl={ttl}s] deregistration -> last request reaching backend-a: {lag * 1000:.0f} ms")
    assert lag <= PUSH_BOUND_S
    assert all(r[2] == 200 for r in tr.records)
    assert envoy.guard_stat("poll_success") == polls
    assert envoy.guard_stat("push_failures", service=None) == 0


def test_a_push_that_does_not_parse_keeps_the_last_good_snapshot(bed):
    """HTTP polls go to r-nacos, the push link to a scripted gRPC server: a push that is
    not JSON changes nothing, is counted, and the service is polled at once; a good
    empty push after it is obeyed and acknowledged."""
    nacos = bed.start_registry(["backend-a"])
    a = bed.be("backend-a")
    fake = bed.add(FaultyGrpcNacos([{"ip": "127.0.0.1", "port": a.port, "weight": 1.0, "healthy": True}]))
    bed.start_gateway(push_config(), nacos_grpc_port=fake.port)
    bed.wait_ready()
    envoy = bed.envoy
    wait_pushed(envoy)
    failures, polls = envoy.guard_stat("push_failures", service=None), envoy.guard_stat("poll_success")

    fake.push(b'{"requestId":"1","serviceInfo":{"name":"demo","hosts":[{"ip":')
    wait_until(lambda: envoy.guard_stat("push_failures", service=None) > failures, 5, 0.05, "the bad push counted")
    wait_until(lambda: envoy.guard_stat("poll_success") > polls, 3, 0.05, "a poll instead")
    assert {r.body for r in envoy.send(20)} == {"backend-a"}, "the last good snapshot serves"
    assert nacos.list()["hosts"], "r-nacos still lists backend-a: the poll agreed"

    info = FaultyGrpcNacos.service_info("demo", "DEFAULT_GROUP", [])
    fake.push(json.dumps({"requestId": "2", "serviceInfo": info}).encode())
    bed.wait_only({503}, timeout=3)  # on every worker: followers adopt it a tick later
    assert_rejection(envoy.request("/demo"))
    wait_until(lambda: [ack.get("requestId") for ack in fake.acks()] == ["2"], 3, 0.05, "the push acknowledged")
