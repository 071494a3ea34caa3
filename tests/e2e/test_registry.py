"""Scenarios 6 (registry down: stale snapshot, then onStale; recovery) and 7 (auth with
short-lived tokens)."""

import time

import pytest

from testbed.higress import plugin_config
from testbed.rejections import assert_rejection
from testbed.traffic import Traffic

MAX_STALE_S = 3.0
REFRESH_S = 1.0


@pytest.mark.parametrize("on_stale", ["fail_open", "fail_closed"])
def test_scenario6_registry_down_then_back(stack, on_stale):
    # B is stale: in the Envoy cluster, not in Nacos. The snapshot says "A only".
    s = stack(
        backends=["backend-a", "backend-b"],
        register=["backend-a"],
        global_overrides={"maxStaleMs": int(MAX_STALE_S * 1000), "onStale": on_stale},
    )
    a, b = s.be("backend-a"), s.be("backend-b")
    s.wait_only({"backend-a"}, timeout=5)
    fail0 = s.envoy.guard_stat("poll_failure")

    with Traffic(s.envoy, interval=0.02) as tr:
        time.sleep(0.3)
        t_stop = time.monotonic()
        s.nacos.stop()
        time.sleep(MAX_STALE_S + REFRESH_S + 2.0)
        t_end_down = time.monotonic()

        # the last good snapshot keeps serving for a while (at least until
        # maxStaleMs after the last good answer, which was <= ~1.5 s before the stop)
        early = [r for r in tr.records if t_stop <= r[0] < t_stop + MAX_STALE_S - 1.6]
        assert early and all(r[2] == 200 and r[3] == "backend-a" for r in early), {(r[2], r[3]) for r in early}

        snapshot_like = lambda r: r[2] == 200 and r[3] == "backend-a"  # noqa: E731
        after = [r for r in tr.records if r[0] >= t_stop]
        first_change = next((r[0] for r in after if not snapshot_like(r)), None)
        assert first_change is not None, "onStale never applied"
        stale_for = first_change - t_stop
        print(
            f"\n[scenario6/{on_stale}] r-nacos stopped; snapshot served for {stale_for:.2f} s "
            f"(maxStaleMs={MAX_STALE_S * 1000:.0f})"
        )
        assert MAX_STALE_S - 1.6 <= stale_for <= MAX_STALE_S + REFRESH_S + 1.0, stale_for

        late = [r for r in tr.records if first_change + 0.3 <= r[0] < t_end_down]
        assert late
        if on_stale == "fail_open":
            # pass through: the gateway routes as it would without the plugin (stale RR)
            assert all(r[2] == 200 for r in late), {r[2] for r in late}
            assert {r[3] for r in late} == {"backend-a", "backend-b"}
            assert s.envoy.guard_stat("passed_through") > 0
        else:
            assert all(r[2] == 503 for r in late), {r[2] for r in late}
            assert_rejection(s.envoy.request("/demo"), code="registry_unavailable")
            assert b.hits == 0
        assert s.envoy.guard_stat("poll_failure") > fail0

        # registry back on the same ports and data dir: the plugin recovers by itself
        t_start = time.monotonic()
        s.nacos.start()
        if not any(h["port"] == a.port for h in s.nacos.list()["hosts"]):
            pytest.fail("r-nacos lost the persistent instance over a restart")
        s.wait_only({"backend-a"}, timeout=REFRESH_S + 5, window=20)
        print(f"[scenario6/{on_stale}] recovered {time.monotonic() - t_start:.2f} s after r-nacos restart")
    hb = b.hits
    assert s.names(s.send(20)) == ["backend-a"] * 20
    assert b.hits == hb


LOGIN_TTL_S = 4


def test_scenario7_auth_token_refresh(stack):
    s = stack(
        backends=["backend-a", "backend-b"],
        register=["backend-a"],
        auth=True,
        login_timeout=LOGIN_TTL_S,
        global_overrides={"nacos": {"username": "admin", "password": "admin"}},
    )
    a, b = s.be("backend-a"), s.be("backend-b")

    # r-nacos really enforces auth: no token -> refused, token -> served
    st, body = s.nacos.raw(
        "GET",
        "/nacos/v1/ns/instance/list",
        {"serviceName": "demo", "groupName": "DEFAULT_GROUP", "namespaceId": "public"},
        token=False,
    )
    assert st != 200, (st, body)
    login = s.nacos.login()
    assert int(login["tokenTtl"]) == LOGIN_TTL_S, login

    # negative controls on the same registry: wrong password / no credentials never poll successfully
    bad_pw = s.gateway(plugin_config({"nacos": {"username": "admin", "password": "wrong"}}), backends=[a, b])
    no_cred = s.gateway(plugin_config(), backends=[a, b])

    s.wait_only({"backend-a"}, timeout=5)
    fail0 = s.envoy.guard_stat("poll_failure")
    login0 = s.envoy.guard_stat("login_success", service=None)
    lifetimes = 4
    with Traffic(s.envoy, interval=0.05) as tr:
        time.sleep(LOGIN_TTL_S * lifetimes / 2)
        # the plugin must still see changes, so polls really succeed (not just a kept snapshot)
        s.nacos.register(b.port)
        s.nacos.deregister(a.port)
        t_switch = time.monotonic()
        time.sleep(LOGIN_TTL_S * lifetimes / 2)
    bad = [r for r in tr.records if r[2] != 200]
    assert not bad, bad[:5]
    late = [r for r in tr.records if r[0] > t_switch + 2.5]
    assert late and all(r[3] == "backend-b" for r in late), {r[3] for r in late}

    polls = s.envoy.guard_stat("poll_success")
    logins = s.envoy.guard_stat("login_success", service=None) - login0
    print(
        f"\n[scenario7] {lifetimes * LOGIN_TTL_S}s with tokenTtl={LOGIN_TTL_S}s: logins={logins} "
        f"poll_success={polls} poll_failure={s.envoy.guard_stat('poll_failure') - fail0}"
    )
    assert s.envoy.guard_stat("poll_failure") == fail0 == 0
    assert s.envoy.guard_stat("login_failure", service=None) == 0
    assert logins >= lifetimes - 1, logins

    # negative controls
    assert bad_pw.guard_stat("poll_success") == 0
    assert bad_pw.guard_stat("login_failure", service=None) > 0
    assert no_cred.guard_stat("poll_success") == 0
    assert no_cred.guard_stat("poll_failure") > 0
