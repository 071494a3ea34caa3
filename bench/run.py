#!/usr/bin/env python3
"""`make bench`: the cost of nacos-instance-guard, measured side by side in one run.

Sections (each also selectable with ``--only``):

  sizes      sizes of build/plugin.wasm, build/plugin-envoy.wasm and the minimal filter,
             and the criterion micro-benchmarks (``cargo bench --bench hot_paths``)
  overhead   wrk -t1 -c32 against the same Envoy (override_host routing, concurrency 1)
             without a Wasm filter, with a minimal filter that only sets one header
             (bench/minimal-filter), and with the plugin deciding every request; three
             more variants split the plugin's cost; rounds alternate the variants
  load       Nacos requests per guarded service per interval at concurrency 1, 2, 4
  detection  from r-nacos answering a deregistration to the last request reaching the
             instance, at refreshIntervalMs 1000 and 200, under a steady request stream
  scale      1, 100 and 1000 guarded services (10 instances each): poll round time,
             calls in flight, memory, CPU at rest and per-request cost

When ``perf`` is installed, the gateway is profiled during some wrk runs (share of its
time in Wasm code, Envoy code and the kernel, per thread).

Prints one table and writes bench/results.md. Benchmarks report, they never assert.
r-nacos and the gateway Envoy come from tests/e2e/harness.py; the backend of the
throughput runs is a second Envoy answering with direct_response, so the gateway, not
the backend, is what wrk measures.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import yaml  # noqa: E402

from harness import (  # noqa: E402
    NACOS_CLUSTER,
    Envoy,
    Fatal,
    Proc,
    RNacos,
    _next_base_id,
    _sock,
    envoy_bin,
    envoy_config,
    free_port,
    plugin_config,
    plugin_wasm,
    wait_until,
)

RESULTS_MD = HERE / "results.md"
MINIMAL_DIR = HERE / "minimal-filter"
MINIMAL_TARGET_DIR = REPO / "target" / "minimal-filter"
MINIMAL_WASM = MINIMAL_TARGET_DIR / "wasm32-wasip1" / "release" / "minimal_filter.wasm"
NACOS_STAT = f"cluster.{NACOS_CLUSTER}"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# CPU pinning (taskset lists): the gateway on one CPU, wrk and the fast backend on the
# other, so that the three do not take turns on the same CPU. Set from --pin in main().
PIN = {"gateway": None, "load": None}


def pinned(argv: list, role: str) -> list:
    cpus = PIN.get(role)
    return ["taskset", "-c", cpus, *argv] if cpus and shutil.which("taskset") else argv


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ processes


class Cleanup:
    """Everything started, stopped in reverse order (also on Ctrl-C / SIGTERM)."""

    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return item

    def stop(self, item):
        if item in self.items:
            self.items.remove(item)
        _stop(item)

    def stop_all(self):
        while self.items:
            _stop(self.items.pop())


def _stop(item):
    try:
        if isinstance(item, RNacos):
            if item.proc is not None:
                item.proc.stop()
        else:
            item.stop()
    except Exception:  # noqa: BLE001 - best effort at teardown
        traceback.print_exc()


CLEANUP = Cleanup()


class BenchEnvoy(Envoy):
    """The harness's gateway Envoy with bench knobs: another Wasm file (the minimal
    filter), generated routes, and no wasm debug logging."""

    def __init__(self, workdir: Path, nacos_port: int, backend_ports, plugin_cfg: Optional[dict],
                 concurrency: int = 1, wasm_path: Optional[str] = None, routes: Optional[list] = None,
                 minimal_ops: str = ""):
        self.wasm_path = wasm_path
        self.minimal_ops = minimal_ops
        self.routes = routes
        super().__init__(workdir, nacos_port, backend_ports, plugin_cfg, mode="override_host",
                         concurrency=concurrency, log_level="info")

    def _configure(self) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.config = envoy_config(self.port, self.admin_port, self.nacos_port, self.backend_ports,
                                   self.plugin_cfg, "override_host", wasm_path=self.wasm_path)
        hcm = self.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        if self.routes is not None:
            hcm["route_config"]["virtual_hosts"][0]["routes"] = self.routes
        if self.wasm_path is not None:
            wasm = hcm["http_filters"][0]["typed_config"]["config"]
            wasm["name"] = wasm["root_id"] = wasm["vm_config"]["vm_id"] = "minimal-filter"
            wasm["configuration"]["value"] = self.minimal_ops
        self.config_path = self.workdir / f"envoy-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def _argv(self) -> list:
        # Pinned to the gateway's CPU, and without the harness's wasm debug logging.
        return pinned([envoy_bin(), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
                       "--base-id", str(_next_base_id()), "-l", self.log_level, "--disable-hot-restart"],
                      "gateway")

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)

    # -- measurements
    def stats_filtered(self, regex: str) -> dict:
        st, body = self.admin("/stats?format=json&filter=" + urllib.parse.quote(regex))
        if st != 200:
            raise RuntimeError(f"/stats: {st} {body[:200]}")
        return {s["name"]: s["value"] for s in json.loads(body).get("stats", []) if "value" in s}

    def stat(self, name: str) -> int:
        return int(self.stats_filtered("^" + re.escape(name) + "$").get(name, 0))

    def pid(self) -> int:
        return self.proc.p.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def heap_allocated(self) -> int:
        st, body = self.admin("/memory")
        try:
            return int(json.loads(body).get("allocated", 0))
        except (ValueError, json.JSONDecodeError):
            return 0


class FastBackend:
    """A second Envoy answering ``200 backend-<i>`` from a direct_response on each port:
    a backend far faster than the gateway under test."""

    def __init__(self, workdir: Path, count: int):
        self.workdir = Path(workdir)
        self.ports = [free_port() for _ in range(count)]
        self.admin_port = free_port()
        listeners = []
        for i, port in enumerate(self.ports):
            listeners.append({
                "name": f"backend-{i}",
                "address": _sock(port),
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": f"backend_{i}",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": f"backend-{i}"}},
                    }]}]},
                    "http_filters": [ROUTER],
                }}]}],
            })
        cfg = {"admin": {"address": _sock(self.admin_port)}, "static_resources": {"listeners": listeners}}
        path = self.workdir / f"backend-envoy-{self.admin_port}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        argv = pinned([envoy_bin(), "-c", str(path), "--concurrency", "1", "--base-id", str(_next_base_id()),
                       "-l", "warn", "--disable-hot-restart"], "load")
        self.proc = Proc("backend-envoy", argv, dict(os.environ), self.workdir / f"backend-envoy-{self.admin_port}.log")

        def ready():
            if not self.proc.alive():
                raise Fatal("backend envoy exited:\n" + self.proc.log_text()[-3000:])
            c = http.client.HTTPConnection("127.0.0.1", self.ports[-1], timeout=1)
            try:
                c.request("GET", "/")
                return c.getresponse().status == 200
            finally:
                c.close()

        wait_until(ready, 30, 0.05, "backend envoy up")

    def stop(self):
        self.proc.stop()


class CountingBackend:
    """An HTTP backend that records when each request reached it, like the harness's
    ``Backend``, but answering in one write with Nagle off: the harness's backend writes
    headers and body separately, and Nagle plus the gateway's delayed ACK hold every
    answer ~40 ms, which would make the request stream too sparse to time detection."""

    def __init__(self, name: str):
        import http.server

        self.name = name
        self.lock = threading.Lock()
        self.hit_times: list = []
        backend = self
        body = name.encode()
        answer = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                with backend.lock:
                    backend.hit_times.append(time.monotonic())
                self.wfile.write(answer)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def last_hit(self) -> Optional[float]:
        with self.lock:
            return self.hit_times[-1] if self.hit_times else None

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def start_nacos(workdir: Path) -> RNacos:
    workdir.mkdir(parents=True, exist_ok=True)
    nacos = CLEANUP.add(RNacos(workdir))
    nacos.start()
    return nacos


def register_many(nacos: RNacos, jobs: list, workers: int = 16) -> tuple:
    """Register persistent instances ``(service, ip, port)`` over keep-alive connections
    from a thread pool; returns (seconds, failures)."""
    local = threading.local()

    def one(job):
        service, ip, port = job
        body = urllib.parse.urlencode({
            "serviceName": service, "groupName": "DEFAULT_GROUP", "namespaceId": "public", "ip": ip,
            "port": port, "ephemeral": "false", "weight": 1, "healthy": "true", "enabled": "true",
            "clusterName": "DEFAULT"})
        for _ in range(3):
            try:
                c = getattr(local, "c", None)
                if c is None:
                    c = local.c = http.client.HTTPConnection("127.0.0.1", nacos.http_port, timeout=10)
                c.request("POST", "/nacos/v1/ns/instance", body,
                          {"content-type": "application/x-www-form-urlencoded"})
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                local.c = None
        return False

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        ok = list(ex.map(one, jobs))
    return time.monotonic() - t0, ok.count(False)


def wait_first_snapshot(envoy: BenchEnvoy, path: str, service: str, timeout: float = 30.0) -> None:
    """The poller has an answer and every worker VM adopted it: a batch of requests over
    fresh connections is routed in full."""
    routed = f"wasmcustom.nacos_guard.service.{service}.routed"

    def all_routed():
        r0 = envoy.stat(routed)
        for _ in range(4 * envoy.concurrency + 4):
            envoy.request(path)
        return envoy.stat(routed) - r0 == 4 * envoy.concurrency + 4

    wait_until(all_routed, timeout, 0.1, f"every worker routes {service}")


# ------------------------------------------------------------------------ wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, seconds: int, connections: int = 32, threads: int = 1, extra: Optional[list] = None) -> dict:
    out = subprocess.run(pinned(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                                 *(extra or []), url], "load"),
                         capture_output=True, text=True, timeout=seconds + 60)
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


def perf_profile(pid: int, seconds: float) -> Optional[dict]:
    """Where the Envoy process spends its time, by thread and by code: ``perf record``
    at 499 Hz; returns {thread: {"wasm": %, "envoy": %, "kernel": %, "other": %}} of all
    samples, or None when perf is missing or not allowed. Wasm code is V8's JIT output
    (``[JIT] tid N``); ``envoy`` is Envoy's own (stripped) code, host calls included."""
    if shutil.which("perf") is None:
        return None
    data = Path(tempfile.mkdtemp(prefix="nig-perf-")) / "perf.data"
    try:
        rec = subprocess.run(["perf", "record", "-F", "499", "-o", str(data), "-p", str(pid), "--",
                              "sleep", str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
        if rec.returncode != 0 or not data.exists():
            return None
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "comm,dso"],
                             capture_output=True, text=True, timeout=120)
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
        kind = ("wasm" if dso.startswith("[JIT]") else "envoy" if dso == "envoy"
                else "kernel" if dso.startswith("[kernel") else "other")
        thread = "worker" if comm.startswith("wrk:worker") else "main" if comm == "envoy" else comm
        d = out.setdefault(thread, {"wasm": 0.0, "envoy": 0.0, "kernel": 0.0, "other": 0.0})
        d[kind] += share
    return out or None


def wrk_profiled(envoy: "BenchEnvoy", url: str, seconds: int, connections: int, profile: bool,
                 extra: Optional[list] = None) -> dict:
    """wrk, with a perf profile of the gateway over the middle of the run when asked."""
    if not profile or seconds < 6:
        return wrk(url, seconds, connections, extra=extra)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(wrk(url, seconds, connections, extra=extra)))
    t.start()
    time.sleep(2)
    prof = perf_profile(envoy.pid(), seconds - 4)
    t.join()
    if prof:
        out["profile"] = prof
    return out


def fmt_profile(prof: Optional[dict]) -> str:
    if not prof:
        return "no profile"
    parts = []
    for thread in ("worker", "main"):
        d = prof.get(thread)
        if d and sum(d.values()) >= 1.0:
            total = sum(d.values())
            parts.append(f"{thread} thread {total:.0f}% of samples (Wasm {d['wasm']:.1f}%, Envoy {d['envoy']:.1f}%, "
                         f"kernel {d['kernel']:.1f}%)")
    return "; ".join(parts)


# --------------------------------------------------------------------- helpers


def pct(values: list, p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


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
    return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "nproc": nproc, "cpu": model, "mem": fmt_kb(mem_kb), "kernel": platform.release(),
            "envoy": envoy_version, "wrk": wrk_version}


# ===================================================================== sections


def section_sizes(args, res: dict) -> None:
    sizes = {}
    for name in ("build/plugin.wasm", "build/plugin-envoy.wasm"):
        p = REPO / name
        sizes[name] = p.stat().st_size if p.exists() else None
    sizes["bench minimal filter"] = MINIMAL_WASM.stat().st_size if MINIMAL_WASM.exists() else None
    res["sizes"] = sizes
    for k, v in sizes.items():
        log(f"{k}: {v} bytes")

    if args.skip_criterion:
        return
    log("criterion micro-benchmarks (cargo bench --no-default-features --bench hot_paths) ...")
    cmd = ["cargo", "bench", "--no-default-features", "--bench", "hot_paths", "--",
           "--warm-up-time", "1", "--measurement-time", str(args.criterion_seconds), "--noplot"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError("cargo bench failed:\n" + out.stderr[-3000:])
    benches = []
    name = None
    for line in out.stdout.splitlines():
        m = re.match(r"^(\S.*?)?\s+time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
        if m:
            benches.append((m.group(1) or name or "?", m.group(3)))
            name = None
        elif line and not line[0].isspace() and not line.startswith(("Benchmarking", "Found", "Gnuplot")):
            name = line.strip()
    res["criterion"] = benches
    for n, t in benches:
        log(f"  {n}: {t}")


def section_overhead(args, res: dict, work: Path) -> None:
    """Same Envoy config (override_host routing, concurrency 1) without a Wasm filter,
    with the minimal filter and with the plugin; wrk -t1 -c32, rounds alternate.

    Where the plugin's cost goes, three more variants in the same rounds:
    - the gateway without a filter, the client setting the routing header itself, so
      the override_host policy picks the host as it does behind the plugin;
    - the minimal filter making the host calls the plugin makes on a guarded route
      (remove two headers, read xds.route_name, read the pin header, bump a counter,
      set the routing header to the two instances in turn), none of its logic;
    - the plugin on `/legacy`, whose rule says `enabled: false`: header stripping,
      property reads and rule matching, no decision.
    """
    nacos = start_nacos(work / "overhead-nacos")
    backend = CLEANUP.add(FastBackend(work, 2))
    for port in backend.ports:
        nacos.register(port, service="demo")
    endpoint = f"127.0.0.1:{backend.ports[0]}"
    endpoints = "|".join(f"127.0.0.1:{p}" for p in backend.ports)  # in turn, like the plugin
    gateways = {
        "none": dict(plugin_cfg=None),
        "minimal": dict(plugin_cfg={}, wasm_path=str(MINIMAL_WASM), minimal_ops="set"),
        "minimal-calls": dict(plugin_cfg={}, wasm_path=str(MINIMAL_WASM),
                              minimal_ops=f"remove,property,pin,metric,route={endpoints}"),
        "plugin": dict(plugin_cfg=plugin_config()),
    }
    targets = {  # variant: (gateway, path, extra wrk args)
        "no plugin": ("none", "/demo", []),
        "minimal filter": ("minimal", "/demo", []),
        "plugin": ("plugin", "/demo", []),
        "no plugin, client sets the routing header": ("none", "/demo",
                                                      ["-H", f"x-gateway-destination-endpoint: {endpoint}"]),
        "minimal filter making the plugin's host calls": ("minimal-calls", "/demo", []),
        "plugin, route switched off (enabled: false)": ("plugin", "/legacy", []),
    }
    if not args.breakdown:
        targets = {k: v for k, v in targets.items() if k in ("no plugin", "minimal filter", "plugin")}
        gateways = {k: v for k, v in gateways.items() if k in ("none", "minimal", "plugin")}
    envoys = {}
    for name, kw in gateways.items():
        envoys[name] = CLEANUP.add(BenchEnvoy(work, nacos.http_port, backend.ports, concurrency=1, **kw))
        envoys[name].start()
    wait_first_snapshot(envoys["plugin"], "/demo", "demo")
    runs = {name: [] for name in targets}
    routed = "wasmcustom.nacos_guard.service.demo.routed"
    for gw, path, extra in targets.values():  # warm-up: connections, JIT, caches
        wrk(f"http://127.0.0.1:{envoys[gw].port}{path}", 2, args.connections, extra=extra)
    order = list(targets)
    for rnd in range(args.rounds):
        for name in order:
            gw, path, extra = targets[name]
            e = envoys[gw]
            r0 = e.stat(routed) if name == "plugin" else 0
            r = wrk(f"http://127.0.0.1:{e.port}{path}", args.duration, args.connections, extra=extra)
            if name == "plugin":
                r["decided"] = e.stat(routed) - r0
            runs[name].append(r)
            log(f"round {rnd + 1} {name:>46}: {r['rps']:7.0f} rps  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                f"  non-2xx {r['non2xx']}  errors {r['socket_errors']}"
                + (f"  decided by the plugin {r['decided']}/{r['requests']}" if name == "plugin" else ""))
        order = order[1:] + order[:1]  # rotate who goes first
    res["overhead"] = runs
    if args.profile:
        profiles = {}
        for name in ("minimal filter", "minimal filter making the plugin's host calls", "plugin"):
            if name not in targets:
                continue
            gw, path, extra = targets[name]
            r = wrk_profiled(envoys[gw], f"http://127.0.0.1:{envoys[gw].port}{path}", max(args.duration, 8),
                             args.connections, True, extra=extra)
            if r.get("profile"):
                profiles[name] = r["profile"]
                log(f"profile {name}: {fmt_profile(r['profile'])}")
        res["overhead_profile"] = profiles
    for e in envoys.values():
        CLEANUP.stop(e)
    CLEANUP.stop(backend)
    CLEANUP.stop(nacos)


class Stream:
    """A steady request stream, one request every ``period`` seconds on a new
    connection each (so requests spread over the workers)."""

    def __init__(self, port: int, path: str, period: float):
        self.port, self.path, self.period = port, path, period
        self.count = 0
        self.errors = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        nxt = time.monotonic()
        while not self._stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                c.request("GET", self.path)
                c.getresponse().read()
                c.close()
                self.count += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
            nxt += self.period
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = time.monotonic()

    def stop(self):
        self._stop.set()
        self._t.join(timeout=5)


def section_detection(args, res: dict, work: Path) -> None:
    """Deregister instance A of {A, B} under a steady stream; the detection time is from
    the moment r-nacos answered the DELETE to the last request that reached A."""
    out = {}
    for interval_ms, trials in ((1000, args.trials_1000), (200, args.trials_200)):
        nacos = start_nacos(work / f"detect-{interval_ms}-nacos")
        a, b = CLEANUP.add(CountingBackend("backend-a")), CLEANUP.add(CountingBackend("backend-b"))
        for be in (a, b):
            nacos.register(be.port)
        envoy = CLEANUP.add(BenchEnvoy(work, nacos.http_port, [a.port, b.port],
                                       plugin_config({"refreshIntervalMs": interval_ms}),
                                       concurrency=args.detect_concurrency))
        envoy.start()
        wait_first_snapshot(envoy, "/demo", "demo")
        interval = interval_ms / 1000.0
        window = interval + 1.0  # watch for late requests this long after the deregistration
        stream = Stream(envoy.port, "/demo", args.stream_period)
        lags, censored, no_traffic = [], 0, 0
        to_poll, after_poll = [], []  # deregistration -> poll answer; poll answer -> last request
        polled = "wasmcustom.nacos_guard.service.demo.poll_success"
        rng = random.Random(interval_ms)
        try:
            for trial in range(trials):
                t_reg = time.monotonic()
                wait_until(lambda: (a.last_hit() or 0) > t_reg, interval + 5, 0.005, "A receives traffic")
                time.sleep(rng.uniform(0, interval))  # a random phase against the polls
                if (a.last_hit() or 0) < time.monotonic() - 0.1:
                    no_traffic += 1
                polls0 = envoy.stat(polled)
                nacos.deregister(a.port)
                t_answer = time.monotonic()  # r-nacos answered the DELETE
                # When did the poller take in the first answer after that? (admin stats
                # sampled every ~2 ms; the answer may, rarely, be to a call sent before)
                # An answer within 3 ms of the DELETE's may be to a call sent before it:
                # then the next answer is the one that can see the deregistration.
                t_poll = None
                while time.monotonic() < t_answer + window:
                    now = time.monotonic()
                    if t_poll is None:
                        polls = envoy.stat(polled)
                        if polls > polls0:
                            if now - t_answer < 0.003:
                                polls0 = polls
                            else:
                                t_poll = now
                    time.sleep(0.002 if t_poll is None else 0.05)
                last = a.last_hit() or 0
                lag = max(0.0, last - t_answer)
                if lag >= window - 0.05:
                    censored += 1
                lags.append(lag * 1000)
                if t_poll is not None:
                    to_poll.append((t_poll - t_answer) * 1000)
                    after_poll.append(max(0.0, last - t_poll) * 1000)
                nacos.register(a.port)
        finally:
            stream.stop()
        o = {"trials": len(lags), "lags_ms": lags, "p50": pct(lags, 50), "p99": pct(lags, 99), "max": max(lags),
             "mean": statistics.mean(lags), "requests": stream.count, "errors": stream.errors,
             "censored": censored, "no_traffic": no_traffic,
             "to_poll_p50": pct(to_poll, 50), "to_poll_max": max(to_poll, default=float("nan")),
             "after_poll_p50": pct(after_poll, 50), "after_poll_p99": pct(after_poll, 99),
             "after_poll_max": max(after_poll, default=float("nan")),
             "to_poll_ms": to_poll, "after_poll_ms": after_poll,
             "poll_failure": envoy.stat("wasmcustom.nacos_guard.service.demo.poll_failure")}
        out[interval_ms] = o
        log(f"detection at {interval_ms} ms: {o['trials']} trials, p50 {o['p50']:.0f} ms, p99 {o['p99']:.0f} ms, "
            f"max {o['max']:.0f} ms (stream: {o['requests']} requests, {o['errors']} errors); "
            f"to the next poll answer p50 {o['to_poll_p50']:.0f} max {o['to_poll_max']:.0f} ms, from it to the last "
            f"request p50 {o['after_poll_p50']:.0f} p99 {o['after_poll_p99']:.0f} max {o['after_poll_max']:.0f} ms")
        for item in (envoy, a, b, nacos):
            CLEANUP.stop(item)
    res["detection"] = out


def section_load(args, res: dict, work: Path) -> None:
    """Nacos calls per guarded service per interval as the worker count grows."""
    nacos = start_nacos(work / "load-nacos")
    backend = CLEANUP.add(FastBackend(work, 1))
    nacos.register(backend.ports[0])
    out = {}
    for conc in (1, 2, 4):
        envoy = CLEANUP.add(BenchEnvoy(work, nacos.http_port, backend.ports, plugin_config(), concurrency=conc))
        envoy.start()
        wait_first_snapshot(envoy, "/demo", "demo")
        n0 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
        t0 = time.monotonic()
        time.sleep(args.load_window)
        n1 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
        dt = time.monotonic() - t0
        vms = envoy.stats_filtered(r"^wasm\.envoy\.wasm\.runtime\.v8\.active$")
        out[conc] = {"requests": n1 - n0, "seconds": dt, "per_interval": (n1 - n0) / dt,
                     "vms": int(next(iter(vms.values()), 0))}
        log(f"concurrency {conc}: {n1 - n0} Nacos requests in {dt:.1f} s = {(n1 - n0) / dt:.2f} per interval "
            f"({out[conc]['vms']} active Wasm VMs)")
        CLEANUP.stop(envoy)
    res["load"] = out
    CLEANUP.stop(backend)
    CLEANUP.stop(nacos)


class ActiveSampler:
    """Samples the Nacos cluster's upstream_rq_active gauge as fast as the admin answers."""

    def __init__(self, envoy: BenchEnvoy):
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
                v = int(next(iter(self.envoy.stats_filtered(regex).values()), 0))
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
    routes = [{"name": f"bench/svc-{i}", "match": {"path": f"/svc-{i}"},
               "route": {"cluster": "outbound|8080||demo.dns", "timeout": "3s"}} for i in range(count)]
    base = plugin_config()
    cfg = {k: v for k, v in base.items() if k != "_rules_"}
    rules = [{"_match_route_": [f"bench/svc-{i}"], "service": {"name": f"svc-{i}"}} for i in range(1, count)]
    rules.append({"_match_route_": ["bench/svc-0"], "service": {"name": "svc-0"}})
    cfg["_rules_"] = rules
    return routes, cfg


def scale_run(args, work: Path, nacos: RNacos, backend: FastBackend, count: int, concurrency: int = 1,
              interval_ms: Optional[int] = None, full: bool = True, do_wrk: Optional[bool] = None) -> dict:
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
        bare = CLEANUP.add(BenchEnvoy(work, nacos.http_port, backend.ports, None, concurrency=concurrency, routes=routes))
        bare.start()
        time.sleep(1.0)
        o["bare_rss_kb"] = bare.rss_kb()
        CLEANUP.stop(bare)
    envoy = BenchEnvoy(work, nacos.http_port, backend.ports, cfg, concurrency=concurrency, routes=routes)
    envoy.start()
    CLEANUP.add(envoy)
    sampler = ActiveSampler(envoy)
    t_ready = time.monotonic()
    regex = r"^wasmcustom\.nacos_guard\.service\.svc-\d+\.poll_success$"

    def all_polled():
        vals = envoy.stats_filtered(regex)
        return len(vals) == count and all(v >= 1 for v in vals.values())

    # The first round: every service is due at once, at most 32 calls in flight.
    wait_until(all_polled, 120, 0.02, f"first poll of all {count} services")
    o["first_round_s"] = time.monotonic() - t_ready
    wait_first_snapshot(envoy, "/svc-0", "svc-0", timeout=60)
    if full:
        time.sleep(1.0)
        # Steady state: time until every service's poll_success advanced once more.
        base = envoy.stats_filtered(regex)
        t0 = time.monotonic()
        wait_until(lambda: all(v > base.get(k, 0) for k, v in envoy.stats_filtered(regex).items()),
                   60, 0.02, "one more poll of every service")
        o["steady_round_s"] = time.monotonic() - t0
    sampler.stop()
    o["active_max"], o["active_samples"] = sampler.max, sampler.samples
    time.sleep(1.0)
    # Nacos calls and Envoy CPU over a window with nothing else touching Envoy.
    n0 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
    c0, w0 = envoy.cpu_seconds(), time.monotonic()
    time.sleep(args.scale_window)
    n1 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
    c1, w1 = envoy.cpu_seconds(), time.monotonic()
    o["per_service_interval"] = (n1 - n0) / ((w1 - w0) * 1000.0 / o["interval_ms"]) / count
    o["idle_cpu"] = (c1 - c0) / (w1 - w0)
    o["rss_kb"] = envoy.rss_kb()
    o["heap"] = envoy.heap_allocated()
    o["vms"] = int(next(iter(envoy.stats_filtered(r"^wasm\.envoy\.wasm\.runtime\.v8\.active$").values()), 0))
    o["pending_overflow"] = envoy.stat(f"{NACOS_STAT}.upstream_rq_pending_overflow")
    o["poll_failures"] = int(sum(envoy.stats_filtered(
        r"^wasmcustom\.nacos_guard\.service\.svc-\d+\.poll_failure$").values()))
    if (full if do_wrk is None else do_wrk):
        wrk(f"http://127.0.0.1:{envoy.port}/svc-0", 2, args.connections)
        r0 = envoy.stat("wasmcustom.nacos_guard.service.svc-0.routed")
        runs = [wrk(f"http://127.0.0.1:{envoy.port}/svc-0", args.duration, args.connections)
                for _ in range(args.scale_runs - 1)]
        runs.append(wrk_profiled(envoy, f"http://127.0.0.1:{envoy.port}/svc-0", args.duration, args.connections,
                                 args.profile))
        runs.sort(key=lambda r: r["rps"])
        o["wrk"] = dict(runs[len(runs) // 2])  # the median run
        o["wrk"]["all_rps"] = [r["rps"] for r in runs]
        o["requests_all"] = sum(r["requests"] for r in runs)
        prof = next((r["profile"] for r in runs if r.get("profile")), None)
        if prof:
            o["wrk"]["profile"] = prof
        o["decided"] = envoy.stat("wasmcustom.nacos_guard.service.svc-0.routed") - r0
    CLEANUP.stop(envoy)
    w = o.get("wrk")
    log(f"{count} services, concurrency {concurrency}, every {o['interval_ms']} ms: first round "
        f"{o['first_round_s']:.2f} s" + (f", steady round {o['steady_round_s']:.2f} s" if full else "")
        + f", {o['per_service_interval']:.2f} polls/service/interval, in flight max {o['active_max']} "
        f"({o['active_samples']} samples), CPU at rest {o['idle_cpu'] * 100:.1f}% of a core, "
        f"RSS {fmt_kb(o['rss_kb'])}" + (f" (no plugin {fmt_kb(o['bare_rss_kb'])})" if full else "")
        + f", {o['vms']} VMs, poll failures {o['poll_failures']}"
        + (f", wrk {w['rps']:.0f} rps p50 {w['p50']:.3f} ms p99 {w['p99']:.3f} ms, decided {o['decided']}/"
           f"{o['requests_all']} (all runs)" if w else "")
        + (f"; {fmt_profile(w.get('profile'))}" if w and w.get("profile") else ""))
    return o


def section_scale(args, res: dict, work: Path) -> None:
    counts = args.scale
    nacos = start_nacos(work / "scale-nacos")
    backend = CLEANUP.add(FastBackend(work, 10))
    jobs = [("svc-0", "127.0.0.1", p) for p in backend.ports]
    for s in range(1, max(counts)):
        for i in range(10):
            jobs.append((f"svc-{s}", f"10.{s // 250}.{s % 250}.{i + 1}", 8080))
    secs, failed = register_many(nacos, jobs)
    res["registration"] = {"count": len(jobs), "seconds": secs, "failed": failed}
    log(f"registered {len(jobs)} persistent instances in {secs:.1f} s ({len(jobs) / secs:.0f}/s), {failed} failed")
    last = nacos.list(f"svc-{max(counts) - 1}")
    log(f"svc-{max(counts) - 1} lists {len(last.get('hosts', []))} instances")

    res["scale"] = {count: scale_run(args, work, nacos, backend, count) for count in counts}
    # Where the time at rest goes with the most services:
    # - more worker VMs (all followers that adopt what the poller publishes);
    # - polling paused after the first round (refreshIntervalMs 600000): what is left of
    #   the per-request cost is the plugin's own request path (rule matching included).
    top = max(counts)
    extra = {}
    for conc in args.scale_follower_concurrency:
        extra[f"concurrency {conc}"] = scale_run(args, work, nacos, backend, top, concurrency=conc, full=False)
    paused = scale_run(args, work, nacos, backend, top, interval_ms=600000, full=False, do_wrk=True)
    extra["polling paused"] = paused
    res["scale_extra"] = extra
    CLEANUP.stop(backend)
    CLEANUP.stop(nacos)


# ====================================================================== report


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def build_report(res: dict, args) -> tuple:
    """(table, details) as markdown."""
    rows = []  # (measure, result, goal, verdict)

    def row(measure, result, goal="", verdict=""):
        rows.append((measure, result, goal, verdict))

    if "sizes" in res:
        for k, v in res["sizes"].items():
            goal = "< 300 KB" if k.startswith("build/") else ""
            verdict = ("met" if v is not None and v < 300_000 else "missed") if goal else ""
            row(f"size of {k}", f"{v / 1000:.1f} KB" if v else "missing", goal, verdict)
    if "criterion" in res:
        for n, t in res["criterion"]:
            row(f"native: {n}", t)
    if "overhead" in res:
        ov = res["overhead"]
        # Medians over the rounds: other work on the machine only ever slows a run down.
        agg = {n: {"rps": median([r["rps"] for r in runs]), "p50": median([r["p50"] for r in runs]),
                   "p99": median([r["p99"] for r in runs])} for n, runs in ov.items()}
        np_rps = agg.get("no plugin", {}).get("rps")
        for n, a in agg.items():
            rel = f" ({a['rps'] / np_rps:.3f} of no plugin)" if np_rps and n != "no plugin" else ""
            row(f"requests: {n} (wrk -t1 -c{args.connections}, median of {len(ov[n])} x {args.duration} s)",
                f"{a['rps']:.0f} rps{rel}, p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms")
        if "no plugin" in agg and "plugin" in agg:
            np_, pl = agg["no plugin"], agg["plugin"]
            rr = pl["rps"] / np_["rps"]
            row("throughput plugin / no plugin", f"{rr:.3f}", ">= 0.90", "met" if rr >= 0.90 else f"missed by {0.90 - rr:.3f}")
            p99r = pl["p99"] / np_["p99"]
            row("p99 plugin / no plugin", f"{p99r:.3f}", "<= 1.15", "met" if p99r <= 1.15 else f"missed by {p99r - 1.15:.3f}")
            row("p50 plugin / no plugin", f"{pl['p50'] / np_['p50']:.3f}")
        hdr = agg.get("no plugin, client sets the routing header")
        if hdr and "plugin" in agg:
            row("throughput plugin / no plugin with the client setting the routing header (same routing work)",
                f"{agg['plugin']['rps'] / hdr['rps']:.3f}")
        if "minimal filter" in agg and "plugin" in agg:
            mn, pl = agg["minimal filter"], agg["plugin"]
            row("throughput minimal filter / no plugin", f"{mn['rps'] / agg['no plugin']['rps']:.3f}", "(floor of any Wasm filter)")
            row("throughput plugin / minimal filter", f"{pl['rps'] / mn['rps']:.3f}")
            row("p99 plugin / minimal filter", f"{pl['p99'] / mn['p99']:.3f}")
    for name, prof in res.get("overhead_profile", {}).items():
        row(f"perf profile of the gateway during wrk: {name}", fmt_profile(prof))
    if "detection" in res:
        for iv, d in res["detection"].items():
            goal = iv + 100
            row(f"detection at {iv} ms ({d['trials']} trials)",
                f"p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms, max {d['max']:.0f} ms",
                f"p99 < {goal} ms", "met" if d["p99"] < goal else f"missed by {d['p99'] - goal:.0f} ms")
            row(f"detection at {iv} ms, split: deregistration -> next poll answer; poll answer -> last request "
                f"(followers adopting, requests in flight)",
                f"p50 {d['to_poll_p50']:.0f}, max {d['to_poll_max']:.0f} ms; p50 {d['after_poll_p50']:.0f}, "
                f"p99 {d['after_poll_p99']:.0f}, max {d['after_poll_max']:.0f} ms")
    if "load" in res:
        for conc, l in res["load"].items():
            row(f"Nacos requests per service per interval, concurrency {conc} ({l['vms']} VMs)",
                f"{l['per_interval']:.2f}", "1", "met" if l["per_interval"] <= 1.15 else "missed")
    if "registration" in res:
        r = res["registration"]
        row("registering instances in r-nacos (16 threads, keep-alive)",
            f"{r['count']} in {r['seconds']:.1f} s, {r['failed']} failed")
    if "scale" in res:
        sc = res["scale"]
        first = min(sc)
        base = sc[first]
        for n, o in sc.items():
            ok_round = o["first_round_s"] <= 1.0 and o["per_service_interval"] <= 1.12 and o["active_max"] <= 32
            row(f"scale {n} services: first poll round (all due at once) / steady round; "
                f"polls per service per interval; Nacos calls in flight (max of {o['active_samples']} samples)",
                f"{o['first_round_s']:.2f} s / {o['steady_round_s']:.2f} s; {o['per_service_interval']:.2f}; "
                f"{o['active_max']} (pending overflow {o['pending_overflow']}, poll failures {o['poll_failures']})",
                "round < 1 s, 1 poll, <= 32 in flight", "met" if ok_round else "missed")
            grow = (o["rss_kb"] - o["bare_rss_kb"]) - (base["rss_kb"] - base["bare_rss_kb"])
            row(f"scale {n}: Envoy RSS ({o['vms']} VMs); Envoy CPU at rest",
                f"{fmt_kb(o['rss_kb'])} (without plugin {fmt_kb(o['bare_rss_kb'])}; plugin growth vs {first}: "
                f"{fmt_kb(grow)} = {fmt_kb(grow / max(o['vms'], 1))} per VM); {o['idle_cpu'] * 100:.1f}% of a core")
            w = o["wrk"]
            rel = w["rps"] / base["wrk"]["rps"]
            row(f"scale {n}: requests on the last rule's route",
                f"{w['rps']:.0f} rps ({rel:.2f} of {first}; runs {', '.join(f'{x:.0f}' for x in w['all_rps'])}), "
                f"p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms",
                "not growing with services", "met" if rel >= 0.9 else f"missed ({rel:.2f} of {first})")
            if w.get("profile"):
                row(f"scale {n}: perf profile during wrk", fmt_profile(w["profile"]))
    for name, o in res.get("scale_extra", {}).items():
        w = o.get("wrk")
        row(f"scale {o['count']}, {name}: Envoy CPU at rest ({o['vms']} VMs)"
            + ("; requests on the last rule's route" if w else ""),
            f"{o['idle_cpu'] * 100:.1f}% of a core, {o['per_service_interval']:.2f} polls per service per interval"
            + (f"; {w['rps']:.0f} rps, p50 {w['p50']:.2f} ms, p99 {w['p99']:.2f} ms" if w else ""))
        if w and w.get("profile"):
            row(f"scale {o['count']}, {name}: perf profile during wrk", fmt_profile(w["profile"]))
    table = ["| measure | result | goal | verdict |", "|---|---|---|---|"]
    table += [f"| {m} | {r} | {g} | {v} |" for m, r, g, v in rows]

    details = []
    if "overhead" in res:
        details.append("### Request overhead, every run\n")
        details.append("| round | variant | rps | p50 ms | p99 ms | non-2xx | socket errors | decided by plugin |")
        details.append("|---|---|---|---|---|---|---|---|")
        for n, runs in res["overhead"].items():
            for i, r in enumerate(runs):
                details.append(f"| {i + 1} | {n} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['non2xx']} | "
                               f"{r['socket_errors']} | {r.get('decided', '')} |")
        details.append("")
    if "detection" in res:
        details.append("### Detection, every trial (ms)\n")
        for iv, d in res["detection"].items():
            details.append(f"- {iv} ms, deregistration -> poll answer: " + ", ".join(f"{x:.0f}" for x in d["to_poll_ms"]))
            details.append(f"- {iv} ms, poll answer -> last request: " + ", ".join(f"{x:.0f}" for x in d["after_poll_ms"]))
            details.append(f"- {iv} ms: " + ", ".join(f"{x:.0f}" for x in d["lags_ms"])
                           + f" (stream of {d['requests']} requests, {d['errors']} errors; "
                           f"{d['censored']} trials hit the watch window; {d['no_traffic']} without recent traffic; "
                           f"poll failures {d['poll_failure']})")
        details.append("")
    return "\n".join(table), "\n".join(details)


def write_results(res: dict, args, mach: dict, errors: dict, started: float) -> str:
    table, details = build_report(res, args)
    lines = [
        "# nacos-instance-guard benchmarks",
        "",
        f"Produced by `make bench` (`bench/run.py{(' ' + ' '.join(sys.argv[1:])) if sys.argv[1:] else ''}`) "
        f"on {mach['date']}, in {(time.monotonic() - started) / 60:.1f} min.",
        "",
        f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem']} RAM, Linux {mach['kernel']}; "
        f"Envoy {mach['envoy']} (V8), r-nacos 0.8.8, {mach['wrk']}.",
        "",
        "Gateway: Envoy `--concurrency 1` (overhead, scale), the backend cluster with the `override_host` "
        "load-balancing policy; the backend for the throughput runs is a second Envoy answering with "
        "`direct_response`; `wrk` runs beside them on the same "
        f"{mach['nproc']} CPUs, so absolute numbers are low and the ratios are what counts.",
        "",
        table,
        "",
        "How the numbers are taken:",
        "",
        "- Overhead: one gateway per variant, all running; wrk runs them in turn, the order rotating each "
        "round; medians over the rounds, because other work on the machine only ever slows a run down. "
        "\"Decided by the plugin\" is the plugin's `routed` counter over the run.",
        "- Detection: instance A of {A, B} is deregistered at a random phase against the polls while a "
        "client sends a request every ~5 ms on a new connection (so over every worker; concurrency "
        f"{args.detect_concurrency}); the time runs from r-nacos answering the DELETE to the last request "
        "that reached A (its own timestamp). The split uses the `poll_success` counter sampled every ~2 ms.",
        "- Nacos load and scale: `cluster.outbound|8848||nacos.dns.upstream_rq_total` over a window; calls "
        "in flight: that cluster's `upstream_rq_active` gauge sampled every ~5 ms during the first and the "
        "steady round. Memory: the process's RSS after the rounds; \"without plugin\" is the same Envoy "
        "configuration (routes included) without the filter. CPU at rest: the process's user+system time "
        "over a window without requests. The measured route is Envoy's first but the plugin's last rule.",
        "- Profiles: `perf record -F 499` of the gateway during a wrk run; Wasm is V8's JIT code, Envoy "
        "its own code including the host-call implementations.",
        "",
    ]
    if errors:
        lines.append("### Sections that failed\n")
        for k, v in errors.items():
            lines.append(f"- {k}: `{v.strip().splitlines()[-1]}`")
        lines.append("")
    lines.append(details)
    text = "\n".join(lines)
    RESULTS_MD.write_text(text + "\n")
    return table


# ======================================================================== main


def ensure_minimal_filter() -> None:
    """Build (or find up to date) the minimal filter; cargo does nothing when it is."""
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1",
                    "--manifest-path", str(MINIMAL_DIR / "Cargo.toml"), "--target-dir", str(MINIMAL_TARGET_DIR)],
                   check=True)


SECTIONS = ["sizes", "overhead", "load", "detection", "scale"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="short runs, to try the script out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--scale-runs", type=int, default=3, help="wrk runs per scale step (median)")
    ap.add_argument("--pin", action="store_true",
                    help="pin the gateway to CPU 0 and wrk and the backend to CPU 1 (taskset)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="only the three main overhead variants")
    ap.add_argument("--trials-1000", type=int, default=25)
    ap.add_argument("--trials-200", type=int, default=30)
    ap.add_argument("--stream-period", type=float, default=0.005)
    ap.add_argument("--detect-concurrency", type=int, default=2)
    ap.add_argument("--load-window", type=float, default=10.0)
    ap.add_argument("--scale", default="1,100,1000")
    ap.add_argument("--scale-window", type=float, default=10.0)
    ap.add_argument("--scale-follower-concurrency", default="2,4",
                    help="extra runs with the most services at these concurrencies (CPU at rest)")
    ap.add_argument("--criterion-seconds", type=float, default=2.0)
    ap.add_argument("--skip-criterion", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="no perf profiles (they are taken only when perf is installed)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.scale_runs = 1, 3, 1
        args.trials_1000, args.trials_200 = 4, 5
        args.load_window, args.scale_window, args.criterion_seconds = 4.0, 4.0, 0.5
    args.scale = [int(x) for x in args.scale.split(",") if x]
    if args.pin:
        PIN.update(gateway="0", load="1")
    args.scale_follower_concurrency = [int(x) for x in args.scale_follower_concurrency.split(",") if x]
    only = [s.strip() for s in args.only.split(",") if s.strip()]

    for tool in ("wrk", "cargo"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (wrk: apt-get install -y wrk)", file=sys.stderr)
            return 2
    if not Path(plugin_wasm()).exists():
        print(f"{plugin_wasm()} missing: run `make build`", file=sys.stderr)
        return 2
    ensure_minimal_filter()

    def on_signal(signum, frame):
        CLEANUP.stop_all()
        sys.exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    mach = machine()
    log(f"machine: {mach}")
    work = Path(tempfile.mkdtemp(prefix="nig-bench-"))
    res, errors = {}, {}
    funcs = {"sizes": lambda: section_sizes(args, res),
             "overhead": lambda: section_overhead(args, res, work),
             "load": lambda: section_load(args, res, work),
             "detection": lambda: section_detection(args, res, work),
             "scale": lambda: section_scale(args, res, work)}
    try:
        for name in SECTIONS:
            if name not in only:
                continue
            log(f"--- {name} ---")
            t0 = time.monotonic()
            try:
                funcs[name]()
            except Exception:  # noqa: BLE001 - report the others anyway
                errors[name] = traceback.format_exc()
                log(f"{name} failed:\n{errors[name]}")
            finally:
                CLEANUP.stop_all()
            log(f"{name} took {time.monotonic() - t0:.0f} s")
            (work / "results.json").write_text(json.dumps(res, default=str, indent=1))
    except KeyboardInterrupt:
        CLEANUP.stop_all()
        raise
    finally:
        CLEANUP.stop_all()
    table = write_results(res, args, mach, errors, started)
    print()
    print(table)
    print()
    print(f"written to {RESULTS_MD.relative_to(REPO)} (work dir {work}{'' if args.keep else ', removed'}); "
          f"took {(time.monotonic() - started) / 60:.1f} min")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
