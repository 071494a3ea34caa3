#!/usr/bin/env python3
"""What single host calls cost on upstream Envoy: the minimal filter with extra
operations (``bench/minimal-filter``: ``get=NAME``, ``prop=A.B``, ``metric``, ``time``,
``route=...``), each gateway loaded at the same time as the plain one-header minimal
filter, pinned as the overhead section is; CPU per request (net of CPU at rest) of each
over the plain one, median and min-max of the rounds.

Run (after ``make build`` and with the tool cache's venv, as ``make bench`` sets it up):
  NIG_ENVOY=... NIG_RNACOS=... NIG_PLUGIN_WASM=build/plugin-envoy.wasm \\
    python bench/probes/host_calls.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from gateways import (  # noqa: E402
    OWNER,
    PLUGIN_HOST_CALLS,
    Pinned,
    ensure_minimal_filter,
    fast_backend,
    gateway,
    start_nacos,
)
from measure import cpu_at_rest, measured_round, spread, thread_ids  # noqa: E402

from testbed.higress import plugin_config  # noqa: E402

PLAIN = "set"
VARIANTS = {
    "read xds.route_name": "set,prop=xds.route_name",
    "read route_name (top level)": "set,prop=route_name",
    "read an absent header": "set,get=x-nacos-instance",
    "read a present header (:path)": "set,get=:path",
    "increment a counter": "set,metric",
    "read the clock": "set,time",
    "the plugin's host calls, no logic": f"{PLUGIN_HOST_CALLS},route=ENDPOINTS",
    "the plugin (guarded route, header mode)": None,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    ensure_minimal_filter()
    work = Path(tempfile.mkdtemp(prefix="nig-host-calls-"))
    with Pinned():
        try:
            nacos = start_nacos(work / "nacos")
            backend = fast_backend(work, 2)
            for port in backend.ports:
                nacos.register(port, service="demo")
            endpoints = "|".join(f"127.0.0.1:{p}" for p in backend.ports)
            kinds = {"plain": dict(plugin_cfg={}, minimal_ops=PLAIN)}
            for name, ops in VARIANTS.items():
                kinds[name] = (
                    dict(plugin_cfg=plugin_config({"routing": "header"}))
                    if ops is None
                    else dict(plugin_cfg={}, minimal_ops=ops.replace("ENDPOINTS", endpoints))
                )
            envoys = {name: gateway(work, nacos.http_port, backend.ports, **kw) for name, kw in kinds.items()}
            time.sleep(3)  # the plugin's first poll
            loads = {n: (e, thread_ids(e.pid, "wrk:worker")[0], "/demo", [], None) for n, e in envoys.items()}
            measured_round(args, loads, 2)  # warm-up
            at_rest = cpu_at_rest(envoys, 3)
            ratios: dict = {name: [] for name in VARIANTS}
            for _ in range(args.rounds):
                for name in VARIANTS:
                    pair = {"plain": loads["plain"], name: loads[name]}
                    got = measured_round(args, pair, args.seconds, at_rest)
                    ratios[name].append(got[name]["cpu_us"] / got["plain"]["cpu_us"])
            for name, values in ratios.items():
                med, lo, hi = spread(values)
                print(f"{name:42} {med:.3f} ({lo:.3f}-{hi:.3f}) of the one-header minimal filter")
        finally:
            OWNER.stop_all()


if __name__ == "__main__":
    main()
