"""Section ``learned``: ``guardNacosRoutes``. How long after the first request to a
service nobody guarded yet its first poll is done (that request and those before the
poll meet ``onStale``), and what a request costs once the service is known, against a
route whose service a rule names, on the same gateway, wrk rounds alternating."""

from __future__ import annotations

import time
from pathlib import Path

from gateways import OWNER, fast_backend, pin, start_nacos, wait_first_snapshot
from measure import log, median, pct, process_run_seconds, wrk

from testbed.envoy import HigressNamedEnvoy, route_to
from testbed.higress import plugin_config
from testbed.waiting import wait_until


def learned_cluster(i: int) -> str:
    return f"outbound|8080||svc{i}.DEFAULT-GROUP.public.nacos"


def section_learned(args, res: dict, work: Path) -> None:
    trials = 5 if args.quick else args.learned_trials
    nacos = start_nacos(work / "learned-nacos")
    backend = fast_backend(work, 2)
    for i in range(trials):
        nacos.register(backend.ports[0], service=f"svc{i}")
    nacos.register(backend.ports[0], service="demo")
    cfg = plugin_config()
    cfg["guardNacosRoutes"] = {}
    # A trailing slash, or /svc1 would also match /svc10.
    routes = [route_to("default/demo", "/demo", learned_cluster(0))] + [
        route_to(f"default/svc{i}", f"/svc{i}/", learned_cluster(i)) for i in range(trials)
    ]
    (work / "learned-gw").mkdir()
    envoy = OWNER.add(
        HigressNamedEnvoy(
            work / "learned-gw",
            nacos.http_port,
            backend.ports,
            cfg,
            routes=routes,
            clusters=[learned_cluster(i) for i in range(trials)],
            concurrency=1,
            wasm_debug=False,
            argv_prefix=pin("gateway"),
        )
    )
    envoy.start(timeout=60.0)
    wait_first_snapshot(envoy, "/demo", "demo")
    first_poll_ms, first_routed_ms = [], []
    for i in range(1, trials):
        service = f"svc{i}"
        t0 = time.monotonic()
        envoy.request(f"/svc{i}/")
        wait_until(lambda s=service: envoy.guard_stat("poll_success", s) >= 1, 10, 0.002, f"first poll of {service}")
        first_poll_ms.append((time.monotonic() - t0) * 1000)
        wait_until(
            lambda s=service, i=i: envoy.request(f"/svc{i}/") and envoy.guard_stat("routed", s) >= 1,
            10,
            0.002,
            f"first routed request of {service}",
        )
        first_routed_ms.append((time.monotonic() - t0) * 1000)
    log(
        f"learned: first poll done after the first request p50 {median(first_poll_ms):.0f} ms, "
        f"max {max(first_poll_ms):.0f} ms; first routed request after {median(first_routed_ms):.0f} ms "
        f"(p50), {max(first_routed_ms):.0f} ms (max), {trials - 1} new services"
    )
    # Once known: /svc1 (learned) against /demo (a rule names `demo`), same gateway.
    targets = {"configured (rule)": "/demo", "learned (guardNacosRoutes)": "/svc1/"}
    runs = {name: [] for name in targets}
    duration = 2 if args.quick else args.duration
    for path in targets.values():
        wrk(f"http://127.0.0.1:{envoy.port}{path}", 2, args.connections)
    order = list(targets)
    for rnd in range(args.rounds):
        for name in order:
            cpu0 = process_run_seconds(envoy.pid)
            r = wrk(f"http://127.0.0.1:{envoy.port}{targets[name]}", duration, args.connections)
            r["cpu_us_per_request"] = (process_run_seconds(envoy.pid) - cpu0) * 1e6 / max(r["requests"], 1)
            runs[name].append(r)
            log(
                f"round {rnd + 1} {name:>28}: {r['rps']:7.0f} rps  p99 {r['p99']:.3f} ms  "
                f"gateway CPU {r['cpu_us_per_request']:.1f} us/request  non-2xx {r['non2xx']}"
            )
        order = order[1:] + order[:1]
    res["learned"] = {
        "first_poll_ms": first_poll_ms,
        "first_routed_ms": first_routed_ms,
        "first_poll_p50_ms": median(first_poll_ms),
        "first_poll_p99_ms": pct(first_poll_ms, 99),
        "runs": runs,
    }
    OWNER.stop(envoy)
    OWNER.stop(backend)
    OWNER.stop(nacos)
