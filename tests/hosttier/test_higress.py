"""build/plugin.wasm, the Higress artifact, in the host tier playing Higress.

Higress routes with `proxy_set_upstream_override_host` and learns the routed cluster's
hosts, with their health, from `proxy_get_upstream_hosts` (see gateway.py for how the
tier models both from the Higress sources).
"""

import pytest
from gateway import Gateway, ScriptedNacos
from scenario import PIN_HEADER, ROUTING_HEADER, plugin_config

A, B, C, X = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.9:8080"


def higress(wasm, registered=(A, B), cluster=None, strict=False, retries=0, backends=None, workers=2, config=None):
    nacos = ScriptedNacos()
    for ep in registered:
        nacos.register(ep)
    cluster = cluster if cluster is not None else {A: "Healthy", B: "Healthy", C: "Healthy"}
    gw = Gateway(
        wasm,
        config or plugin_config(),
        mode="higress",
        strict=strict,
        cluster_hosts=cluster,
        nacos=nacos,
        retries=retries,
        backends=backends,
        workers=workers,
    )
    assert all(vm.configured for vm in gw.vms), gw.vms[0].logs
    gw.advance(2500)  # first poll, published to the other VM
    return gw


def assert_reaches(out, allowed, body=b""):
    assert not out.hung, "the request never reached the upstream whole: a hang in Higress"
    assert out.status == 200, out
    assert out.upstream in allowed, out
    assert out.upstream_body == body, out


BODIES = {
    "GET": (),
    "POST": (b"x" * 1000,),
    "streamed POST": (b"part1-", b"part2-", b"part3"),
}


@pytest.mark.parametrize("kind", list(BODIES))
def test_routed_request_reaches_a_registered_instance_whole(higress_wasm, kind):
    gw = higress(higress_wasm)
    for _ in range(4):
        out = gw.request("GET" if kind == "GET" else "POST", body_chunks=BODIES[kind])
        assert_reaches(out, {A, B}, b"".join(BODIES[kind]))
        assert out.override == out.upstream
    assert gw.stat("routed") == 4


@pytest.mark.parametrize("kind", list(BODIES))
def test_pin_to_a_deregistered_instance_is_rerouted(higress_wasm, kind):
    gw = higress(higress_wasm)
    gw.nacos.deregister(B)
    gw.advance(2500)
    out = gw.request("GET" if kind == "GET" else "POST", headers={PIN_HEADER: B}, body_chunks=BODIES[kind])
    assert_reaches(out, {A}, b"".join(BODIES[kind]))
    assert gw.stat("rerouted") == 1


@pytest.mark.parametrize("kind", list(BODIES))
def test_no_registered_instance_is_rejected_without_reaching_upstream(higress_wasm, kind):
    gw = higress(higress_wasm, registered=())
    out = gw.request("GET" if kind == "GET" else "POST", body_chunks=BODIES[kind])
    assert out.local_reply and out.status == 503, out
    assert out.json["code"] == "no_healthy_instance"
    assert out.upstream is None and out.override is None
    assert gw.stat("rejected") == 1


def test_a_host_the_cluster_knows_is_preferred_over_an_unknown_one(higress_wasm):
    gw = higress(higress_wasm, registered=(A, X))
    for _ in range(10):
        out = gw.request()
        assert out.override == A and out.upstream == A, out


@pytest.mark.parametrize("strict", [False, True])
def test_an_unhealthy_host_is_not_preferred(higress_wasm, strict):
    """Envoy does not honour an override to a host it marks Unhealthy: non-strict it falls
    back to the cluster's balancing, strict it answers 503."""
    gw = higress(higress_wasm, cluster={A: "Unhealthy", B: "Healthy", C: "Healthy"}, strict=strict)
    for _ in range(10):
        out = gw.request()
        assert out.override == B and out.upstream == B, out


def test_a_degraded_host_is_still_used(higress_wasm):
    gw = higress(higress_wasm, registered=(A,), cluster={A: "Degraded", C: "Healthy"}, strict=True)
    assert_reaches(gw.request(), {A})


@pytest.mark.parametrize("strict", [False, True])
def test_known_usable_instance_is_honoured_strict_or_not(higress_wasm, strict):
    gw = higress(higress_wasm, registered=(A, X), strict=strict)
    for _ in range(6):
        assert_reaches(gw.request(), {A})


def test_no_usable_instance_known_to_the_cluster(higress_wasm):
    """Nacos lists only an instance the gateway's cluster lacks. The plugin still names it:
    strict, Higress answers 503 (never a stale host); non-strict, the cluster's own
    balancing picks, which may be a stale host. docs/routing.md, "Higress routing"."""
    lax = higress(higress_wasm, registered=(X,))
    out = lax.request()
    assert out.override == X and out.status == 200 and out.upstream in {A, B, C}, out
    strict = higress(higress_wasm, registered=(X,), strict=True)
    out = strict.request()
    assert out.override == X and out.status == 503 and out.upstream is None, out


def test_forged_routing_headers_never_choose_the_endpoint(higress_wasm):
    gw = higress(higress_wasm, registered=(A,))
    for name in (ROUTING_HEADER, "x-envoy-original-dst-host"):
        out = gw.request(headers={name: C})
        assert_reaches(out, {A})
        assert name not in out.upstream_headers


def test_no_needless_per_request_host_work(higress_wasm):
    """Requests without forged headers modify no header, so Higress keeps its route cache;
    the cluster's host list is fetched once per VM per second, not per request."""
    gw = higress(higress_wasm, workers=1)
    outs = [gw.request(vm=0) for _ in range(20)]
    assert [o.route_cache_clears for o in outs] == [0] * 20
    assert sum(o.host_calls.get("proxy_get_upstream_hosts", 0) for o in outs) <= 1
    assert sum(o.host_calls.get("proxy_remove_header_map_value", 0) for o in outs) == 0
    # A request that carries a forged header still gets it removed.
    out = gw.request(headers={ROUTING_HEADER: C}, vm=0)
    assert ROUTING_HEADER not in out.upstream_headers and out.route_cache_clears == 1


def test_host_list_follows_the_cluster_within_a_second(higress_wasm):
    """The host list is read again once a second (src/host/higress.rs HOST_LIST_TTL_MS)."""
    gw = higress(higress_wasm, workers=1)
    assert {gw.request(vm=0).upstream for _ in range(4)} == {A, B}
    gw.cluster.hosts[A] = "Unhealthy"
    gw.advance(1100)
    assert {gw.request(vm=0).upstream for _ in range(4)} == {B}


def test_unguarded_route_is_left_alone(higress_wasm):
    gw = higress(higress_wasm)
    out = gw.request(path="/legacy")
    assert out.status == 200 and out.override is None
    assert "proxy_get_upstream_hosts" not in out.host_calls


def test_a_retry_ignores_the_override(higress_wasm):
    """router.h: no override on a retry, so a retry is balanced over the stale cluster and
    can reach an instance Nacos no longer lists (B here). docs/routing.md, "Retries"."""
    failing_a = {A: lambda m, h, b: (503, b"a failing"), B: lambda m, h, b: (200, b"b")}
    gw = higress(higress_wasm, registered=(A,), cluster={A: "Healthy", B: "Healthy"}, retries=1, backends=failing_a)
    outs = [gw.request() for _ in range(6)]
    assert all(o.attempts[0] == A for o in outs)
    assert any(o.attempts[1:] == [B] for o in outs), [o.attempts for o in outs]
    # Without retries on the route, B is never reached.
    gw.retries = 0
    assert all(gw.request().attempts == [A] for _ in range(6))


def test_header_routing_in_the_higress_artifact(higress_wasm):
    """`routing: header` in plugin.wasm, in front of an override_host cluster: the header
    names the instance and the body follows."""
    nacos = ScriptedNacos()
    nacos.register(A)
    gw = Gateway(
        higress_wasm,
        plugin_config({"routing": "header"}),
        mode="override_host",
        cluster_hosts={A: "Healthy", B: "Healthy"},
        nacos=nacos,
    )
    gw.advance(2500)
    out = gw.request("POST", body_chunks=(b"one-", b"two"))
    assert_reaches(out, {A}, b"one-two")
    assert out.upstream_headers.get(ROUTING_HEADER) == A and out.override is None


def test_an_instance_that_refuses_is_avoided_by_every_worker_and_nacos_asked(higress_wasm):
    # C is registered but its process is gone: the router answers 503 with UF. Polled
    # once a minute, so the poll that follows the failure is the one it asked for.
    config = plugin_config({"refreshIntervalMs": 60000})
    gw = higress(higress_wasm, registered=(A, B, C), backends={C: lambda m, h, b: (None, b"")}, config=config)
    polls = len(gw.nacos.calls)
    outcomes = [gw.request() for _ in range(6)]
    failed = [out for out in outcomes if out.status == 503]
    assert 1 <= len(failed) <= 2, outcomes  # at most one per worker
    gw.advance(100)  # a tick of each worker
    assert len(gw.nacos.calls) == polls + 1, "polled at once, not at the next interval"
    later = [gw.request() for _ in range(30)]
    assert {out.upstream for out in later} == {A, B}, later
    assert gw.stat("instance_failures") == len(failed)
    assert gw.stat("instances_avoided") == 1
