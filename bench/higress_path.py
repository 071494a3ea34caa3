"""Section ``higress``: the per-request cost of the plugin's Higress path, in the host
tier (tests/hosttier: wasmtime running build/plugin.wasm, with a Python proxy-wasm host
playing Higress), with 10 and with 1,000 hosts in the routed cluster (issue 15, part 4).

On the Higress path the plugin asks the host for the routed cluster's hosts
(``proxy_get_upstream_hosts``, every host with its health, serialized by the host on
each call) and sets the chosen one with ``proxy_set_upstream_override_host``. Ten
instances are registered in Nacos; the cluster lists those ten and, in the second
gateway, 990 more stale hosts.

Requests arrive at ``--higress-rps`` per VM of simulated time: every 5 ms of the host's
clock, that many requests' worth, then the clock moves on (ticks, polls). Only the
requests are measured, each over all its calls into the VM (context create, request
headers, response headers, done, log, delete):
- primary: the plugin's own work, in Wasm instructions (wasmtime fuel): exact and
  untouched by the machine's load or by the Python host;
- the same for the requests that asked the host for its hosts (the first after each
  tick: the plugin keeps the answer until the next one) and for the others;
- secondary, times: inside the VM calls less the host's imports (perf_counter; the
  wasmtime-py boundary crossings dominate it), inside the host's imports (the Python
  model of Higress, its serialization of the hosts included: not Envoy's C++ cost), and
  the tier's CPU time per request (``time.process_time`` around the loop).

The two gateways are built once; rounds alternate them; each ratio 1,000 / 10 is taken
per round, its median and spread reported. Goal: the plugin's own work per request does
not grow with the number of hosts (instructions ratio <= 1.10).
"""

from __future__ import annotations

import gc
import os
import sys
import time

from measure import log, spread

from testbed.higress import plugin_config
from testbed.paths import REPO

HOST_COUNTS = (10, 1000)
REGISTERED = 10
GOAL = 1.10
STEP_MS = 5
UPSTREAM_HOSTS = "proxy_get_upstream_hosts"


def higress_wasm() -> str:
    return os.environ.get("NIG_HIGRESS_WASM") or str(REPO / "build" / "plugin.wasm")


def host_tier():
    """tests/hosttier/gateway.py (it needs wasmtime, in the tool cache's venv)."""
    tier = str(REPO / "tests" / "hosttier")
    if tier not in sys.path:
        sys.path.insert(0, tier)
    import gateway

    return gateway


def higress_gateway(wasm: str, hosts: int):
    """One VM playing a Higress worker: ``REGISTERED`` instances in Nacos, all of them in
    the routed cluster, which lists ``hosts`` hosts in all (the rest stale)."""
    registered = [f"10.0.0.{i + 1}:8080" for i in range(REGISTERED)]
    stale = [f"10.{1 + i // 250}.{i % 250}.1:8080" for i in range(hosts - REGISTERED)]
    tier = host_tier()
    nacos = tier.ScriptedNacos()
    for ep in registered:
        nacos.register(ep)
    gw = tier.Gateway(
        wasm,
        plugin_config({"routing": "higress"}),
        mode="higress",
        cluster_hosts={ep: "Healthy" for ep in registered + stale},
        nacos=nacos,
        workers=1,
        count_fuel=True,
    )
    if not all(vm.configured for vm in gw.vms):
        raise RuntimeError(f"the plugin refused its configuration: {gw.vms[0].logs[-5:]}")
    gw.advance(2500)  # the first poll
    return gw


def drive(gw, requests: int, rps: int) -> dict:
    """``requests`` requests at ``rps`` of simulated time; the figures of the requests."""
    vm = gw.vms[0]
    per_step = max(1, rps * STEP_MS // 1000)
    # requests, Wasm instructions, ns inside VM calls, ns inside host imports
    sums = {"asked": [0, 0, 0, 0], "kept": [0, 0, 0, 0]}
    routed0 = gw.stat("routed")
    cpu = 0.0
    sent = 0
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        while sent < requests:
            batch = min(per_step, requests - sent)
            c0 = time.process_time()
            for _ in range(batch):
                asks0 = vm.count.get(UPSTREAM_HOSTS, 0)
                fuel0, call0, host0 = vm.fuel_used(), vm.call_ns, vm.host_ns
                out = gw.request()
                if out.status != 200:
                    raise RuntimeError(f"request failed in the host tier: {out}")
                s = sums["asked" if vm.count.get(UPSTREAM_HOSTS, 0) > asks0 else "kept"]
                s[0] += 1
                s[1] += vm.fuel_used() - fuel0
                s[2] += vm.call_ns - call0
                s[3] += vm.host_ns - host0
            cpu += time.process_time() - c0
            sent += batch
            gw.advance(STEP_MS)
    finally:
        if was_enabled:
            gc.enable()
    n = sum(s[0] for s in sums.values())

    def per(kind, i):
        s = sums[kind]
        return s[i] / s[0] if s[0] else float("nan")

    return {
        "requests": n,
        "instructions": sum(s[1] for s in sums.values()) / n,
        "asked": sums["asked"][0],
        "asked_instructions": per("asked", 1),
        "kept_instructions": per("kept", 1),
        "vm_us": sum(s[2] - s[3] for s in sums.values()) / 1000 / n,
        "host_us": sum(s[3] for s in sums.values()) / 1000 / n,
        "tier_cpu_us": cpu * 1e6 / n,
        "routed": gw.stat("routed") - routed0,
    }


def section_higress(args, res: dict) -> None:
    wasm = higress_wasm()
    if not os.path.exists(wasm):
        raise RuntimeError(f"{wasm} missing: run `make build`")
    gateways = {n: higress_gateway(wasm, n) for n in HOST_COUNTS}
    for gw in gateways.values():  # warm-up
        drive(gw, min(500, args.higress_requests), args.higress_rps)
    calls = {}
    for n, gw in gateways.items():
        before = dict(gw.vms[0].count)
        gw.request()
        calls[n] = {k: v - before.get(k, 0) for k, v in gw.vms[0].count.items() if v != before.get(k, 0)}
    rounds = {n: [] for n in HOST_COUNTS}
    order = list(HOST_COUNTS)
    for rnd in range(args.higress_rounds):
        for n in order:
            r = drive(gateways[n], args.higress_requests, args.higress_rps)
            rounds[n].append(r)
            log(
                f"round {rnd + 1} {n:>5} hosts: {r['instructions']:.0f} Wasm instructions/request (asking the "
                f"host {r['asked_instructions']:.0f}, keeping its answer {r['kept_instructions']:.0f}; "
                f"{r['asked']} of {r['requests']} asked); VM calls {r['vm_us']:.1f} us, host imports "
                f"{r['host_us']:.1f} us, tier CPU {r['tier_cpu_us']:.1f} us per request; routed {r['routed']}"
            )
        order.reverse()
    small, big = HOST_COUNTS
    ratios = {}
    for key in ("instructions", "asked_instructions", "kept_instructions", "vm_us", "host_us", "tier_cpu_us"):
        per_round = [b[key] / a[key] for a, b in zip(rounds[small], rounds[big], strict=True) if a[key]]
        med, lo, hi = spread(per_round)
        ratios[key] = {"median": med, "min": lo, "max": hi}
    res["higress"] = {
        "rounds": rounds,
        "ratios": ratios,
        "calls_per_request": calls,
        "requests": args.higress_requests,
        "rps": args.higress_rps,
        "tick_ms": gateways[small].vms[0].tick_ms,
    }
    r = ratios["instructions"]
    log(
        f"plugin's Wasm instructions per request, {big} / {small} hosts: {r['median']:.3f} "
        f"({r['min']:.3f}-{r['max']:.3f}); goal <= {GOAL:.2f}: {'met' if r['median'] <= GOAL else 'missed'}"
    )
