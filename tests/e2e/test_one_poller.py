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

import pytest

from harness import NACOS_CLUSTER, Backend, Envoy, RNacos, plugin_config, wait_until

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


class OnePollerStack:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.nacos = None
        self.envoy = None
        self.backends = {}

    def start(self, backends, services, cfg):
        """``services``: {service name: [backend names registered in it]}."""
        self.nacos = RNacos(self.tmp)
        self.nacos.start()
        for name in backends:
            self.backends[name] = Backend(name)
        for service, names in services.items():
            for name in names:
                self.nacos.register(self.backends[name].port, service=service)
        self.envoy = Envoy(self.tmp, self.nacos.http_port, [b.port for b in self.backends.values()], cfg,
                           concurrency=CONCURRENCY)
        self.envoy.start()
        return self

    def stop(self):
        if self.envoy is not None:
            self.envoy.stop()
        if self.nacos is not None and self.nacos.proc is not None:
            self.nacos.proc.stop()
        for b in self.backends.values():
            b.stop()

    def nacos_requests(self) -> int:
        return int(self.envoy.stats().get(NACOS_RQ_TOTAL, 0))

    def worker_connections(self) -> dict:
        """Downstream connections accepted per worker, from the listener's per-worker stats."""
        out = {}
        for k, v in self.envoy.stats().items():
            if k.startswith("listener.127.0.0.1_") and ".worker_" in k and k.endswith(".downstream_cx_total"):
                out[k.split(".worker_")[1].split(".")[0]] = int(v)
        return out

    def wait_all_workers_route(self, path="/demo", service="demo"):
        """Every VM has adopted a snapshot: a batch of requests over fresh connections
        (so over every worker) is routed in full."""
        def all_routed():
            r0 = self.envoy.guard_stat("routed", service)
            for _ in range(12):
                self.envoy.request(path)
            return self.envoy.guard_stat("routed", service) - r0 == 12
        wait_until(all_routed, 15, 0.05, f"every worker VM routes {service}")


@pytest.fixture
def one_poller(tmp_path, request):
    s = OnePollerStack(tmp_path)
    yield s
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and s.envoy is not None:
        print("----- envoy log tail -----")
        print(s.envoy.log_text()[-6000:])
    s.stop()


def two_service_config() -> dict:
    """plugin.yaml's configuration with the ``default/legacy`` route guarding a second
    service ``demo2`` instead of being switched off."""
    cfg = plugin_config()
    rules = [r for r in cfg["_rules_"] if "default/legacy" not in r.get("_match_route_", [])]
    rules.append({"_match_route_": ["default/legacy"], "service": {"name": "demo2"}})
    cfg["_rules_"] = rules
    return cfg


def lease_holders(envoy) -> list:
    return [line for line in envoy.log_text().splitlines() if "now polls Nacos for this gateway" in line]


def test_one_poll_per_interval_at_concurrency_4(one_poller):
    s = one_poller.start(["backend-a"], {"demo": ["backend-a"]}, plugin_config())
    s.envoy.stats()  # admin up
    wait_until(lambda: s.envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    s.wait_all_workers_route()

    n0, p0 = s.nacos_requests(), s.envoy.guard_stat("poll_success")
    time.sleep(WINDOW_S)
    n1, p1 = s.nacos_requests(), s.envoy.guard_stat("poll_success")
    calls, polls = n1 - n0, p1 - p0
    print(f"\n[one-poller] concurrency {CONCURRENCY}: {calls} Nacos requests, {polls} successful polls "
          f"of `demo` in {WINDOW_S:.0f} s at {INTERVAL_S * 1000:.0f} ms "
          f"({calls / (WINDOW_S / INTERVAL_S):.2f} per interval)")
    assert MIN_POLLS <= calls <= MAX_POLLS, f"{calls} Nacos requests in {WINDOW_S} s (one poller: 6-7)"
    # every call was a poll of `demo` (an answer may land just outside the window)
    assert abs(polls - calls) <= 1, (polls, calls)
    assert s.envoy.guard_stat("poll_failure") == 0
    # one VM took the lease (a second only if the first stalled for a whole lease)
    assert 1 <= len(lease_holders(s.envoy)) <= 2, lease_holders(s.envoy)


def test_every_worker_routes_by_the_fresh_snapshot(one_poller):
    s = one_poller.start(["backend-a", "backend-b"], {"demo": ["backend-a", "backend-b"]}, plugin_config())
    wait_until(lambda: s.envoy.guard_stat("poll_success") >= 1, 15, 0.05, "first poll")
    s.wait_all_workers_route()
    a, b = s.backends["backend-a"], s.backends["backend-b"]

    # Both instances get traffic, on every worker.
    got = {s.envoy.request("/demo").body for _ in range(40)}
    assert got == {"backend-a", "backend-b"}, got

    s.nacos.deregister(a.port)
    time.sleep(SETTLE_S)
    a_hits = a.hits
    cx0 = s.worker_connections()
    r0 = s.envoy.guard_stat("routed")
    n = 200
    answers = [s.envoy.request("/demo") for _ in range(n)]  # a new connection each
    cx1 = s.worker_connections()
    per_worker = {w: cx1.get(w, 0) - cx0.get(w, 0) for w in cx1}
    print(f"\n[one-poller] {n} requests after deregistering backend-a, connections per worker: {per_worker}")

    assert len(per_worker) == CONCURRENCY, per_worker
    # the requests spread over all four workers (so over four VMs that did not poll)
    assert all(c >= 10 for c in per_worker.values()), per_worker
    assert [r.body for r in answers] == ["backend-b"] * n, {r.body for r in answers}
    assert a.hits == a_hits, "backend-a got requests after the refresh interval"
    assert s.envoy.guard_stat("routed") - r0 == n  # decided by the plugin, not passed through
    assert s.envoy.guard_stat("usable_instances") == 1


def test_two_services_each_polled_once_per_interval(one_poller):
    s = one_poller.start(["backend-a", "backend-b"], {"demo": ["backend-a"], "demo2": ["backend-b"]},
                         two_service_config())
    for svc in ("demo", "demo2"):
        wait_until(lambda: s.envoy.guard_stat("poll_success", svc) >= 1, 15, 0.05, f"first poll of {svc}")
    s.wait_all_workers_route("/demo", "demo")
    s.wait_all_workers_route("/legacy", "demo2")
    # each route goes to its own service's instance
    assert {s.envoy.request("/demo").body for _ in range(12)} == {"backend-a"}
    assert {s.envoy.request("/legacy").body for _ in range(12)} == {"backend-b"}

    n0 = s.nacos_requests()
    p0 = {svc: s.envoy.guard_stat("poll_success", svc) for svc in ("demo", "demo2")}
    time.sleep(WINDOW_S)
    n1 = s.nacos_requests()
    polls = {svc: s.envoy.guard_stat("poll_success", svc) - p0[svc] for svc in ("demo", "demo2")}
    calls = n1 - n0
    print(f"\n[one-poller] 2 services, concurrency {CONCURRENCY}: {calls} Nacos requests in {WINDOW_S:.0f} s, "
          f"polls per service {polls}")
    for svc, p in polls.items():
        assert MIN_POLLS <= p <= MAX_POLLS, f"{svc}: {p} polls in {WINDOW_S} s"
    assert 2 * MIN_POLLS <= calls <= 2 * MAX_POLLS, calls
    assert abs(calls - sum(polls.values())) <= 2, (calls, polls)
    assert s.envoy.guard_stat("poll_failure", "demo") == 0
    assert s.envoy.guard_stat("poll_failure", "demo2") == 0
    assert 1 <= len(lease_holders(s.envoy)) <= 2, lease_holders(s.envoy)
