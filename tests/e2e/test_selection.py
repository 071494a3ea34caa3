"""Scenarios 3 (weights, weight 0, unhealthy), 4 (pinned instance, client-sent routing
header) and 5 (per-route switch)."""

import collections

import pytest

from testbed.envoy import ORIGINAL_DST_HOST, PIN_HEADER, ROUTING_HEADER
from testbed.rejections import assert_rejection
from testbed.waiting import wait_until

SETTLE_S = 4.0


def test_scenario3_weights_and_zero_weight(stack):
    s = stack(backends=["backend-a", "backend-b"], weights={"backend-a": 1, "backend-b": 3})
    b = s.be("backend-b")
    s.wait_polls(1)
    got = collections.Counter(s.names(s.send(400)))
    assert set(got) <= {"backend-a", "backend-b"}, got
    ratio = got["backend-b"] / max(got["backend-a"], 1)
    print(f"\n[scenario3] weights 1:3 -> {dict(got)} ratio {ratio:.2f}")
    assert 2.4 <= ratio <= 3.75, got

    # weight 0: B gets nothing
    s.nacos.update(b.port, weight=0)
    s.wait_only({"backend-a"}, timeout=SETTLE_S, window=20)
    hb = b.hits
    assert s.names(s.send(60)) == ["backend-a"] * 60
    assert b.hits == hb

    # back to weight 3: B gets traffic again
    s.nacos.update(b.port, weight=3)
    s.wait_polls(2)
    assert "backend-b" in s.names(s.send(20))

    assert s.envoy.guard_stat("usable_instances") == 2


def test_scenario3_unhealthy_instance_gets_nothing(stack):
    # r-nacos ignores `healthy` on register/update of persistent instances; it marks them
    # unhealthy through its TCP probe (interval >= 5 s). So B's listener is closed and the
    # probe makes B unhealthy in Nacos while the Envoy cluster still lists it.
    s = stack(
        backends=["backend-a", "backend-b"], nacos_env={"RNACOS_NAMING_PERPETUAL_INSTANCE_PROBE_INTERVAL_SECOND": "5"}
    )
    b = s.be("backend-b")
    assert set(s.names(s.send(20))) == {"backend-a", "backend-b"}
    b.stop()

    def b_unhealthy():
        return [h["healthy"] for h in s.nacos.list()["hosts"] if h["port"] == b.port] == [False]

    wait_until(b_unhealthy, 20, 0.2, "r-nacos marks backend-b unhealthy")
    s.wait_polls(2)
    # an instance routed to B would fail with 503 (connection refused): none may
    got = s.names(s.send(60))
    assert got == ["backend-a"] * 60, collections.Counter(got)
    assert s.envoy.guard_stat("usable_instances") == 1


def test_scenario3_disabled_instance_gets_nothing(stack):
    s = stack(backends=["backend-a", "backend-b"])
    b = s.be("backend-b")
    assert set(s.names(s.send(20))) == {"backend-a", "backend-b"}
    s.nacos.update(b.port, enabled=False)
    s.wait_only({"backend-a"}, timeout=SETTLE_S, window=20)
    hb = b.hits
    assert s.names(s.send(40)) == ["backend-a"] * 40
    assert b.hits == hb


@pytest.mark.parametrize("on_dereg", ["reroute", "reject"])
def test_scenario4_pinned_instance(stack, on_dereg):
    # C was registered once and is still in the (stale) Envoy cluster, but is gone from Nacos.
    s = stack(
        backends=["backend-a", "backend-b", "backend-c"],
        register=["backend-a", "backend-b"],
        global_overrides={"onDeregistered": on_dereg},
    )
    a, b, c = s.be("backend-a"), s.be("backend-b"), s.be("backend-c")

    # pin to a usable instance: all go there
    assert s.names(s.send(20, headers={PIN_HEADER: b.addr})) == ["backend-b"] * 20
    assert s.names(s.send(20, headers={PIN_HEADER: a.addr})) == ["backend-a"] * 20

    rer0 = s.envoy.guard_stat("rerouted")
    rej0 = s.envoy.guard_stat("rejected")
    resps = s.send(20, headers={PIN_HEADER: c.addr})
    assert c.hits == 0
    if on_dereg == "reroute":
        assert set(s.names(resps)) == {"backend-a", "backend-b"}, s.names(resps)
        assert s.envoy.guard_stat("rerouted") - rer0 == 20
    else:
        for r in resps:
            assert_rejection(r, code="instance_deregistered")
        assert s.envoy.guard_stat("rejected") - rej0 == 20

    # pin to an instance that is deregistered *now*
    s.nacos.deregister(b.port)
    s.wait_polls(2)
    resps = s.send(10, headers={PIN_HEADER: b.addr})
    if on_dereg == "reroute":
        assert s.names(resps) == ["backend-a"] * 10
    else:
        for r in resps:
            assert_rejection(r, code="instance_deregistered")


@pytest.mark.parametrize("mode", ["override_host", "original_dst"])
def test_scenario4_client_routing_header_never_chooses_endpoint(stack, mode):
    # backend-c: in the stale cluster, never in Nacos. backend-evil: not even in the
    # cluster (only ORIGINAL_DST could reach it, if the header were trusted).
    s = stack(backends=["backend-a", "backend-c", "backend-evil"], register=["backend-a"], mode=mode)
    c, evil = s.be("backend-c"), s.be("backend-evil")
    for target in (c, evil):
        for hdr in (ROUTING_HEADER, ORIGINAL_DST_HOST):
            resps = s.send(10, headers={hdr: target.addr})
            got = s.names(resps)
            assert got == ["backend-a"] * 10, (hdr, target.name, resps, s.envoy.stats_matching("nacos_guard"))
    assert c.hits == 0 and evil.hits == 0
    # pinning is only honoured for registered instances, never for an arbitrary address
    got = s.names(s.send(10, headers={PIN_HEADER: evil.addr}))
    assert evil.hits == 0, got


def test_scenario5_per_route_switch(stack):
    # B is stale: still in the Envoy cluster, no longer in Nacos.
    s = stack(backends=["backend-a", "backend-b"], register=["backend-a"])
    a, b = s.be("backend-a"), s.be("backend-b")

    # guarded route: only the registered instance
    assert s.names(s.send(30, path="/demo")) == ["backend-a"] * 30
    assert b.hits == 0
    routed = s.envoy.guard_stat("routed")

    # enabled: false route: the plugin does nothing, the stale cluster round-robins
    got = collections.Counter(s.names(s.send(30, path="/legacy")))
    assert got["backend-a"] > 0 and got["backend-b"] > 0, got
    assert s.envoy.guard_stat("routed") == routed

    # even with nothing registered, the legacy route still follows the stale cluster
    s.nacos.deregister(a.port)
    s.wait_only({503}, timeout=SETTLE_S)
    got = collections.Counter(s.names(s.send(20, path="/legacy")))
    assert set(got) == {"backend-a", "backend-b"}, got
