#!/usr/bin/env python3
"""`make bench`: the cost of nacos-instance-guard, measured side by side in one run.

Sections (each also selectable with ``--only``):

  sizes      sizes of build/plugin.wasm, build/plugin-envoy.wasm and the minimal filter,
             and the criterion micro-benchmarks (``cargo bench --bench hot_paths``)
  overhead   the gateway's CPU time per request (primary) and wrk throughput and p99
             (secondary), Envoy --concurrency 1 pinned to CPU 0, wrk, backend and
             r-nacos on CPU 1: no filter, a minimal filter that only sets one header
             (bench/minimal-filter), and the plugin on a guarded route (header mode),
             with 100 route rules, with a pin header and on a route it does not guard;
             many short rounds interleave the variants; ratios per round, median and
             spread; ``--repeat 2`` runs it twice and checks the runs agree within 3 %
  instructions
             a guarded request's path in Wasm instructions, per callback, in the host
             tier (wasmtime fuel): plugin-envoy.wasm against the minimal filter, plain
             and making the plugin's host calls
  higress    the host tier (tests/hosttier: wasmtime running build/plugin.wasm as
             Higress does): CPU time of the plugin's request callbacks with 10 and
             1,000 hosts in the routed cluster
  load       Nacos requests per guarded service per interval at concurrency 1, 2, 4; with
             push: HTTP list calls per service per minute and gRPC connections per
             gateway at concurrency 1, 2, 4 and at 1,000 services (``--push-load-window``)
  detection  from r-nacos answering a deregistration to the last request reaching the
             instance, at refreshIntervalMs 1000 and 200 and by push (with r-nacos's
             push delay from its log), under a steady request stream
  scale      1, 100 and 1000 guarded services (10 instances each): poll round time,
             calls in flight, memory, CPU at rest and per-request cost; at 1000, CPU
             at rest next to the polling floor (the minimal filter sending the same
             list calls on the same schedule) at the same time
  learned    guardNacosRoutes: first request to a new service -> its first poll; the
             per-request cost of a learned service against a configured one

When ``perf`` is installed, the gateway is profiled during some wrk runs (share of its
time in Wasm code, Envoy code and the kernel, per thread).

Prints one table and writes bench/results.md. Benchmarks report, they never assert.
r-nacos and the gateway Envoy come from the testbed library (tests/testbed); the backend
of the throughput runs is a second Envoy answering with direct_response, so the gateway,
not the backend, is what wrk measures. Each section is a module beside this one
(sizes, criterion, overhead, nacos_load, detection, scale), the table and
bench/results.md come from report.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from criterion import section_criterion  # noqa: E402
from detection import section_detection  # noqa: E402
from gateways import OWNER, PIN, ensure_minimal_filter  # noqa: E402
from higress_path import section_higress  # noqa: E402
from instructions import section_instructions  # noqa: E402
from learned import section_learned  # noqa: E402
from measure import log, machine  # noqa: E402
from nacos_load import section_load  # noqa: E402
from overhead import section_overhead  # noqa: E402
from report import RESULTS_MD, write_results  # noqa: E402
from scale import section_scale  # noqa: E402
from sizes import section_sizes  # noqa: E402

from testbed.paths import REPO, plugin_wasm  # noqa: E402

SECTIONS = ["sizes", "overhead", "instructions", "higress", "load", "detection", "scale", "learned"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="short runs, to try the script out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--scale-runs", type=int, default=3, help="wrk runs per scale step (median)")
    ap.add_argument("--scale-pairs", type=int, default=7, help="scale: rounds paired with the one-service gateway")
    ap.add_argument("--scale-pair-seconds", type=int, default=4, help="scale: seconds of one paired round")
    ap.add_argument(
        "--scale-rest-seconds", type=float, default=1.5, help="scale: CPU at rest measured before each paired round"
    )
    ap.add_argument(
        "--pin", action="store_true", help="pin the gateway to CPU 0 and wrk and the backend to CPU 1 (taskset)"
    )
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--overhead-rounds", type=int, default=21, help="overhead: rounds, each running every variant")
    ap.add_argument("--overhead-seconds", type=int, default=2, help="overhead: seconds of one wrk run")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="overhead: window for the gateways' CPU at rest")
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="overhead: whole runs back to back, checked for agreement (default 2, 1 with --quick)",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="overhead: two more variants (no filter with the client setting the routing header; the minimal "
        "filter making the plugin's host calls)",
    )
    ap.add_argument(
        "--instruction-requests", type=int, default=2000, help="instructions: requests counted per variant and pass"
    )
    ap.add_argument("--higress-requests", type=int, default=10000, help="higress: requests per round and host count")
    ap.add_argument("--higress-rounds", type=int, default=3, help="higress: rounds alternating 10 and 1,000 hosts")
    ap.add_argument("--higress-rps", type=int, default=5000, help="higress: simulated requests per second per VM")
    ap.add_argument("--trials-1000", type=int, default=25)
    ap.add_argument("--trials-200", type=int, default=30)
    ap.add_argument("--trials-push", type=int, default=25, help="detection by push: trials (0: none)")
    ap.add_argument("--push-window", type=float, default=2.5, help="detection by push: seconds to wait for a push")
    ap.add_argument(
        "--push-load-window",
        type=float,
        default=None,
        help="load with push: seconds of the steady-state window (default 60, 15 with --quick)",
    )
    ap.add_argument("--push-services", type=int, default=1000, help="load with push: services of the big run (0: none)")
    ap.add_argument("--stream-period", type=float, default=0.005)
    ap.add_argument("--detect-concurrency", type=int, default=2)
    ap.add_argument("--load-window", type=float, default=10.0)
    ap.add_argument("--scale", default="1,100,1000")
    ap.add_argument("--learned-trials", type=int, default=26, help="new services learned, one first request each")
    ap.add_argument("--scale-window", type=float, default=10.0)
    ap.add_argument(
        "--scale-follower-concurrency",
        default="2,4",
        help="extra runs with the most services at these concurrencies (CPU at rest)",
    )
    ap.add_argument(
        "--rest-floor-concurrency",
        default="1,4",
        help="scale: the most services at rest next to the polling floor, at these concurrencies",
    )
    ap.add_argument("--rest-floor-windows", type=int, default=7)
    ap.add_argument("--rest-floor-seconds", type=float, default=4.0)
    ap.add_argument("--criterion-seconds", type=float, default=2.0)
    ap.add_argument("--skip-criterion", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    ap.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="no perf profiles (they are taken only when perf is installed)",
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.scale_runs, args.scale_pairs = 1, 3, 1, 2
        args.overhead_rounds, args.overhead_seconds, args.idle_seconds = 3, 2, 1.0
        args.higress_requests, args.higress_rounds = 2000, 2
        args.trials_1000, args.trials_200, args.trials_push = 4, 5, 5
        args.load_window, args.scale_window, args.criterion_seconds = 4.0, 4.0, 0.5
        args.rest_floor_windows, args.rest_floor_seconds = 2, 2.0
    if args.push_load_window is None:
        args.push_load_window = 15.0 if args.quick else 60.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    args.scale = [int(x) for x in args.scale.split(",") if x]
    if args.pin:
        PIN.update(gateway="0", load="1")
    args.scale_follower_concurrency = [int(x) for x in args.scale_follower_concurrency.split(",") if x]
    args.rest_floor_concurrency = [int(x) for x in args.rest_floor_concurrency.split(",") if x]
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
        OWNER.stop_all()
        sys.exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    mach = machine()
    log(f"machine: {mach}")
    work = Path(tempfile.mkdtemp(prefix="nig-bench-"))
    res, errors = {}, {}

    def sizes_and_criterion():
        section_sizes(args, res)
        if not args.skip_criterion:
            section_criterion(args, res)

    funcs = {
        "sizes": sizes_and_criterion,
        "overhead": lambda: section_overhead(args, res, work),
        "instructions": lambda: section_instructions(args, res),
        "higress": lambda: section_higress(args, res),
        "load": lambda: section_load(args, res, work),
        "detection": lambda: section_detection(args, res, work),
        "scale": lambda: section_scale(args, res, work),
        "learned": lambda: section_learned(args, res, work),
    }
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
                OWNER.stop_all()
            log(f"{name} took {time.monotonic() - t0:.0f} s")
            (work / "results.json").write_text(json.dumps(res, default=str, indent=1))
    except KeyboardInterrupt:
        OWNER.stop_all()
        raise
    finally:
        OWNER.stop_all()
    table = write_results(res, args, mach, errors, started)
    print()
    print(table)
    print()
    print(
        f"written to {RESULTS_MD.relative_to(REPO)} (work dir {work}{'' if args.keep else ', removed'}); "
        f"took {(time.monotonic() - started) / 60:.1f} min"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
