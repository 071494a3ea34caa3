"""Scenarios 1 and 2: deregistering persistent instances through the Nacos OpenAPI.

The Envoy cluster keeps listing every backend (stale, as in Higress); only the plugin
knows from Nacos that an instance is gone. Both plain-Envoy routing modes are covered.
"""

import time

import pytest

from testbed.rejections import assert_rejection
from testbed.traffic import Traffic

MODES = ["override_host", "original_dst"]
# Plugin default refreshIntervalMs is 1000 with jitter; allow one interval, the jitter and
# the Nacos round trip, plus a margin for a loaded CI machine.
REFRESH_S = 1.0
MARGIN_S = 1.5


def deregister_and_measure(s, name, traffic):
    """Deregister ``name``; return (t_deregistered, seconds to its last request)."""
    be = s.be(name)
    s.nacos.deregister(be.port)
    t_dereg = time.monotonic()  # the deregistration HTTP call has returned
    time.sleep(REFRESH_S + MARGIN_S + 0.7)  # watch longer than the bound we assert
    last = be.last_hit()
    lag = (last - t_dereg) if last is not None and last > t_dereg else 0.0
    return t_dereg, lag


@pytest.mark.parametrize("mode", MODES)
def test_scenario1_single_instance_deregistered_then_rejected(stack, mode):
    s = stack(backends=["backend-a"], mode=mode)
    a = s.be("backend-a")
    s.wait_only({"backend-a"}, timeout=10)
    assert s.names(s.send(10)) == ["backend-a"] * 10

    with Traffic(s.envoy, interval=0.01) as tr:
        time.sleep(0.3)
        hits_before = a.hits
        t_dereg, lag = deregister_and_measure(s, "backend-a", tr)
        hits_at_check = a.hits
        time.sleep(0.3)
    print(f"\n[scenario1/{mode}] deregistration -> last request reaching backend-a: {lag * 1000:.0f} ms")

    assert hits_before > 0
    assert lag <= REFRESH_S + MARGIN_S, f"backend-a still got requests {lag:.2f}s after deregistration"
    # nothing reached A after the settle window
    assert a.hits == hits_at_check, "backend-a got requests after the refresh interval"
    late = [r for r in tr.since(t_dereg + REFRESH_S + MARGIN_S)]
    assert late, "traffic generator produced no late requests"
    assert all(r[2] == 503 for r in late), {r[2] for r in late}
    # every answer is the documented JSON rejection
    for _ in range(5):
        assert_rejection(s.envoy.request("/demo"))
    assert a.hits == hits_at_check
    assert s.envoy.guard_stat("usable_instances") == 0


@pytest.mark.parametrize("mode", MODES)
def test_scenario2_two_instances_deregister_one_by_one_then_return(stack, mode):
    s = stack(backends=["backend-a", "backend-b"], mode=mode)
    a, b = s.be("backend-a"), s.be("backend-b")

    # traffic reaches both
    got = s.names(s.send(40))
    assert set(got) == {"backend-a", "backend-b"}, got

    with Traffic(s.envoy, interval=0.01) as tr:
        time.sleep(0.3)
        t_a, lag_a = deregister_and_measure(s, "backend-a", tr)
        a_hits = a.hits
        b_hits = b.hits
        time.sleep(0.3)
        assert a.hits == a_hits, "backend-a got requests after the refresh interval"
        assert b.hits > b_hits, "backend-b stopped getting requests"
        only_b = tr.since(t_a + REFRESH_S + MARGIN_S)
        assert only_b and all(r[2] == 200 and r[3] == "backend-b" for r in only_b), {(r[2], r[3]) for r in only_b}

        t_b, lag_b = deregister_and_measure(s, "backend-b", tr)
        b_hits = b.hits
        time.sleep(0.3)
        assert b.hits == b_hits, "backend-b got requests after the refresh interval"
        rejected = tr.since(t_b + REFRESH_S + MARGIN_S)
        assert rejected and all(r[2] == 503 for r in rejected), {r[2] for r in rejected}
    print(
        f"\n[scenario2/{mode}] deregistration -> last request: backend-a {lag_a * 1000:.0f} ms, "
        f"backend-b {lag_b * 1000:.0f} ms"
    )
    assert lag_a <= REFRESH_S + MARGIN_S
    assert lag_b <= REFRESH_S + MARGIN_S
    assert_rejection(s.envoy.request("/demo"))

    # register B again: traffic returns, to B only
    t_reg = time.monotonic()
    s.nacos.register(b.port)
    s.wait_only({"backend-b"}, timeout=REFRESH_S + MARGIN_S + 3)
    print(f"[scenario2/{mode}] re-registration -> traffic back within {time.monotonic() - t_reg:.2f} s")
    a_hits = a.hits
    assert s.names(s.send(20)) == ["backend-b"] * 20
    assert a.hits == a_hits
