#!/usr/bin/env python3
"""Soak test (``make soak``): constant load through Envoy with nacos-instance-guard while
instances churn in Nacos and r-nacos is restarted twice.

Starts r-nacos, three backends and Envoy with the plugin (``plugin.yaml`` converted as
Higress does, ``refreshIntervalMs: 1000``, ``override_host`` routing), all on 127.0.0.1.
Several client threads send a bounded, constant request rate through Envoy, some over
keep-alive connections (closed and reopened now and then), some with a new connection
per request. Every few seconds one backend is deregistered or registered again through
the Nacos OpenAPI (persistent instances), and r-nacos is stopped and started twice,
keeping its data dir. At the end a table reports:

* requests that reached a deregistered backend after the detection window
  (deregistration + refresh interval + 500 ms), from the backends' own hit times: goal 0;
* 5xx answers other than the documented rejections (503, JSON, code
  ``no_healthy_instance``/``instance_deregistered``/``registry_unavailable``): goal 0;
* requests without any HTTP answer (reset, timeout): goal 0;
* the documented rejections, Envoy's RSS at start and end, the plugin counters.

Exit status: 0 every goal met, 1 a goal missed, 2 the run could not be carried out.
Everything started is stopped again, also on Ctrl-C, SIGTERM, an exception or the
overall time limit.

Env: NIG_ENVOY, NIG_RNACOS, NIG_PLUGIN_WASM (see tests/testbed/paths.py for defaults).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.envoy import (  # noqa: E402
    Envoy,
    service_stat,
    settle_request_counters,
    wait_every_worker_routes,
    wait_first_poll,
)
from testbed.higress import plugin_config  # noqa: E402
from testbed.paths import envoy_bin, missing_plugin, plugin_wasm, rnacos_bin  # noqa: E402
from testbed.processes import rss_kb  # noqa: E402
from testbed.rejections import DOCUMENTED_CODES  # noqa: E402
from testbed.rnacos import RNacos  # noqa: E402
from testbed.stack import Stack  # noqa: E402
from testbed.traffic import RateClient  # noqa: E402

REFRESH_MS = 1000
MARGIN_S = 0.5
WINDOW_S = REFRESH_MS / 1000 + MARGIN_S
BACKENDS = ("backend-a", "backend-b", "backend-c")
COUNTERS = ("routed", "rerouted", "rejected", "passed_through", "poll_success", "poll_failure")


class Abort(Exception):
    """Ctrl-C, SIGTERM or the overall time limit."""


def _raise_abort(signum, _frame):
    raise Abort(signal.Signals(signum).name)


# ---------------------------------------------------------------------- helpers


def guard_counters(envoy: Envoy) -> dict:
    settle_request_counters()
    stats = envoy.stats()
    out = {c: int(stats.get(service_stat(c), 0)) for c in COUNTERS}
    out["usable_instances"] = int(stats.get(service_stat("usable_instances"), 0))
    return out


class Churn:
    """Registration state of the backends, every change with its times."""

    def __init__(self, nacos: RNacos, backends: dict, rng: random.Random, t0: float):
        self.nacos = nacos
        self.backends = backends
        self.rng = rng
        self.t0 = t0
        self.registered = set()
        self.events = {n: [] for n in backends}  # name -> [(op, t_sent, t_done)]
        self.mismatches: list = []  # (t, expected ports, listed ports)
        self.errors: list = []
        self.last_change = 0.0

    def log(self, text: str):
        print(f"  t={time.monotonic() - self.t0:6.1f}s  {text}", flush=True)

    def register(self, name: str):
        self._change("register", name, self.nacos.register, self.registered.add)

    def deregister(self, name: str):
        self._change("deregister", name, self.nacos.deregister, self.registered.discard)

    def _change(self, op: str, name: str, call, note):
        t_sent = time.monotonic()
        call(self.backends[name].port)
        self.events[name].append((op, t_sent, time.monotonic()))
        note(name)
        self.last_change = time.monotonic()

    def step(self):
        name = self.rng.choice(sorted(self.backends))
        if name in self.registered and len(self.registered) == 1 and self.rng.random() > 0.35:
            name = self.rng.choice([n for n in self.backends if n not in self.registered])
        op = "deregister" if name in self.registered else "register"
        try:
            getattr(self, op)(name)
        except Exception as e:  # noqa: BLE001 - counted, state re-read from Nacos
            self.errors.append(f"{op} {name}: {e!r}")
            self.log(f"{op} {name} FAILED: {e!r}")
            self.events[name].append(("unknown", time.monotonic(), time.monotonic()))
            self.last_change = time.monotonic()
            return
        self.log(f"{op:10s} {name}  -> registered: {', '.join(sorted(self.registered)) or '(none)'}")
        self.verify(f"after {op} {name}")

    def verify(self, when: str):
        """Nacos must list exactly what we registered (else the counts below mean little)."""
        try:
            hosts = self.nacos.list()["hosts"]
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"list {when}: {e!r}")
            return
        listed = sorted(h["port"] for h in hosts)
        expected = sorted(self.backends[n].port for n in self.registered)
        unusable = [h for h in hosts if not (h.get("healthy") and h.get("enabled", True))]
        if listed != expected or unusable:
            self.mismatches.append((time.monotonic() - self.t0, when, expected, listed, unusable))
            self.log(f"REGISTRY MISMATCH {when}: expected {expected}, listed {listed}, unusable {unusable}")


def forbidden_intervals(events: list) -> list:
    """[(start, end, t_dereg)]: after a deregistration's window until the next register call
    was sent. An ``unknown`` event (failed call) ends an interval and starts none."""
    out = []
    for i, (op, _t_sent, t_done) in enumerate(events):
        if op != "deregister":
            continue
        end = float("inf")
        for op2, t2_sent, _ in events[i + 1 :]:
            if op2 in ("register", "unknown"):
                end = t2_sent
                break
        if t_done + WINDOW_S < end:
            out.append((t_done + WINDOW_S, end, t_done))
    return out


def deregistration_lags(events: list, hits: list) -> list:
    """For each deregistration followed by enough time: last hit after it, in seconds (0 if none)."""
    lags = []
    for i, (op, _t_sent, t_done) in enumerate(events):
        if op != "deregister":
            continue
        end = next((t2 for op2, t2, _ in events[i + 1 :] if op2 in ("register", "unknown")), float("inf"))
        lo, hi = bisect.bisect_right(hits, t_done), bisect.bisect_left(hits, end)
        lags.append(hits[hi - 1] - t_done if hi > lo else 0.0)
    return lags


def registration_delays(events: list, hits: list) -> list:
    """For each registration: seconds from the register call to the first hit after it."""
    out = []
    for i, (op, t_sent, _t_done) in enumerate(events):
        if op != "register" or i == 0:  # the first one is the initial registration
            continue
        end = next((t2 for op2, t2, _ in events[i + 1 :]), float("inf"))
        j = bisect.bisect_right(hits, t_sent)
        if j < len(hits) and hits[j] < end:
            out.append(hits[j] - t_sent)
    return out


# ------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="duration of the load (default 5)")
    ap.add_argument("--rps", type=float, default=200.0, help="total request rate (default 200)")
    ap.add_argument("--clients", type=int, default=8, help="client threads, half keep-alive (default 8)")
    ap.add_argument("--churn-every", type=float, default=3.0, help="seconds between registry changes (default 3)")
    ap.add_argument("--restarts", type=int, default=2, help="r-nacos restarts, spread over the run (default 2)")
    ap.add_argument("--restart-down", type=float, default=2.0, help="seconds r-nacos stays down (default 2)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time based, printed)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) even when every goal is met")
    args = ap.parse_args()
    if args.minutes <= 0 or args.rps <= 0 or args.clients < 1:
        ap.error("--minutes, --rps and --clients must be positive")
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    duration = args.minutes * 60

    if missing_plugin():
        print(missing_plugin(), file=sys.stderr)
        return 2

    # Bounded in time: the load, setup and teardown, whatever happens.
    signal.signal(signal.SIGINT, _raise_abort)
    signal.signal(signal.SIGTERM, _raise_abort)
    signal.signal(signal.SIGALRM, _raise_abort)
    signal.alarm(int(duration + 180 + args.restarts * 60))

    tmp = Path(tempfile.mkdtemp(prefix="nig-soak-"))
    print(
        f"soak: {args.minutes:g} min, {args.rps:g} rps over {args.clients} clients, churn every "
        f"{args.churn_every:g} s, {args.restarts} r-nacos restarts, seed {seed}; work dir {tmp}"
    )
    print(f"envoy {envoy_bin()}\nr-nacos {rnacos_bin()}\nplugin {plugin_wasm()}", flush=True)

    stack = Stack(tmp)
    envoy: Envoy | None = None
    clients: list = []
    stop = threading.Event()
    ok = False
    try:
        nacos = stack.start_registry(BACKENDS, register=[])
        backends = stack.backends
        t0 = time.monotonic()
        churn = Churn(nacos, backends, random.Random(seed), t0)
        for n in BACKENDS:
            churn.register(n)
        churn.verify("initial registration")
        envoy = stack.start_gateway(plugin_config({"refreshIntervalMs": REFRESH_MS}), mode="override_host")
        wait_first_poll(envoy)
        wait_every_worker_routes(envoy, timeout=15)
        print(
            f"r-nacos :{nacos.http_port}, Envoy :{envoy.port} (admin :{envoy.admin_port}), backends "
            + ", ".join(f"{n} :{b.port}" for n, b in backends.items()),
            flush=True,
        )

        envoy_pid = envoy.pid
        rss_start = rss_kb(envoy_pid)
        rss_samples = [rss_start]
        c_start = guard_counters(envoy)
        for b in backends.values():
            b.reset()

        rate = args.rps / args.clients
        clients = [
            RateClient(i, envoy.port, rate, keepalive=(i % 2 == 0), stop=stop, seed=seed * 100 + i)
            for i in range(args.clients)
        ]
        t_load = time.monotonic()
        churn.t0 = t_load
        for c in clients:
            c.start()
        churn.log("load started")

        t_end = t_load + duration
        restart_at = [t_load + duration * (k + 1) / (args.restarts + 1) for k in range(args.restarts)]
        restarts = []  # (t_stop, t_started)
        next_churn = t_load + args.churn_every
        next_report = t_load + 15
        while True:
            now = time.monotonic()
            if now >= t_end:
                break
            if restart_at and now >= restart_at[0]:
                restart_at.pop(0)
                # let the plugin see the last change first: its snapshot is what serves while down
                while time.monotonic() < churn.last_change + WINDOW_S + 0.5:
                    time.sleep(0.05)
                t_stop = time.monotonic()
                churn.log(f"r-nacos stop (restart {len(restarts) + 1} of {args.restarts}, data dir kept)")
                nacos.stop()
                time.sleep(args.restart_down)
                nacos.start()
                t_up = time.monotonic()
                restarts.append((t_stop, t_up))
                churn.log(f"r-nacos up again after {t_up - t_stop:.1f} s")
                churn.verify(f"after restart {len(restarts)}")
                next_churn = max(next_churn, time.monotonic() + args.churn_every)
                continue
            if now >= next_churn:
                churn.step()
                next_churn += args.churn_every
                continue
            if now >= next_report:
                next_report += 15
                rss_samples.append(rss_kb(envoy_pid))
                n = sum(len(c.records) for c in clients)
                print(
                    f"  t={now - t_load:6.1f}s  {n} requests ({n / (now - t_load):.0f} rps), "
                    f"Envoy RSS {rss_samples[-1] / 1024:.1f} MB",
                    flush=True,
                )
            time.sleep(min(0.05, max(0.0, min(t_end, next_churn, next_report) - time.monotonic())))

        stop.set()
        for c in clients:
            c.join(timeout=15)
        t_stopped = time.monotonic()
        churn.log("load stopped")
        time.sleep(0.2)
        envoy_alive = envoy.proc is not None and envoy.proc.alive()
        rss_end = rss_kb(envoy_pid)
        rss_samples.append(rss_end)
        c_end = guard_counters(envoy) if envoy_alive else {k: -1 for k in c_start}

        ok = report(
            args,
            seed,
            clients,
            backends,
            churn,
            restarts,
            envoy,
            envoy_alive,
            times=(t_load, t_stopped),
            rss=(rss_start, rss_end, rss_samples),
            counters=(c_start, c_end),
        )
        return 0 if ok else 1
    except Abort as e:
        print(f"\nsoak aborted ({e}); stopping everything", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # noqa: BLE001
        print(f"\nsoak failed: {e!r}", file=sys.stderr, flush=True)
        if envoy is not None and envoy.proc is not None:
            print("----- envoy log tail -----\n" + envoy.log_text()[-3000:], file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.alarm(0)
        stop.set()
        for c in clients:
            c.join(timeout=15)
        stack.owner.stop_all()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", flush=True)


def report(args, seed, clients, backends, churn, restarts, envoy, envoy_alive, times, rss, counters) -> bool:
    t_load, t_stopped = times
    rss_start, rss_end, rss_samples = rss
    c_start, c_end = counters
    records = sorted(r for c in clients for r in c.records)
    total = len(records)
    ok200 = [r for r in records if r[2] == 200]
    bad200 = [r for r in ok200 if r[3] not in backends]
    documented = collections.Counter(r[3] for r in records if r[2] == 503 and r[3] in DOCUMENTED_CODES)
    other5xx = [r for r in records if 500 <= r[2] <= 599 and not (r[2] == 503 and r[3] in DOCUMENTED_CODES)]
    transport = [r for r in records if r[2] == -1]
    other = [r for r in records if r[2] not in (-1, 200) and not 500 <= r[2] <= 599]
    latencies = sorted(r[1] - r[0] for r in records if r[2] != -1)

    # requests that reached a deregistered backend after the detection window
    late = []  # (name, t_hit, seconds after deregistration)
    lags, reg_delays = [], []
    for name, b in backends.items():
        with b.lock:
            hits = sorted(b.hit_times)
        for start, end, t_dereg in forbidden_intervals(churn.events[name]):
            lo, hi = bisect.bisect_left(hits, start), bisect.bisect_left(hits, end)
            late += [(name, h, h - t_dereg) for h in hits[lo:hi]]
        lags += deregistration_lags(churn.events[name], hits)
        reg_delays += registration_delays(churn.events[name], hits)
    n_dereg = sum(1 for ev in churn.events.values() for e in ev if e[0] == "deregister")
    n_reg = sum(1 for ev in churn.events.values() for e in ev if e[0] == "register") - len(backends)
    backend_hits = sum(b.hits for b in backends.values())

    # Envoy log: VM failures and the plugin's own warnings
    log = envoy.log_text() if envoy is not None else ""
    vm_errors = [
        ln
        for ln in log.splitlines()
        if (
            "wasm" in ln
            and (
                "panicked" in ln
                or "Function: " in ln
                and "failed" in ln
                or "Uncaught" in ln
                or "RuntimeError" in ln
                or "[critical]" in ln
            )
        )
    ]
    plugin_warnings = collections.Counter(
        ln.split("nacos-instance-guard: ")[-1][:90]
        for ln in log.splitlines()
        if "[warning][wasm]" in ln and "nacos-instance-guard" in ln
    )

    secs = t_stopped - t_load
    rows = [
        ("duration of the load", f"{secs:.0f} s", "", None),
        ("total requests", f"{total} ({total / secs:.0f} rps)", "", None),
        ("  200 from a backend", f"{len(ok200)} (backends counted {backend_hits} hits)", "", None),
        ("registry changes", f"{n_dereg} deregistrations, {n_reg} re-registrations", "", None),
        (
            "r-nacos restarts (data kept)",
            f"{len(restarts)}, down " + ", ".join(f"{up - st:.1f} s" for st, up in restarts),
            "",
            None,
        ),
        (f"reached a deregistered instance > {WINDOW_S:.1f} s after", str(len(late)), "0", len(late) == 0),
        (
            "  deregistration -> last hit (max, median)",
            f"{max(lags) * 1000:.0f} ms, {statistics.median(lags) * 1000:.0f} ms" if lags else "-",
            "",
            None,
        ),
        (
            "  re-registration -> first hit (max, median)",
            f"{max(reg_delays) * 1000:.0f} ms, {statistics.median(reg_delays) * 1000:.0f} ms" if reg_delays else "-",
            "",
            None,
        ),
        ("5xx other than documented rejections", str(len(other5xx)), "0", len(other5xx) == 0),
        ("no HTTP answer (reset, timeout)", str(len(transport)), "0", len(transport) == 0),
        ("200 with an unknown body, other statuses", f"{len(bad200)}, {len(other)}", "0", not bad200 and not other),
        (
            "documented rejections (503 JSON)",
            f"{sum(documented.values())} "
            + (("(" + ", ".join(f"{k} {v}" for k, v in sorted(documented.items())) + ")") if documented else ""),
            "",
            None,
        ),
        (
            "latency p50 / p99 / max",
            f"{latencies[len(latencies) // 2] * 1000:.1f} / "
            f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} / {latencies[-1] * 1000:.0f} ms"
            if latencies
            else "-",
            "",
            None,
        ),
        (
            "Envoy VmRSS start -> end (max)",
            f"{rss_start / 1024:.1f} MB -> {rss_end / 1024:.1f} MB ({max(x for x in rss_samples if x) / 1024:.1f})"
            if rss_start and rss_end
            else "-",
            "",
            None,
        ),
        (
            "Envoy alive at the end, wasm VM errors in log",
            f"{'yes' if envoy_alive else 'NO'}, {len(vm_errors)}",
            "yes, 0",
            envoy_alive and not vm_errors,
        ),
        (
            "registry mismatches (Nacos list != expected)",
            str(len(churn.mismatches)),
            "0",
            not churn.mismatches and not churn.errors,
        ),
    ]
    for c in COUNTERS:
        rows.append(
            (f"plugin {c} (start -> end: delta)", f"{c_start[c]} -> {c_end[c]}: +{c_end[c] - c_start[c]}", "", None)
        )
    accounted = sum(c_end[c] - c_start[c] for c in ("routed", "rejected", "passed_through"))
    answered = total - len(transport)
    rows.append(("  routed+rejected+passed_through vs answered", f"{accounted} vs {answered}", "", None))
    rows.append(
        (
            "  plugin rejected vs documented rejections",
            f"{c_end['rejected'] - c_start['rejected']} vs {sum(documented.values())}",
            "",
            None,
        )
    )

    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    print(f"\n== soak summary (seed {seed}) ==")
    print(f"| {'measure':{w1}} | {'value':{w2}} | goal   | ok   |")
    print(f"|{'-' * (w1 + 2)}|{'-' * (w2 + 2)}|--------|------|")
    for name, value, goal, good in rows:
        mark = "" if good is None else ("yes" if good else "NO")
        print(f"| {name:{w1}} | {value:{w2}} | {goal:6} | {mark:4} |")

    if plugin_warnings:
        print("\nplugin warnings in the Envoy log:")
        for text, n in plugin_warnings.most_common(10):
            print(f"  {n:4d} x {text}")
    details = [
        ("late hits (backend, seconds after deregistration)", [(n, f"{lag:.3f}") for n, _, lag in late]),
        ("5xx other than documented", [(r[2], r[3]) for r in other5xx]),
        ("no HTTP answer (t, reused keep-alive, error)", [(f"{r[0] - t_load:.1f}", r[4], r[3]) for r in transport]),
        ("unexpected answers", [(r[2], r[3]) for r in bad200 + other]),
        ("registry mismatches", churn.mismatches),
        ("registry call errors", churn.errors),
        ("wasm VM errors", vm_errors),
    ]
    for title, items in details:
        if items:
            print(f"\n{title}: {len(items)}, first ones:")
            for it in items[:10]:
                print(f"  {it}")

    goals = [good for _, _, _, good in rows if good is not None]
    ok = all(goals)
    print(f"\nsoak {'PASSED' if ok else 'FAILED'}: {sum(goals)} of {len(goals)} goals met", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
