"""Section ``overhead``: the gateway's CPU time per request without a filter, with the
minimal one-header filter and with the plugin (issue 15, part 1).

The primary figure is the gateway Envoy's CPU time (utime + stime of the whole process,
from ``/proc/<pid>/stat``) over a wrk run, divided by the requests Envoy served in that
run (``http.gateway.downstream_rq_total``, read from the admin port before and after).
The worker thread's own CPU time (``/proc/<pid>/task/<tid>/stat``) is kept beside it.
Throughput and p99 of the same wrk runs are the secondary figures.

Set-up, so that the variants take turns on an otherwise steady machine:
- every gateway Envoy runs ``--concurrency 1`` pinned to CPU 0 (``taskset -c 0``);
  wrk, the backend Envoy, r-nacos and this script run on CPU 1;
- all gateways are started once and stay up; one gateway per configuration (a variant
  that differs only by its requests shares its configuration's gateway);
- many short rounds, each running every variant once, the order rotating; a ratio
  (variant / minimal filter, variant / no filter) is computed per round, and the report
  gives its median and its spread (min-max) over the rounds;
- ``--repeat N`` runs the whole section N times back to back (fresh processes each
  time); the report says whether the runs' median ratios agree within 3 %.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from gateways import OWNER, PIN, fast_backend, gateway, start_nacos, wait_first_snapshot
from measure import (
    fmt_profile,
    involuntary_switches,
    log,
    process_cpu_seconds,
    spread,
    thread_cpu_seconds,
    thread_ids,
    wrk,
    wrk_profiled,
)
from scale import scale_routes

from testbed.envoy import PIN_HEADER, ROUTING_HEADER
from testbed.higress import plugin_config

NO_FILTER = "no filter"
MINIMAL = "minimal filter"
GUARDED = "plugin, guarded route (header mode)"
RULES_100 = "plugin, 100 route rules (the last rule's route)"
PINNED = "plugin, pin header on every request"
UNGUARDED = "plugin, route it does not guard (enabled: false)"
PLUGIN_VARIANTS = (GUARDED, RULES_100, PINNED, UNGUARDED)
CLIENT_HEADER = "no filter, client sets the routing header"
MINIMAL_CALLS = "minimal filter making the plugin's host calls"
BASES = (MINIMAL, NO_FILTER)
REQUESTS_STAT = "http.gateway.downstream_rq_total"
GATEWAY_CPU, LOAD_CPU = "0", "1"

# Goals of issue 15, part 2, against the minimal filter, on the medians of one run.
GOAL_CPU = 1.05
GOAL_RPS = 0.95
GOAL_P99 = 1.05
AGREE = 0.03


def section_overhead(args, res: dict, work: Path) -> None:
    """``args.repeat`` runs of the pinned, interleaved rounds, into ``res["overhead"]``."""
    runs = []
    for k in range(args.repeat):
        if args.repeat > 1:
            log(f"overhead run {k + 1} of {args.repeat}")
        runs.append(overhead_run(args, work / f"overhead-{k + 1}", profile=args.profile and k == 0))
    res["overhead"] = {
        "runs": runs,
        "rounds": args.overhead_rounds,
        "seconds": args.overhead_seconds,
        "connections": args.connections,
        "pinned": runs[0]["pinned"],
    }
    for k, run in enumerate(runs):
        log(f"overhead run {k + 1}: " + "; ".join(f"{v} {fmt_ratio(r)}" for v, r in summary(run).items()))
    if len(runs) > 1:
        ok, lines = agreement(runs)
        for line in lines:
            log(f"agreement: {line}")
        log(f"the {len(runs)} runs {'agree' if ok else 'do NOT agree'} within {AGREE:.0%}")


class _Pinned:
    """Pins the gateways to CPU 0 and everything else this run starts (and this
    script) to CPU 1, for the duration of a ``with``; nothing on a single CPU."""

    def __enter__(self):
        self.saved_pin = dict(PIN)
        self.saved_affinity = os.sched_getaffinity(0)
        self.on = shutil.which("taskset") is not None and {int(GATEWAY_CPU), int(LOAD_CPU)} <= self.saved_affinity
        if self.on:
            PIN.update(gateway=GATEWAY_CPU, load=LOAD_CPU)
            # Children inherit it: r-nacos runs on the load CPU too.
            os.sched_setaffinity(0, {int(LOAD_CPU)})
        return self

    def __exit__(self, *exc):
        PIN.clear()
        PIN.update(self.saved_pin)
        os.sched_setaffinity(0, self.saved_affinity)
        return False


def overhead_run(args, work: Path, profile: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    with _Pinned() as pinned:
        try:
            run = _overhead_run(args, work, profile)
        finally:
            OWNER.stop_all()
    run["pinned"] = pinned.on
    return run


def _overhead_run(args, work: Path, profile: bool) -> dict:
    nacos = start_nacos(work / "nacos")
    backend = fast_backend(work, 2)
    for port in backend.ports:
        nacos.register(port, service="demo")
        nacos.register(port, service="svc-0")
    # The 99 other services of the 100-rule gateway, one instance each.
    nacos.register_many([(f"svc-{s}", f"10.0.{s}.1", 8080) for s in range(1, 100)])
    endpoint = f"127.0.0.1:{backend.ports[0]}"
    endpoints = "|".join(f"127.0.0.1:{p}" for p in backend.ports)  # in turn, like the plugin
    routes_100, cfg_100 = scale_routes(100)
    header_mode = {"routing": "header"}
    configs = {  # gateway: keyword arguments of gateways.gateway
        "none": dict(plugin_cfg=None),
        "minimal": dict(plugin_cfg={}, minimal_ops="set"),
        "plugin": dict(plugin_cfg=plugin_config(header_mode)),
        "plugin-100": dict(plugin_cfg={**cfg_100, **header_mode}, routes=routes_100),
    }
    demo_routed = "wasmcustom.nacos_guard.service.demo.routed"
    targets = {  # variant: (gateway, path, extra wrk args, the plugin's routed counter)
        NO_FILTER: ("none", "/demo", [], None),
        MINIMAL: ("minimal", "/demo", [], None),
        GUARDED: ("plugin", "/demo", [], demo_routed),
        RULES_100: ("plugin-100", "/svc-0", [], "wasmcustom.nacos_guard.service.svc-0.routed"),
        PINNED: ("plugin", "/demo", ["-H", f"{PIN_HEADER}: {endpoint}"], demo_routed),
        UNGUARDED: ("plugin", "/legacy", [], demo_routed),
    }
    if args.breakdown:
        configs["minimal-calls"] = dict(plugin_cfg={}, minimal_ops=f"remove,property,pin,metric,route={endpoints}")
        targets[CLIENT_HEADER] = ("none", "/demo", ["-H", f"{ROUTING_HEADER}: {endpoint}"], None)
        targets[MINIMAL_CALLS] = ("minimal-calls", "/demo", [], None)
    envoys = {name: gateway(work, nacos.http_port, backend.ports, concurrency=1, **kw) for name, kw in configs.items()}
    wait_first_snapshot(envoys["plugin"], "/demo", "demo")
    wait_first_snapshot(envoys["plugin-100"], "/svc-0", "svc-0", timeout=60)
    workers = {}
    for name, e in envoys.items():
        tids = thread_ids(e.pid, "wrk:worker")
        if len(tids) != 1:
            raise RuntimeError(f"gateway {name}: expected one worker thread, found {tids}")
        workers[name] = tids[0]
    for gw, path, extra, _ in targets.values():  # warm-up: connections, JIT, caches
        wrk(f"http://127.0.0.1:{envoys[gw].port}{path}", 2, args.connections, extra=extra)

    # CPU at rest of every gateway, over one window with no requests.
    time.sleep(0.5)
    c0 = {n: process_cpu_seconds(e.pid) for n, e in envoys.items()}
    t0 = time.monotonic()
    time.sleep(args.idle_seconds)
    dt = time.monotonic() - t0
    at_rest = {n: (process_cpu_seconds(e.pid) - c0[n]) / dt for n, e in envoys.items()}
    log("CPU at rest: " + ", ".join(f"{n} {v * 100:.1f}%" for n, v in at_rest.items()))

    rounds = {name: [] for name in targets}
    order = list(targets)
    for rnd in range(args.overhead_rounds):
        for name in order:
            gw, path, extra, routed = targets[name]
            r = measured_wrk(args, envoys[gw], workers[gw], path, extra, routed)
            rounds[name].append(r)
            log(
                f"round {rnd + 1} {name:>48}: {r['cpu_us']:6.1f} us/request (worker {r['worker_us']:6.1f})"
                f"  {r['rps']:7.0f} rps  p99 {r['p99']:.3f} ms  served {r['served']}"
                f"  non-2xx {r['non2xx']}  errors {r['socket_errors']}  worker preempted {r['preempted']}x"
                + (f"  routed by the plugin {r['decided']}" if routed else "")
            )
        order = order[1:] + order[:1]  # rotate who goes first
    run = {"rounds": rounds, "at_rest": {n: at_rest[targets[n][0]] for n in targets}}
    if profile:
        profiles = {}
        for name in (MINIMAL, MINIMAL_CALLS, GUARDED):
            if name not in targets:
                continue
            gw, path, extra, _ = targets[name]
            e = envoys[gw]
            r = wrk_profiled(e, f"http://127.0.0.1:{e.port}{path}", 8, args.connections, True, extra=extra)
            if r.get("profile"):
                profiles[name] = r["profile"]
                log(f"profile {name}: {fmt_profile(r['profile'])}")
        run["profiles"] = profiles
    return run


def measured_wrk(args, envoy, worker_tid: int, path: str, extra: list, routed: str | None) -> dict:
    """One wrk run against ``envoy`` with the gateway's CPU time and requests around it."""
    n0 = envoy.stat(REQUESTS_STAT)
    d0 = envoy.stat(routed) if routed else 0
    s0 = involuntary_switches(envoy.pid, worker_tid)
    c0, w0 = process_cpu_seconds(envoy.pid), thread_cpu_seconds(envoy.pid, worker_tid)
    r = wrk(f"http://127.0.0.1:{envoy.port}{path}", args.overhead_seconds, args.connections, extra=extra)
    r.pop("raw", None)
    time.sleep(0.1)  # requests wrk abandoned at its deadline finish
    c1, w1 = process_cpu_seconds(envoy.pid), thread_cpu_seconds(envoy.pid, worker_tid)
    preempted = involuntary_switches(envoy.pid, worker_tid) - s0
    served = envoy.stat(REQUESTS_STAT) - n0
    r.update(
        served=served,
        cpu_s=c1 - c0,
        worker_cpu_s=w1 - w0,
        cpu_us=(c1 - c0) * 1e6 / max(served, 1),
        worker_us=(w1 - w0) * 1e6 / max(served, 1),
        preempted=preempted,
    )
    if routed:
        r["decided"] = envoy.stat(routed) - d0
    return r


# ------------------------------------------------------------------ the figures of a run


def per_round(run: dict, variant: str, base: str, key: str) -> list:
    """``variant``'s figure ``key`` over ``base``'s, round by round."""
    a, b = run["rounds"][variant], run["rounds"][base]
    return [x[key] / y[key] for x, y in zip(a, b, strict=True) if y[key]]


def ratio(run: dict, variant: str, base: str, key: str = "cpu_us") -> dict:
    med, lo, hi = spread(per_round(run, variant, base, key))
    return {"median": med, "min": lo, "max": hi}


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})"


def summary(run: dict) -> dict:
    """CPU per request of every variant over the minimal filter."""
    return {v: ratio(run, v, MINIMAL) for v in run["rounds"] if v not in BASES}


def goals(run: dict) -> list:
    """(variant, measure, ratio, goal text, met) for every goal of issue 15, part 2."""
    out = []
    for v in PLUGIN_VARIANTS:
        if v not in run["rounds"]:
            continue
        cpu, rps, p99 = ratio(run, v, MINIMAL), ratio(run, v, MINIMAL, "rps"), ratio(run, v, MINIMAL, "p99")
        out.append((v, "CPU per request", cpu, f"<= {GOAL_CPU:.2f}x minimal filter", cpu["median"] <= GOAL_CPU))
        out.append((v, "throughput", rps, f">= {GOAL_RPS:.2f} of minimal filter", rps["median"] >= GOAL_RPS))
        out.append((v, "p99", p99, f"<= {GOAL_P99:.2f}x minimal filter", p99["median"] <= GOAL_P99))
    return out


def agreement(runs: list) -> tuple:
    """Whether every run's median CPU-per-request ratios (each variant over the minimal
    filter and over no filter) are within ``AGREE`` of the first run's; (ok, lines)."""
    ok, lines = True, []
    first = runs[0]
    for base in BASES:
        for v in first["rounds"]:
            if v == base or (base == MINIMAL and v == NO_FILTER):
                continue
            ref = ratio(first, v, base)["median"]
            parts = []
            for k, run in enumerate(runs[1:], start=2):
                other = ratio(run, v, base)["median"]
                diff = other / ref - 1
                ok &= abs(diff) <= AGREE
                parts.append(f"run {k} {other:.3f} ({diff * 100:+.1f}%)")
            lines.append(f"{v} / {base}: run 1 {ref:.3f}, " + ", ".join(parts))
    return ok, lines
