"""Push (``nacos.push``, issue 13) in the bench: detection time by push beside polling
(section ``detection``), and the load push leaves on Nacos, HTTP list calls and gRPC
connections, beside polling (section ``load``).

The push delay is r-nacos's own: with ``RUST_LOG`` raised for two targets r-nacos logs
the answer to every HTTP call (``actix_web::middleware::logger``, when the answer is
sent) and every HTTP/2 frame it sends or receives (``h2::codec::framed_write`` /
``framed_read``), each with a microsecond timestamp. A pushed list is a DATA frame that
r-nacos sends on the bi-stream unprompted, i.e. on a stream from which it received no
DATA since the DELETE (a unary answer follows the client's request on its stream). The
push delay of a trial is from the DELETE's log line to that frame's.
"""

from __future__ import annotations

import datetime
import random
import re
import statistics
import time
from pathlib import Path

from gateways import NACOS_STAT, OWNER, gateway, wait_first_snapshot
from measure import log, pct, process_run_seconds
from scale import scale_routes

from testbed.backends import Backend
from testbed.envoy import NACOS_GRPC_CLUSTER, Envoy
from testbed.higress import deep_merge, plugin_config
from testbed.rnacos import RNacos
from testbed.traffic import Traffic
from testbed.waiting import wait_until

GRPC_STAT = f"cluster.{NACOS_GRPC_CLUSTER}"
# The safety poll of the detection trials: far longer than a trial, so every change the
# gateway obeys came by push (checked: poll_success must not move within a trial).
DETECT_SAFETY_MS = 600_000
# What r-nacos must log for the push delay (see the module's docstring).
RNACOS_PUSH_LOG = "warn,actix_web::middleware::logger=info,h2::codec::framed_write=debug,h2::codec::framed_read=debug"
# r-nacos checks its delayed pushes every 500 ms: the random phase covers two checks.
RNACOS_TICK_S = 0.5
# Goal: detection p99 <= the push delay + this.
PUSH_GOAL_MS = 100.0

_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ [+-]\d\d:\d\d) +(\w+) +([\w:]+)\] (.*)$")
_FRAME = re.compile(r"^(send|received) frame=Data \{ stream_id: StreamId\((\d+)\)")


def push_settings(safety_ms: int | None = None) -> dict:
    push = {"grpcCluster": NACOS_GRPC_CLUSTER}
    if safety_ms is not None:
        push["safetyIntervalMs"] = safety_ms
    return {"nacos": {"push": push}}


def push_gateway(work: Path, nacos: RNacos, backend_ports, cfg: dict, concurrency: int, **envoy) -> Envoy:
    """A gateway with the Nacos gRPC cluster; ``cfg`` must have push on."""
    return gateway(
        work, nacos.http_port, backend_ports, cfg, concurrency=concurrency, nacos_grpc_port=nacos.grpc_port, **envoy
    )


def wait_pushed(envoy: Envoy, service: str, timeout: float = 30.0) -> None:
    """The poller's link is up and polling has settled: no poll of ``service`` for 1 s."""
    wait_until(lambda: envoy.guard_stat("push_streams", service=None) == 1, timeout, 0.05, "a push stream")
    seen = [(time.monotonic(), envoy.guard_stat("poll_success", service))]

    def settled():
        now, polls = time.monotonic(), envoy.guard_stat("poll_success", service)
        if polls != seen[-1][1]:
            seen.append((now, polls))
        return now - seen[-1][0] >= 1.0

    wait_until(settled, timeout, 0.05, "polling replaced by push")


def wait_subscribed(e: Envoy, count: int, timeout: float = 120.0) -> None:
    """The link is up and each of ``count`` services pushed once (both servers push a
    connection's first subscription its list), then 5 s for the polls before it to end.
    Safety polls go on, spread over the interval, so polls never stop for long."""
    wait_until(lambda: e.guard_stat("push_streams", service=None) == 1, timeout, 0.05, "a push stream")
    wait_until(lambda: e.guard_stat("pushes", service=None) >= count, timeout, 0.2, f"{count} subscriptions answered")
    time.sleep(5)


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f %z").timestamp()


def rnacos_push_delay(log_text: str, port: int) -> tuple:
    """(push delay in ms, stream id) from r-nacos's log of one trial: from the answer to
    the DELETE of ``port`` to the first DATA frame r-nacos sent unprompted after it;
    (None, None) if either is missing."""
    t_delete, prompted = None, set()
    for line in log_text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stamp, _level, target, msg = m.groups()
        if t_delete is None:
            if target == "actix_web::middleware::logger" and '"DELETE /nacos/v1/ns/instance?' in msg:
                if f"&port={port}&" in msg:
                    t_delete = _stamp(stamp)
            continue
        f = _FRAME.match(msg)
        if not f:
            continue
        direction, stream = f.group(1), int(f.group(2))
        if direction == "received":
            prompted.add(stream)
        elif stream not in prompted:
            return (_stamp(stamp) - t_delete) * 1000.0, stream
    return None, None


# ------------------------------------------------------------------ detection


def detection_push(args, work: Path) -> dict:
    """Deregister instance A of {A, B} under a steady stream, the gateway taking lists by
    push (safety poll 600 s): deregistration -> last request reaching A; r-nacos's push
    delay from its log; the arrival of the push at the gateway (``pushes`` sampled every
    ~2 ms). A trial in which ``poll_success`` moved is invalid and left out."""
    nacos = OWNER.add(RNacos(work / "detect-push-nacos", extra_env={"RUST_LOG": RNACOS_PUSH_LOG}))
    nacos.start()
    a = OWNER.add(Backend("backend-a", single_write=True))
    b = OWNER.add(Backend("backend-b", single_write=True))
    for be in (a, b):
        nacos.register(be.port)
    cfg = plugin_config(push_settings(DETECT_SAFETY_MS))
    envoy = push_gateway(work, nacos, [a.port, b.port], cfg, args.detect_concurrency)
    wait_first_snapshot(envoy, "/demo", "demo")
    wait_pushed(envoy, "demo")
    window = args.push_window  # watch this long after the DELETE for the push
    polled = "wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.demo.poll_success"
    pushes = "wasmcustom.nacos_guard.pushes"
    stream = Traffic(envoy, "/demo", args.stream_period, fixed_rate=True).start()
    rng = random.Random(13)
    trials = []  # one dict per trial
    reconnects0 = envoy.guard_stat("push_reconnects", service=None)
    try:
        for _trial in range(args.trials_push):
            polls0 = envoy.stat(polled)
            t_reg = time.monotonic()
            wait_until(lambda t_reg=t_reg: (a.last_hit() or 0) > t_reg, 10, 0.005, "A receives traffic (pushed)")
            time.sleep(rng.uniform(0, 2 * RNACOS_TICK_S))  # a random phase against r-nacos's push checks
            recent = (a.last_hit() or 0) >= time.monotonic() - 0.1
            pushes0 = envoy.stat(pushes)
            offset = nacos.log_path.stat().st_size
            nacos.deregister(a.port)
            t_answer = time.monotonic()  # r-nacos answered the DELETE
            t_push = None
            while time.monotonic() < t_answer + window and (t_push is None or time.monotonic() < t_push + 0.5):
                if t_push is None and envoy.stat(pushes) > pushes0:
                    t_push = time.monotonic()
                time.sleep(0.002 if t_push is None else 0.05)
            last = a.last_hit() or 0
            polls1 = envoy.stat(polled)
            with open(nacos.log_path, errors="replace") as f:
                f.seek(offset)
                delay, stream_id = rnacos_push_delay(f.read(), a.port)
            lag = max(0.0, last - t_answer) * 1000
            trials.append(
                {
                    "lag": lag,
                    "valid": polls1 == polls0,
                    "pushed": t_push is not None,
                    "to_push": (t_push - t_answer) * 1000 if t_push is not None else None,
                    "after_push": max(0.0, last - t_push) * 1000 if t_push is not None else None,
                    "delay": delay,
                    "stream": stream_id,
                    "recent_traffic": recent,
                    "censored": lag >= window * 1000 - 50,
                }
            )
            nacos.register(a.port)
    finally:
        stream.stop()
    o = summarize_push_trials(trials)
    o.update(
        requests=stream.answered,
        errors=stream.errors,
        safety_ms=DETECT_SAFETY_MS,
        reconnects=envoy.guard_stat("push_reconnects", service=None) - reconnects0,
        push_failures=envoy.guard_stat("push_failures", service=None),
        grpc_cx=envoy.stat(f"{GRPC_STAT}.upstream_cx_active"),
    )
    log(
        f"detection by push: {o['trials']} valid trials of {len(trials)} ({o['invalid']} with a poll, "
        f"{o['no_push']} without a push), p50 {o['p50']:.0f} ms, p99 {o['p99']:.0f} ms, max {o['max']:.0f} ms; "
        f"r-nacos push delay (its log) p50 {o['delay_p50']:.0f} p99 {o['delay_p99']:.0f} max {o['delay_max']:.0f} ms "
        f"({o['delay_missing']} not found); DELETE -> gateway's pushes counter p50 {o['to_push_p50']:.0f} "
        f"p99 {o['to_push_p99']:.0f} ms; detection - push delay per trial p50 {o['excess_p50']:.0f} "
        f"p99 {o['excess_p99']:.0f} ms; goal p99 <= {o['goal_ms']:.0f} ms: {'met' if o['met'] else 'missed'} "
        f"(stream: {o['requests']} requests, {o['errors']} errors; reconnects {o['reconnects']}, "
        f"push failures {o['push_failures']})"
    )
    for item in (envoy, a, b, nacos):
        OWNER.stop(item)
    return o


def summarize_push_trials(trials: list) -> dict:
    valid = [t for t in trials if t["valid"] and t["pushed"]]
    lags = [t["lag"] for t in valid]
    delays = [t["delay"] for t in valid if t["delay"] is not None]
    to_push = [t["to_push"] for t in valid]
    after_push = [t["after_push"] for t in valid]
    excess = [t["lag"] - t["delay"] for t in valid if t["delay"] is not None]
    goal = pct(delays, 99) + PUSH_GOAL_MS
    p99 = pct(lags, 99)
    return {
        "trials": len(valid),
        "all_trials": trials,
        "invalid": sum(not t["valid"] for t in trials),
        "no_push": sum(t["valid"] and not t["pushed"] for t in trials),
        "censored": sum(t["censored"] for t in valid),
        "no_traffic": sum(not t["recent_traffic"] for t in valid),
        "lags_ms": lags,
        "p50": pct(lags, 50),
        "p99": p99,
        "max": max(lags, default=float("nan")),
        "mean": statistics.mean(lags) if lags else float("nan"),
        "delays_ms": delays,
        "delay_p50": pct(delays, 50),
        "delay_p99": pct(delays, 99),
        "delay_max": max(delays, default=float("nan")),
        "delay_missing": len(valid) - len(delays),
        "streams": sorted({t["stream"] for t in valid if t["stream"] is not None}),
        "to_push_ms": to_push,
        "to_push_p50": pct(to_push, 50),
        "to_push_p99": pct(to_push, 99),
        "after_push_ms": after_push,
        "after_push_p50": pct(after_push, 50),
        "after_push_p99": pct(after_push, 99),
        "excess_ms": excess,
        "excess_p50": pct(excess, 50),
        "excess_p99": pct(excess, 99),
        "goal_ms": goal,
        "met": bool(lags) and bool(delays) and p99 <= goal,
    }


# ----------------------------------------------------------------------- load


def steady_push_window(envoys: dict, seconds: float, services: dict) -> dict:
    """Over one window of ``seconds``, for each gateway (name -> Envoy): HTTP calls to the
    Nacos cluster per guarded service per minute (``upstream_rq_total``), the gRPC
    cluster's ``upstream_cx_active`` sampled every ~0.5 s (min, max), new gRPC
    connections, pushes and reconnects, and the gateway's CPU (no requests are sent).
    ``services``: name -> guarded services."""
    names = ("pushes", "push_reconnects", "push_failures")

    def snap(e):
        return {
            "rq": e.stat(f"{NACOS_STAT}.upstream_rq_total"),
            "cx_total": e.stat(f"{GRPC_STAT}.upstream_cx_total"),
            **{n: e.guard_stat(n, service=None) for n in names},
        }

    before = {k: snap(e) for k, e in envoys.items()}
    cpu0 = {k: process_run_seconds(e.pid) for k, e in envoys.items()}
    cx = {k: [] for k in envoys}
    t0 = time.monotonic()
    while time.monotonic() < t0 + seconds:
        for k, e in envoys.items():
            cx[k].append(e.stat(f"{GRPC_STAT}.upstream_cx_active"))
        time.sleep(0.5)
    dt = time.monotonic() - t0
    out = {}
    for k, e in envoys.items():
        after = snap(e)
        d = {n: after[n] - before[k][n] for n in after}
        out[k] = {
            "services": services[k],
            "seconds": dt,
            "list_calls": d["rq"],
            "per_service_per_minute": d["rq"] / services[k] / dt * 60.0,
            # no requests in the window: the gateway's CPU at rest, push and safety polls
            "cpu_at_rest": (process_run_seconds(e.pid) - cpu0[k]) / dt,
            "grpc_cx_min": min(cx[k]),
            "grpc_cx_max": max(cx[k]),
            "grpc_cx_samples": len(cx[k]),
            "grpc_cx_new": d["cx_total"],
            "pushes": d["pushes"],
            "reconnects": d["push_reconnects"],
            "push_failures": d["push_failures"],
            "vms": int(next(iter(e.stats(r"^wasm\.envoy\.wasm\.runtime\.v8\.active$").values()), 0)),
            "concurrency": e.concurrency,
        }
    return out


def fmt_push_load(name: str, o: dict) -> str:
    return (
        f"push, {name}: {o['list_calls']} HTTP list calls in {o['seconds']:.0f} s = "
        f"{o['per_service_per_minute']:.2f} per service per minute ({o['services']} services); gRPC connections "
        f"{o['grpc_cx_min']}..{o['grpc_cx_max']} ({o['grpc_cx_samples']} samples, {o['grpc_cx_new']} new); "
        f"{o['pushes']} pushes, {o['reconnects']} reconnects, {o['push_failures']} push failures; {o['vms']} VMs; "
        f"CPU at rest {o['cpu_at_rest'] * 100:.1f}% of a core"
    )


def load_push(args, work: Path, nacos: RNacos, backend) -> dict:
    """Push at its default safety interval: one gateway each at --concurrency 1, 2, 4
    (started together, measured over one common window), then one gateway guarding
    ``args.push_services`` services, each with one instance."""
    cfg = plugin_config(push_settings())
    safety = cfg["nacos"]["push"].get("safetyIntervalMs", 30_000)  # unset: the plugin's default, 30 s
    envoys = {}
    for conc in (1, 2, 4):
        envoys[conc] = push_gateway(work, nacos, backend.ports, cfg, conc)
    for e in envoys.values():
        wait_first_snapshot(e, "/demo", "demo")
        wait_pushed(e, "demo")
    res = steady_push_window(envoys, args.push_load_window, {k: 1 for k in envoys})
    for conc, o in res.items():
        log(fmt_push_load(f"concurrency {conc}", o))
    for e in envoys.values():
        OWNER.stop(e)

    count = args.push_services
    jobs = [("svc-0", "127.0.0.1", backend.ports[0])]
    jobs += [(f"svc-{s}", f"10.{s // 250}.{s % 250}.1", 8080) for s in range(1, count)]
    secs, failed = nacos.register_many(jobs)
    log(f"registered {len(jobs)} services, one instance each, in {secs:.1f} s, {failed} failed")
    routes, rules_cfg = scale_routes(count)
    big_cfg = deep_merge(rules_cfg, push_settings())
    e = push_gateway(work, nacos, backend.ports, big_cfg, 1, routes=routes)
    regex = r"^wasmcustom\.nacos_guard\.service\.public\.DEFAULT_GROUP\.svc-\d+\.poll_success$"
    wait_until(
        lambda: sum(v >= 1 for v in e.stats(regex).values()) == count, 120, 0.1, f"first poll of all {count} services"
    )
    wait_first_snapshot(e, "/svc-0", "svc-0", timeout=60)
    wait_subscribed(e, count)
    big = steady_push_window({count: e}, args.push_load_window, {count: count})[count]
    big["registration_s"], big["registration_failed"] = secs, failed
    # the subscriptions hold: a change to the last service arrives by push
    last, pushes0 = f"svc-{count - 1}", e.guard_stat("pushes", service=None)
    nacos.register(8080, service=last, ip=jobs[-1][1], weight=2.0)
    t0 = time.monotonic()
    try:
        wait_until(lambda: e.guard_stat("pushes", service=None) > pushes0, 5, 0.005, f"a push for {last}")
        big["last_service_push_ms"] = (time.monotonic() - t0) * 1000
    except TimeoutError:
        big["last_service_push_ms"] = None
    log(
        fmt_push_load(f"{count} services, concurrency 1", big)
        + f"; a change to {last} pushed after "
        + (f"{big['last_service_push_ms']:.0f} ms" if big["last_service_push_ms"] is not None else "NO push in 5 s")
    )
    OWNER.stop(e)
    return {"safety_ms": safety, "by_concurrency": res, "services": big}
