"""Measuring: wrk runs, perf profiles, percentiles and the machine's description."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from gateways import pin

from testbed.envoy import Envoy
from testbed.paths import envoy_bin


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------ wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, seconds: int, connections: int = 32, threads: int = 1, extra: list | None = None) -> dict:
    out = subprocess.run(
        [*pin("load"), "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", *(extra or []), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    text = out.stdout
    res = {"raw": text}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    res["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        res[f"p{pct}"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in", text)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return res


def perf_profile(pid: int, seconds: float) -> dict | None:
    """Where the Envoy process spends its time, by thread and by code: ``perf record``
    at 499 Hz; returns {thread: {"wasm": %, "envoy": %, "kernel": %, "other": %}} of all
    samples, or None when perf is missing or not allowed. Wasm code is V8's JIT output
    (``[JIT] tid N``); ``envoy`` is Envoy's own (stripped) code, host calls included."""
    if shutil.which("perf") is None:
        return None
    data = Path(tempfile.mkdtemp(prefix="nig-perf-")) / "perf.data"
    try:
        rec = subprocess.run(
            ["perf", "record", "-F", "499", "-o", str(data), "-p", str(pid), "--", "sleep", str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if rec.returncode != 0 or not data.exists():
            return None
        rep = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", "comm,dso"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)
    out: dict = {}
    for line in rep.stdout.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+(.+?)\s*$", line)
        if not m:
            continue
        share, comm, dso = float(m.group(1)), m.group(2), m.group(3)
        kind = (
            "wasm"
            if dso.startswith("[JIT]")
            else "envoy"
            if dso == "envoy"
            else "kernel"
            if dso.startswith("[kernel")
            else "other"
        )
        thread = "worker" if comm.startswith("wrk:worker") else "main" if comm == "envoy" else comm
        d = out.setdefault(thread, {"wasm": 0.0, "envoy": 0.0, "kernel": 0.0, "other": 0.0})
        d[kind] += share
    return out or None


def wrk_profiled(
    envoy: Envoy, url: str, seconds: int, connections: int, profile: bool, extra: list | None = None
) -> dict:
    """wrk, with a perf profile of the gateway over the middle of the run when asked."""
    if not profile or seconds < 6:
        return wrk(url, seconds, connections, extra=extra)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(wrk(url, seconds, connections, extra=extra)))
    t.start()
    time.sleep(2)
    prof = perf_profile(envoy.pid, seconds - 4)
    t.join()
    if prof:
        out["profile"] = prof
    return out


def fmt_profile(prof: dict | None) -> str:
    if not prof:
        return "no profile"
    parts = []
    for thread in ("worker", "main"):
        d = prof.get(thread)
        if d and sum(d.values()) >= 1.0:
            total = sum(d.values())
            parts.append(
                f"{thread} thread {total:.0f}% of samples (Wasm {d['wasm']:.1f}%, Envoy {d['envoy']:.1f}%, "
                f"kernel {d['kernel']:.1f}%)"
            )
    return "; ".join(parts)


# ------------------------------------------------------------------ CPU time


def _schedstat_seconds(path: Path) -> float:
    """The time a thread ran on a CPU, from its ``schedstat`` (nanoseconds)."""
    return int(path.read_text().split()[0]) / 1e9


def process_run_seconds(pid: int) -> float:
    """Time every live thread of ``pid`` ran on a CPU, to the nanosecond (the
    scheduler's own account): at a few hundred ms per window, ``stat``'s 10 ms ticks
    would be a few per cent of noise."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += _schedstat_seconds(task / "schedstat")
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


def cpu_at_rest(envoys: dict, seconds: float) -> dict:
    """Each Envoy's (name -> Envoy) CPU over one window of ``seconds`` without
    requests, in CPU-seconds per second: what ``measured_round`` takes off."""
    before = {name: process_run_seconds(e.pid) for name, e in envoys.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return {name: (process_run_seconds(e.pid) - before[name]) / dt for name, e in envoys.items()}


def thread_run_seconds(pid: int, tid: int) -> float:
    """Time thread ``tid`` of ``pid`` ran on a CPU, to the nanosecond."""
    return _schedstat_seconds(Path(f"/proc/{pid}/task/{tid}/schedstat"))


def involuntary_switches(pid: int, tid: int) -> int:
    """How often the scheduler took the CPU from thread ``tid`` of ``pid`` (a sign of
    other work on its CPU)."""
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def thread_ids(pid: int, prefix: str) -> list:
    """The threads of ``pid`` whose name starts with ``prefix`` (Envoy names its
    workers ``wrk:worker_<i>``)."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
        try:
            if (task / "comm").read_text().strip().startswith(prefix):
                out.append(int(task.name))
        except OSError:
            continue
    return out


REQUESTS_STAT = "http.gateway.downstream_rq_total"


def measured_round(args, loads: dict, seconds: int, at_rest: dict | None = None) -> dict:
    """Every gateway of ``loads`` (variant: (envoy, worker tid, path, extra wrk args,
    routed counter)) loaded by its own wrk at the same time for ``seconds``, with each
    gateway's CPU time and requests around the common window, its CPU at rest
    (``at_rest``, CPU-seconds per second) taken off; {variant: figures}."""
    before = {}
    for name, (envoy, tid, _, _, routed) in loads.items():
        before[name] = (
            envoy.stat(REQUESTS_STAT),
            envoy.stat(routed) if routed else 0,
            involuntary_switches(envoy.pid, tid),
            process_run_seconds(envoy.pid),
            thread_run_seconds(envoy.pid, tid),
        )
    started = time.monotonic()
    results: dict = {}

    def load(name, envoy, path, extra):
        results[name] = wrk(f"http://127.0.0.1:{envoy.port}{path}", seconds, args.connections, extra=extra)

    threads = [
        threading.Thread(target=load, args=(name, envoy, path, extra))
        for name, (envoy, _, path, extra, _) in loads.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.1)  # requests wrk abandoned at its deadline finish
    window = time.monotonic() - started
    out = {}
    for name, (envoy, tid, _, _, routed) in loads.items():
        n0, d0, s0, c0, w0 = before[name]
        c1, w1 = process_run_seconds(envoy.pid), thread_run_seconds(envoy.pid, tid)
        rest = (at_rest or {}).get(name, 0.0) * window
        c1 -= rest  # the worker thread stays as measured
        served = envoy.stat(REQUESTS_STAT) - n0
        r = results[name]
        r.pop("raw", None)
        r.update(
            served=served,
            cpu_s=c1 - c0,
            worker_cpu_s=w1 - w0,
            cpu_us=(c1 - c0) * 1e6 / max(served, 1),
            worker_us=(w1 - w0) * 1e6 / max(served, 1),
            preempted=involuntary_switches(envoy.pid, tid) - s0,
        )
        if routed:
            r["decided"] = envoy.stat(routed) - d0
        out[name] = r
    return out


# --------------------------------------------------------------------- helpers


def pct(values: list, p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> tuple:
    """(median, min, max) of ``xs``."""
    return (median(xs), min(xs), max(xs)) if xs else (float("nan"),) * 3


def fmt_kb(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB" if abs(kb) >= 1024 else f"{kb:.0f} KiB"


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    try:
        ev = subprocess.run([envoy_bin(), "--version"], capture_output=True, text=True).stdout
        m = re.search(r"version: \S+/([\d.]+)/", ev)
        envoy_version = m.group(1) if m else ev.strip().splitlines()[-1]
    except OSError:
        envoy_version = "unknown"
    try:
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    except OSError:
        wrk_version = "missing"
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": nproc,
        "cpu": model,
        "mem": fmt_kb(mem_kb),
        "kernel": platform.release(),
        "envoy": envoy_version,
        "wrk": wrk_version,
    }
