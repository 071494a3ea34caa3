"""Section ``load``: Nacos requests per guarded service per interval as the worker count
grows, polling at 1 s; then with push (bench/push.py): HTTP list calls per service per
minute and gRPC connections per gateway, at concurrency 1, 2, 4 and at 1,000 services."""

from __future__ import annotations

import time
from pathlib import Path

from gateways import NACOS_STAT, OWNER, fast_backend, gateway, start_nacos, wait_first_snapshot
from measure import log
from push import load_push

from testbed.higress import plugin_config


def section_load(args, res: dict, work: Path) -> None:
    """Nacos calls per guarded service per interval as the worker count grows."""
    nacos = start_nacos(work / "load-nacos")
    backend = fast_backend(work, 1)
    nacos.register(backend.ports[0])
    out = {}
    for conc in (1, 2, 4):
        envoy = gateway(work, nacos.http_port, backend.ports, plugin_config(), concurrency=conc)
        wait_first_snapshot(envoy, "/demo", "demo")
        n0 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
        t0 = time.monotonic()
        time.sleep(args.load_window)
        n1 = envoy.stat(f"{NACOS_STAT}.upstream_rq_total")
        dt = time.monotonic() - t0
        vms = envoy.stats(r"^wasm\.envoy\.wasm\.runtime\.v8\.active$")
        out[conc] = {
            "requests": n1 - n0,
            "seconds": dt,
            "per_interval": (n1 - n0) / dt,
            "vms": int(next(iter(vms.values()), 0)),
        }
        log(
            f"concurrency {conc}: {n1 - n0} Nacos requests in {dt:.1f} s = {(n1 - n0) / dt:.2f} per interval "
            f"({out[conc]['vms']} active Wasm VMs)"
        )
        OWNER.stop(envoy)
    res["load"] = out
    if args.push_services:
        res["load_push"] = load_push(args, work, nacos, backend)
    OWNER.stop(backend)
    OWNER.stop(nacos)
