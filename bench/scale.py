"""Section ``scale``: 1, 100 and 1000 guarded services (10 instances each): poll round
time, calls in flight, memory, CPU at rest and per-request cost; and CPU at rest with
the most services next to the polling floor, the minimal filter making the same calls."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateways import NACOS_STAT, OWNER, Pinned, fast_backend, gateway, start_nacos, wait_first_snapshot
from measure import (
    cpu_at_rest,
    fmt_kb,
    fmt_profile,
    log,
    measured_round,
    median,
    perf_profile,
    process_run_seconds,
    spread,
    thread_ids,
    wrk,
    wrk_profiled,
)

from testbed.envoy import NACOS_CLUSTER, DirectResponseEnvoy, Envoy, route
from testbed.higress import plugin_config, with_rules
from testbed.rnacos import RNacos
from testbed.waiting import wait_until


class ActiveSampler:
    """Samples the Nacos cluster's upstream_rq_active gauge as fast as the admin answers."""

    def __init__(self, envoy: Envoy):
        self.envoy = envoy
        self.max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        regex = r"^cluster\.outbound\|8848\|\|nacos\.dns\.upstream_rq_active$"
        while not self._stop.is_set():
            try:
                v = int(next(iter(self.envoy.stats(regex).values()), 0))
                self.max = max(self.max, v)
                self.samples += 1
            except Exception:  # noqa: BLE001 - envoy stopping
                pass
            self._stop.wait(0.005)

    def stop(self):
        self._stop.set()
        self._t.join(timeout=5)


def scale_routes(count: int) -> tuple:
    """Routes ``bench/svc-<i>`` (exact path ``/svc-<i>``) and one rule per service. The
    measured route ``/svc-0`` is Envoy's first route but the plugin's *last* rule, the
    worst case for the plugin's rule matching."""
    routes = [route(f"bench/svc-{i}", path=f"/svc-{i}") for i in range(count)]
    rules = [{"_match_route_": [f"bench/svc-{i}"], "service": {"name": f"svc-{i}"}} for i in range(1, count)]
    rules.append({"_match_route_": ["bench/svc-0"], "service": {"name": "svc-0"}})
    cfg = with_rules(plugin_config(), rules)
    return routes, cfg


def scale_run(
    args,
    work: Path,
    nacos: RNacos,
    backend: DirectResponseEnvoy,
    count: int,
    concurrency: int = 1,
    interval_ms: int | None = None,
    full: bool = True,
    do_wrk: bool | None = None,
    reference: dict | None = None,
) -> dict:
    """One gateway guarding ``count`` services: first and steady poll rounds with the
    calls in flight sampled, then Nacos calls and Envoy CPU over an idle window, RSS,
    and wrk on the route of the last rule."""
    routes, cfg = scale_routes(count)
    o = {"count": count, "concurrency": concurrency, "interval_ms": interval_ms or cfg.get("refreshIntervalMs", 1000)}
    if interval_ms:
        cfg["refreshIntervalMs"] = interval_ms
        # the one snapshot must stay fresh for the whole run, or requests pass through
        cfg["maxStaleMs"] = max(cfg.get("maxStaleMs", 30000), 3 * interval_ms)
    if full:
        bare = gateway(work, nacos.http_port, backend.ports, None, concurrency=concurrency, routes=routes)
        time.sleep(1.0)
        o["bare_rss_kb"] = bare.rss_kb()
        OWNER.stop(bare)
    envoy = gateway(work, nacos.http_port, backend.ports, cfg, concurrency=concurrency, routes=routes)
    sampler = ActiveSampler(envoy)
    t_ready = time.monotonic()
    regex = r"^wasmcustom\.nacos_guard\.service\.public\.DEFAULT_GROUP\.svc-\d+\.poll_success$"

    def all_polled():
        vals = envoy.stats(regex)
        return len(vals) == count and all(v >= 1 for v in vals.values())

    # The first round: every service is due at once, at most 32 calls in flight.
    wait_until(all_polled, 120, 0.02, f"first poll of all {count} services")
    o["first_round_s"] = time.monotonic() - t_ready
    wait_first_snapshot(envoy, "/svc-0", "svc-0", timeout=60)
    if full:
        time.sleep(1.0)
        # Steady state: time until every service's poll_success advanced once more.
        base = envoy.stats(regex)
        t0 = time.monotonic()
        wait_until(
            lambda: all(v > base.get(k, 0) for k, v in envoy.stats(regex).items()),
            60,
            0.02,
            "one more poll of every service",
        )
        o["steady_round_s"] = time.monotonic() - t0
    sampler.stop()
    o["active_max"], o["active_samples"] = sampler.max, sampler.samples
    time.sleep(1.0)
    # Nacos calls and Envoy CPU over a window with nothing else touching Envoy.
    n0 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
    c0, w0 = process_run_seconds(envoy.pid), time.monotonic()
    time.sleep(args.scale_window)
    n1 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
    c1, w1 = process_run_seconds(envoy.pid), time.monotonic()
    o["per_service_interval"] = (n1 - n0) / ((w1 - w0) * 1000.0 / o["interval_ms"]) / count
    o["idle_cpu"] = (c1 - c0) / (w1 - w0)
    if full and count >= 1000:
        o["idle_profile"] = perf_profile(envoy.pid, 6)
    o["rss_kb"] = envoy.rss_kb()
    o["heap"] = envoy.heap_allocated()
    o["vms"] = int(next(iter(envoy.stats(r"^wasm\.envoy\.wasm\.runtime\.v8\.active$").values()), 0))
    o["pending_overflow"] = envoy.stat(f"{NACOS_STAT}.upstream_rq_pending_overflow")
    o["poll_failures"] = int(
        sum(envoy.stats(r"^wasmcustom\.nacos_guard\.service\.public\.DEFAULT_GROUP\.svc-\d+\.poll_failure$").values())
    )
    if full if do_wrk is None else do_wrk:
        if reference is not None:
            o["paired"] = paired_with_reference(args, envoy, reference)
        wrk(f"http://127.0.0.1:{envoy.port}/svc-0", 2, args.connections)
        r0 = envoy.stat("wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.svc-0.routed")
        runs = [
            wrk(f"http://127.0.0.1:{envoy.port}/svc-0", args.duration, args.connections)
            for _ in range(args.scale_runs - 1)
        ]
        runs.append(
            wrk_profiled(envoy, f"http://127.0.0.1:{envoy.port}/svc-0", args.duration, args.connections, args.profile)
        )
        runs.sort(key=lambda r: r["rps"])
        o["wrk"] = dict(runs[len(runs) // 2])  # the median run
        o["wrk"]["all_rps"] = [r["rps"] for r in runs]
        o["requests_all"] = sum(r["requests"] for r in runs)
        prof = next((r["profile"] for r in runs if r.get("profile")), None)
        if prof:
            o["wrk"]["profile"] = prof
        o["decided"] = envoy.stat("wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.svc-0.routed") - r0
    OWNER.stop(envoy)
    w = o.get("wrk")
    log(
        f"{count} services, concurrency {concurrency}, every {o['interval_ms']} ms: first round "
        f"{o['first_round_s']:.2f} s"
        + (f", steady round {o['steady_round_s']:.2f} s" if full else "")
        + f", {o['per_service_interval']:.2f} polls/service/interval, in flight max {o['active_max']} "
        f"({o['active_samples']} samples), CPU at rest {o['idle_cpu'] * 100:.1f}% of a core, "
        f"RSS {fmt_kb(o['rss_kb'])}"
        + (f" (no plugin {fmt_kb(o['bare_rss_kb'])})" if full else "")
        + f", {o['vms']} VMs, poll failures {o['poll_failures']}"
        + (
            f", wrk {w['rps']:.0f} rps p50 {w['p50']:.3f} ms p99 {w['p99']:.3f} ms, decided {o['decided']}/"
            f"{o['requests_all']} (all runs)"
            if w
            else ""
        )
        + (f"; {fmt_profile(w.get('profile'))}" if w and w.get("profile") else "")
    )
    return o


def start_reference(args, work: Path, nacos: RNacos, backend: DirectResponseEnvoy) -> dict:
    """The one-service gateway every scale step is paired with, and its load (as
    ``measure.measured_round`` takes it)."""
    routes, cfg = scale_routes(1)
    envoy = gateway(work, nacos.http_port, backend.ports, cfg, routes=routes)
    wait_first_snapshot(envoy, "/svc-0", "svc-0", timeout=60)
    return reference_on(envoy)


def reference_on(envoy: Envoy) -> dict:
    """``envoy`` as the reference of ``paired_with_reference``: loaded on ``/svc-0``."""
    tid = thread_ids(envoy.pid, "wrk:worker")[0]
    return {"envoy": envoy, "load": (envoy, tid, "/svc-0", [], None)}


def paired_with_reference(args, envoy: Envoy, reference: dict) -> dict:
    """The last rule's route of ``envoy`` and the one-service reference loaded at the
    same time, over ``args.scale_pairs`` rounds of ``args.scale_pair_seconds`` s: the
    reference's CPU per request over this gateway's, per round (1.0: a request costs the
    same with every service).

    Each round takes off both gateways' CPU at rest measured just before it, in a window
    of its own (``args.scale_rest_seconds``). With polling at 1,000 services that is a
    tenth of a core, and this machine's speed drifts by up to 1.5x between seconds
    (bench/probes/drift.py): one window for all rounds left the figure 0.86 in one run
    and 0.96 in the next."""
    tid = thread_ids(envoy.pid, "wrk:worker")[0]
    loads = {"this": (envoy, tid, "/svc-0", [], None), "reference": reference["load"]}
    both = {"this": envoy, "reference": reference["envoy"]}
    measured_round(args, loads, 2)  # warm-up
    rounds, rests = [], []
    for _ in range(args.scale_pairs):
        rest = cpu_at_rest(both, args.scale_rest_seconds)
        rests.append(rest)
        rounds.append(measured_round(args, loads, args.scale_pair_seconds, rest))
    ratios = [r["reference"]["cpu_us"] / r["this"]["cpu_us"] for r in rounds if r["this"]["cpu_us"] > 0]
    med, lo, hi = spread(ratios)
    rest_this = spread([r["this"] for r in rests])
    out = {
        "ratio": med,
        "min": lo,
        "max": hi,
        "cpu_us": median([r["this"]["cpu_us"] for r in rounds]),
        "reference_cpu_us": median([r["reference"]["cpu_us"] for r in rounds]),
        "at_rest": {"median": rest_this[0], "min": rest_this[1], "max": rest_this[2]},
        "reference_at_rest": median([r["reference"] for r in rests]),
        "rounds": len(rounds),
    }
    log(
        f"paired with the one-service gateway: CPU per request {out['cpu_us']:.1f} us against "
        f"{out['reference_cpu_us']:.1f} us, ratio {med:.3f} ({lo:.3f}-{hi:.3f}) over {len(rounds)} rounds; "
        f"at rest before each round {rest_this[0] * 100:.1f}% ({rest_this[1] * 100:.1f}-{rest_this[2] * 100:.1f}%) "
        f"of a core, the reference {out['reference_at_rest'] * 100:.1f}%"
    )
    return out


# The list call the plugin sends for service svc-<i> (v1, no clusters, no token),
# with ``{}`` for the number: the polling floor sends the same.
LIST_PATH = "/nacos/v1/ns/instance/list?serviceName=svc-{}&groupName=DEFAULT_GROUP&namespaceId=public&healthyOnly=false"
FLOOR = "polling floor"


def floor_poll(nacos: RNacos, cfg: dict, count: int) -> str:
    """The minimal filter's ``poll=`` for the plugin's list calls of ``count`` services
    under ``cfg``: its interval, at most 32 in flight."""
    return f"{NACOS_CLUSTER};127.0.0.1:{nacos.http_port};{LIST_PATH};{count};{cfg.get('refreshIntervalMs', 1000)};32"


FLOOR_CALLS = "polling floor with the plugin's answer calls"


def rest_against_floor(args, work: Path, nacos: RNacos, backend: DirectResponseEnvoy, count: int, concurrency: int):
    """The plugin guarding ``count`` services at rest, next to the minimal filter
    sending the same list calls on the same schedule (the polling floor: what any
    plugin polling them through Envoy pays) and the floor that also makes the host
    calls the plugin makes on each answer; all three at once, over
    ``args.rest_floor_windows`` windows of ``args.rest_floor_seconds`` s. Per window:
    each one's CPU (schedstat) and Nacos calls; the ratios are the medians of the
    per-window ratios to the floor. Then the floor alone over two windows, as the
    plugin's CPU at rest is measured alone (scale_run)."""
    routes, cfg = scale_routes(count)
    plugin = gateway(work, nacos.http_port, backend.ports, cfg, concurrency=concurrency, routes=routes)
    poll = floor_poll(nacos, cfg, count)
    envoys = {
        "plugin": plugin,
        FLOOR: gateway(
            work, nacos.http_port, backend.ports, {}, concurrency=concurrency, routes=routes, minimal_ops=f"poll={poll}"
        ),
        FLOOR_CALLS: gateway(
            work,
            nacos.http_port,
            backend.ports,
            {},
            concurrency=concurrency,
            routes=routes,
            minimal_ops=f"poll={poll};answer",
        ),
    }
    wait_first_snapshot(plugin, "/svc-0", "svc-0", timeout=60)
    time.sleep(2.0)  # past every first round
    windows = []
    for _ in range(args.rest_floor_windows):
        calls0 = {k: e.stat(f"{NACOS_STAT}.upstream_rq_total") for k, e in envoys.items()}
        t0 = time.monotonic()
        cpu = cpu_at_rest(envoys, args.rest_floor_seconds)
        dt = time.monotonic() - t0
        calls = {k: (e.stat(f"{NACOS_STAT}.upstream_rq_total") - calls0[k]) / dt for k, e in envoys.items()}
        windows.append({"cpu": cpu, "calls": calls})
    # The floor alone, as the plugin's CPU at rest is measured alone in scale_run.
    OWNER.stop(envoys["plugin"])
    OWNER.stop(envoys[FLOOR_CALLS])
    time.sleep(1.0)
    alone = [cpu_at_rest({FLOOR: envoys[FLOOR]}, args.rest_floor_seconds)[FLOOR] for _ in range(2)]
    OWNER.stop(envoys[FLOOR])
    out = {"count": count, "concurrency": concurrency, "windows": len(windows), "floor_alone": median(alone)}
    for k in envoys:
        cpus = [w["cpu"][k] for w in windows]
        per_call = [w["cpu"][k] / w["calls"][k] * 1e6 for w in windows if w["calls"][k] > 0]
        out[k] = {
            "cpu": median(cpus),
            "calls": median([w["calls"][k] for w in windows]),
            "us_per_call": median(per_call) if per_call else 0.0,
        }
        if k != FLOOR:
            ratios = [w["cpu"][k] / w["cpu"][FLOOR] for w in windows if w["cpu"][FLOOR] > 0]
            out[k]["ratio"] = spread(ratios)
    log(
        f"{count} services at rest, concurrency {concurrency}, {len(windows)} windows of {args.rest_floor_seconds} s: "
        + "; ".join(f"{k} {fmt_rest(out[k])}" for k in envoys)
        + f"; the floor alone {out['floor_alone'] * 100:.2f}% of a core"
    )
    return out


def floor_under_load(args, work: Path, nacos: RNacos, backend: DirectResponseEnvoy, count: int) -> dict:
    """The scale figure of the polling floor: the minimal filter sending the plugin's
    list calls for ``count`` services on its schedule, against the same filter polling
    nothing, requests on the same route and paired as the plugin is with its
    one-service gateway. What polling ``count`` services costs requests through Envoy,
    whichever filter polls."""
    routes, cfg = scale_routes(count)
    poll = floor_poll(nacos, cfg, count)
    quiet = gateway(work, nacos.http_port, backend.ports, {}, routes=routes, minimal_ops="set")
    polling = gateway(work, nacos.http_port, backend.ports, {}, routes=routes, minimal_ops=f"set,poll={poll}")
    wait_until(lambda: polling.stat(f"{NACOS_STAT}.upstream_rq_total") >= count, 60, 0.1, "the floor's first round")
    out = paired_with_reference(args, polling, reference_on(quiet))
    OWNER.stop(polling)
    OWNER.stop(quiet)
    return out


def fmt_rest(o: dict) -> str:
    """One gateway of ``rest_against_floor``."""
    text = f"{o['cpu'] * 100:.2f}% of a core, {o['calls']:.0f} calls/s, {o['us_per_call']:.1f} us per call"
    if "ratio" in o:
        med, lo, hi = o["ratio"]
        text += f", {med:.2f} ({lo:.2f}-{hi:.2f}) of the floor"
    return text


def section_scale(args, res: dict, work: Path) -> None:
    """Pinned as the overhead section is: paired gateways share the gateway CPU."""
    with Pinned() as pinned:
        try:
            _section_scale(args, res, work)
        finally:
            OWNER.stop_all()
    res["scale_pinned"] = pinned.on


def _section_scale(args, res: dict, work: Path) -> None:
    counts = args.scale
    nacos = start_nacos(work / "scale-nacos")
    backend = fast_backend(work, 10)
    jobs = [("svc-0", "127.0.0.1", p) for p in backend.ports]
    for s in range(1, max(counts)):
        for i in range(10):
            jobs.append((f"svc-{s}", f"10.{s // 250}.{s % 250}.{i + 1}", 8080))
    secs, failed = nacos.register_many(jobs)
    res["registration"] = {"count": len(jobs), "seconds": secs, "failed": failed}
    log(f"registered {len(jobs)} persistent instances in {secs:.1f} s ({len(jobs) / secs:.0f}/s), {failed} failed")
    last = nacos.list(f"svc-{max(counts) - 1}")
    log(f"svc-{max(counts) - 1} lists {len(last.get('hosts', []))} instances")

    reference = start_reference(args, work, nacos, backend)
    res["scale"] = {count: scale_run(args, work, nacos, backend, count, reference=reference) for count in counts}
    # Where the time at rest goes with the most services:
    # - more worker VMs (all followers that adopt what the poller publishes);
    # - polling paused after the first round (refreshIntervalMs 600000): what is left of
    #   the per-request cost is the plugin's own request path (rule matching included).
    top = max(counts)
    extra = {}
    for conc in args.scale_follower_concurrency:
        extra[f"concurrency {conc}"] = scale_run(args, work, nacos, backend, top, concurrency=conc, full=False)
    res["rest_floor"] = {
        conc: rest_against_floor(args, work, nacos, backend, top, conc) for conc in args.rest_floor_concurrency
    }
    res["floor_under_load"] = floor_under_load(args, work, nacos, backend, top)
    paused = scale_run(
        args, work, nacos, backend, top, interval_ms=600000, full=False, do_wrk=True, reference=reference
    )
    extra["polling paused"] = paused
    res["scale_extra"] = extra
    OWNER.stop(reference["envoy"])
    OWNER.stop(backend)
    OWNER.stop(nacos)
