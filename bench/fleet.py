#!/usr/bin/env python3
"""`make fleet`: several gateways against one Nacos cluster, and what lands on it.

Four gateway Envoys at ``--concurrency 2``, each guarding the same 200 services (one
instance each, registered through node 1 and read back through node 3), with login on,
reach a three-node r-nacos Raft cluster as the README recommends: the HTTP and the gRPC
cluster each one host, a TCP balancer over the nodes (``tests/testbed/tcp_relay.py``,
round robin per new connection, as a cloud SLB or a ClusterIP). Measured over a steady
window, polling (``refreshIntervalMs`` 1000) and then with push (safety poll 30 s):

* list calls per second, per node: r-nacos's own ``http_request_total_count``
  (``/nacos/metrics``), and the gateways' own count (Envoy's ``upstream_rq_total`` of the
  Nacos cluster);
* logins: the gateways' ``login_success``;
* gRPC connections per node: the balancer's open connections by node (r-nacos's
  ``grpc_conn_size`` also counts the Raft peers' connections);
* subscriptions: r-nacos's ``naming_subscriber_listener_value_size`` and
  ``naming_subscriber_client_size`` per node.

Writes bench/results-fleet.md. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gateways import NACOS_STAT, OWNER  # noqa: E402
from measure import log  # noqa: E402
from push import push_settings  # noqa: E402
from scale import scale_routes  # noqa: E402

from testbed.backends import Backend  # noqa: E402
from testbed.cluster import RNacosCluster  # noqa: E402
from testbed.envoy import Envoy, wait_every_worker_routes  # noqa: E402
from testbed.higress import deep_merge  # noqa: E402
from testbed.paths import REPO  # noqa: E402
from testbed.tcp_relay import TcpRelay  # noqa: E402
from testbed.waiting import wait_until  # noqa: E402

RESULTS = REPO / "bench" / "results-fleet.md"
LOGIN = {"nacos": {"username": "admin", "password": "admin"}}
SUBSCRIPTION_GAUGES = ("naming_subscriber_listener_value_size", "naming_subscriber_client_size")


def start_fleet(args, work: Path, cluster: RNacosCluster, backend: Backend, push: bool) -> tuple:
    """The balancers and ``args.gateways`` gateways, all polled once per service."""
    http_lb = OWNER.add(TcpRelay(cluster.http_ports()))
    grpc_lb = OWNER.add(TcpRelay(cluster.grpc_ports()))
    routes, cfg = scale_routes(args.services)
    cfg = deep_merge(cfg, LOGIN)
    if push:
        cfg = deep_merge(cfg, push_settings())
    envoys = []
    for _ in range(args.gateways):
        e = OWNER.add(
            Envoy(
                work,
                http_lb.port,
                [backend.port],
                cfg,
                concurrency=args.concurrency,
                routes=routes,
                nacos_grpc_port=grpc_lb.port,
                wasm_debug=False,
            )
        )
        e.start(timeout=60)
        envoys.append(e)
    regex = r"^wasmcustom\.nacos_guard\.service\.public\.DEFAULT_GROUP\.svc-\d+\.poll_success$"
    for e in envoys:
        wait_until(lambda e=e: sum(v >= 1 for v in e.stats(regex).values()) == args.services, 180, 0.5, "first polls")
        wait_every_worker_routes(e, "/svc-0", "svc-0", timeout=60)
    if push:
        for e in envoys:
            wait_until(lambda e=e: e.guard_stat("push_streams", service=None) == 1, 60, 0.2, "a push stream")
        time.sleep(5)  # every subscription answered
    return http_lb, grpc_lb, envoys


def window(args, cluster: RNacosCluster, grpc_lb: TcpRelay, envoys: list, seconds: float) -> dict:
    """Counters over ``seconds`` of steady state, gauges at its end."""
    nodes = range(cluster.size)

    def sample():
        return {
            "node_http": [cluster.server_metrics(i).get("http_request_total_count", 0) for i in nodes],
            "gateway_calls": [e.stat(f"{NACOS_STAT}.upstream_rq_total") for e in envoys],
            "logins": [e.guard_stat("login_success", service=None) for e in envoys],
        }

    time.sleep(args.collect_s + 0.5)  # r-nacos's counters are collected every collect_s
    s0, t0 = sample(), time.monotonic()
    time.sleep(seconds)
    time.sleep(args.collect_s + 0.5)
    s1, t1 = sample(), time.monotonic()
    dt = t1 - t0
    grpc_by_port = grpc_lb.active()
    node_gauges = [cluster.server_metrics(i) for i in nodes]
    return {
        "seconds": dt,
        # the sample itself is one HTTP call per node (this /nacos/metrics read)
        "list_calls_per_s_by_node": [(b - a - 1) / dt for a, b in zip(s0["node_http"], s1["node_http"], strict=True)],
        "gateway_calls_per_s": sum(b - a for a, b in zip(s0["gateway_calls"], s1["gateway_calls"], strict=True)) / dt,
        "logins_in_window": sum(s1["logins"]) - sum(s0["logins"]),
        "logins_total": sum(s1["logins"]),
        "grpc_connections_by_node": [grpc_by_port.get(p, 0) for p in cluster.grpc_ports()],
        "subscriptions_by_node": [{k: int(g.get(k, 0)) for k in SUBSCRIPTION_GAUGES} for g in node_gauges],
        "grpc_conn_size_by_node": [int(g.get("grpc_conn_size", 0)) for g in node_gauges],
    }


def markdown(args, results: dict, started: float) -> str:
    lines = [
        "# Fleet: several gateways against a three-node Nacos cluster",
        "",
        f"`make fleet` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.time() - started) / 60:.1f} min): "
        f"{args.gateways} gateways at --concurrency {args.concurrency}, {args.services} services, login on, "
        "a TCP balancer in front of three r-nacos 0.8.8 nodes (HTTP and gRPC). Nodes 1 / 2 / 3.",
        "",
        "| mode | window | list calls/s by node | list calls/s (gateways' count) | logins in window (total) "
        "| gRPC connections by node | subscriptions (listener values / clients) by node |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, o in results.items():
        subs = " / ".join(
            f"{s['naming_subscriber_listener_value_size']}/{s['naming_subscriber_client_size']}"
            for s in o["subscriptions_by_node"]
        )
        lines.append(
            f"| {mode} | {o['seconds']:.0f} s | {' / '.join(f'{x:.1f}' for x in o['list_calls_per_s_by_node'])} "
            f"| {o['gateway_calls_per_s']:.1f} | {o['logins_in_window']} ({o['logins_total']}) "
            f"| {' / '.join(map(str, o['grpc_connections_by_node']))} | {subs} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--services", type=int, default=200)
    ap.add_argument("--poll-window", type=float, default=30.0)
    ap.add_argument("--push-window", type=float, default=60.0, help="at least two safety polls (30 s)")
    ap.add_argument("--collect-s", type=int, default=1, help="RNACOS_METRICS_COLLECT_INTERVAL_SECOND")
    args = ap.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="nig-fleet-"))
    results = {}
    try:
        env = {"RNACOS_METRICS_COLLECT_INTERVAL_SECOND": str(args.collect_s)}
        cluster = OWNER.add(RNacosCluster(work / "cluster", extra_env=env, auth=True))
        cluster.start()
        backend = OWNER.add(Backend("backend-0"))
        jobs = [("svc-0", "127.0.0.1", backend.port)]
        jobs += [(f"svc-{s}", f"10.{s // 250}.{s % 250}.1", 8080) for s in range(1, args.services)]
        secs, failed = cluster.nodes[0].register_many(jobs)
        log(f"registered {len(jobs)} services through node 1 in {secs:.1f} s, {failed} failed")
        last = f"svc-{args.services - 1}"
        wait_until(lambda: cluster.nodes[-1].list(last)["hosts"], 30, 0.1, f"node 3 lists {last}")
        for mode, push, seconds in (("polling 1 s", False, args.poll_window), ("push", True, args.push_window)):
            http_lb, grpc_lb, envoys = start_fleet(args, work, cluster, backend, push)
            results[mode] = o = window(args, cluster, grpc_lb, envoys, seconds)
            log(f"{mode}: {o}")
            for thing in [*envoys, grpc_lb, http_lb]:
                OWNER.stop(thing)
    finally:
        OWNER.stop_all()
    text = markdown(args, results, started)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
