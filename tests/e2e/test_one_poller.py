"""One poller per gateway: Envoy at ``--concurrency 4`` runs five Wasm VMs (four workers
and the main thread), yet Nacos is asked about each service about once per refresh
interval, and every worker routes by the snapshot the polling VM published.

The Nacos load is read from Envoy's own stats for the Nacos cluster
(``cluster.outbound|8848||nacos.dns.upstream_rq_total``): every call the plugin makes
goes through it. Without the lease each VM would poll on its own: ~5 calls per
service per interval instead of 1.
"""

from __future__ import annotations

import time

from testbed.envoy import NACOS_CLUSTER, wait_every_worker_routes, wait_first_poll
from testbed.higress import plugin_config, with_rules

CONCURRENCY = 4
INTERVAL_S = 1.0
WINDOW_S = 6.0
# Polls start up to a tenth of the interval early, so a 6 s window holds 6 or 7 polls of
# one service; a lease handover or a slow answer may move one in or out. Five VMs
# polling on their own would make ~30.
MIN_POLLS, MAX_POLLS = 5, 8
NACOS_RQ_TOTAL = f"cluster.{NACOS_CLUSTER}.upstream_rq_total"
# Time after a deregistration before the no-request check: one interval (the poll),
# the followers' tick (a tenth of the interval, at most 100 ms) and a margin for a
# loaded machine.
SETTLE_S = INTERVAL_S + 1.5


def start(bed, backends, services, cfg):
    """``services``: {service name: [backend names registered in it]}."""
    bed.start_registry(backends, register=services)
    bed.start_gateway(cfg, concurrency=CONCURRENCY)
    return bed


def nacos_requests(envoy) -> int:
    return envoy.stat(NACOS_RQ_TOTAL)


def worker_connections(envoy) -> dict:
    """Downstream connections accepted per worker, from the listener's per-worker stats."""
    out = {}
    for k, v in envoy.stats().items():
        if k.startswith("listener.127.0.0.1_") and ".worker_" in k and k.endswith(".downstream_cx_total"):
            out[k.split(".worker_")[1].split(".")[0]] = int(v)
    return out


def wait_all_workers_route(envoy, path="/demo", service="demo"):
    """Every VM has adopted a snapshot: a batch of requests over fresh connections
    (so over every worker) is routed in full."""
    wait_every_worker_routes(envoy, path, service, probes=12, timeout=15)


def two_service_config() -> dict:
    """plugin.yaml's configuration with the ``default/legacy`` route guarding a second
    service ``demo2`` instead of being switched off."""
    cfg = plugin_config()
    rules = [r for r in cfg["_rules_"] if "default/legacy" not in r.get("_match_route_", [])]
    return with_rules(cfg, [*rules, {"_match_route_": ["default/legacy"], "service": {"name": "demo2"}}])


def lease_holders(envoy) -> list:
    return [line for line in envoy.log_text().splitlines() if "now polls Nacos for this gateway" in line]


def test_one_poll_per_interval_at_concurrency_4(bed):
    s = start(bed, ["backend-a"], {"demo": ["backend-a"]}, plugin_config())
    s.envoy.stats()  # admin up
    wait_first_poll(s.envoy)
    wait_all_workers_route(s.envoy)

    n0, p0 = nacos_requests(s.envoy), s.envoy.guard_stat("poll_success")
    time.sleep(WINDOW_S)
    n1, p1 = nacos_requests(s.envoy), s.envoy.guard_stat("poll_success")
    calls, polls = n1 - n0, p1 - p0
    print(
        f"\n[one-poller] concurrency {CONCURRENCY}: {calls} Nacos requests, {polls} successful polls "
        f"of `demo` in {WINDOW_S:.0f} s at {INTERVAL_S * 1000:.0f} ms "
        f"({calls / (WINDOW_S / INTERVAL_S):.2f} per interval)"
    )
    assert MIN_POLLS <= calls <= MAX_POLLS, f"{calls} Nacos requests in {WINDOW_S} s (one poller: 6-7)"
    # every call was a poll of `demo` (an answer may land just outside the window)
    assert abs(polls - calls) <= 1, (polls, calls)
    assert s.envoy.guard_stat("poll_failure") == 0
    # one VM took the lease (a second only if the first stalled for a whole lease)
    assert 1 <= len(lease_holders(s.envoy)) <= 2, lease_holders(s.envoy)


def test_every_worker_routes_by_the_fresh_snapshot(bed):
    s = start(bed, ["backend-a", "backend-b"], {"demo": ["backend-a", "backend-b"]}, plugin_config())
    wait_first_poll(s.envoy)
    wait_all_workers_route(s.envoy)
    a = s.be("backend-a")

    # Both instances get traffic, on every worker.
    got = {s.envoy.request("/demo").body for _ in range(40)}
    assert got == {"backend-a", "backend-b"}, got

    s.nacos.deregister(a.port)
    time.sleep(SETTLE_S)
    a_hits = a.hits
    cx0 = worker_connections(s.envoy)
    r0 = s.envoy.guard_stat("routed")
    n = 200
    answers = [s.envoy.request("/demo") for _ in range(n)]  # a new connection each
    cx1 = worker_connections(s.envoy)
    per_worker = {w: cx1.get(w, 0) - cx0.get(w, 0) for w in cx1}
    print(f"\n[one-poller] {n} requests after deregistering backend-a, connections per worker: {per_worker}")

    assert len(per_worker) == CONCURRENCY, per_worker
    # the requests spread over all four workers (so over four VMs that did not poll)
    assert all(c >= 10 for c in per_worker.values()), per_worker
    assert [r.body for r in answers] == ["backend-b"] * n, {r.body for r in answers}
    assert a.hits == a_hits, "backend-a got requests after the refresh interval"
    assert s.envoy.guard_stat("routed") - r0 == n  # decided by the plugin, not passed through
    assert s.envoy.guard_stat("usable_instances") == 1


def test_two_services_each_polled_once_per_interval(bed):
    s = start(bed, ["backend-a", "backend-b"], {"demo": ["backend-a"], "demo2": ["backend-b"]}, two_service_config())
    for svc in ("demo", "demo2"):
        wait_first_poll(s.envoy, svc)
    wait_all_workers_route(s.envoy, "/demo", "demo")
    wait_all_workers_route(s.envoy, "/legacy", "demo2")
    # each route goes to its own service's instance
    assert {s.envoy.request("/demo").body for _ in range(12)} == {"backend-a"}
    assert {s.envoy.request("/legacy").body for _ in range(12)} == {"backend-b"}

    n0 = nacos_requests(s.envoy)
    p0 = {svc: s.envoy.guard_stat("poll_success", svc) for svc in ("demo", "demo2")}
    time.sleep(WINDOW_S)
    n1 = nacos_requests(s.envoy)
    polls = {svc: s.envoy.guard_stat("poll_success", svc) - p0[svc] for svc in ("demo", "demo2")}
    calls = n1 - n0
    print(
        f"\n[one-poller] 2 services, concurrency {CONCURRENCY}: {calls} Nacos requests in {WINDOW_S:.0f} s, "
        f"polls per service {polls}"
    )
    for svc, p in polls.items():
        assert MIN_POLLS <= p <= MAX_POLLS, f"{svc}: {p} polls in {WINDOW_S} s"
    assert 2 * MIN_POLLS <= calls <= 2 * MAX_POLLS, calls
    assert abs(calls - sum(polls.values())) <= 2, (calls, polls)
    assert s.envoy.guard_stat("poll_failure", "demo") == 0
    assert s.envoy.guard_stat("poll_failure", "demo2") == 0
    assert 1 <= len(lease_holders(s.envoy)) <= 2, lease_holders(s.envoy)
