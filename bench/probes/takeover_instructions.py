#!/usr/bin/env python3
"""What a lease takeover costs at guardNacosRoutes' bound, exactly: the host tier
(tests/hosttier, wasmtime) runs build/plugin.wasm as a Higress gateway of two workers
with ``guardNacosRoutes`` (``maxServices`` N) whose learned list in shared data holds N
services; the poller stalls (its VM no longer ticks), and the other VM takes the lease
on a tick that reads the list and starts guarding every service. Printed: the Wasm
instructions (wasmtime fuel) of that tick, of a follower's request that learns the last
service the bound allows (and hands it in to the poller through the learned list's
inbox), of the follower's next tick and the tick after, and of the new poller's next
tick.

Run (with the tool cache's venv): python bench/probes/takeover_instructions.py [N] [wasm]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "hosttier"))

import gateway as tier  # noqa: E402

from testbed.higress import plugin_config  # noqa: E402


def tick_fuel(vm) -> int:
    before = vm.fuel_used()
    vm.call("proxy_on_tick", vm.ROOT_ID)
    return vm.fuel_used() - before


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    wasm = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "build" / "plugin.wasm")
    cfg = plugin_config({"routing": "higress", "guardNacosRoutes": {"maxServices": count}})
    cfg.pop("service", None)
    gw = tier.Gateway(wasm, cfg, mode="higress", cluster_hosts={}, workers=2, count_fuel=True)
    gw.advance(200)
    # The poller renews the lease and writes the heartbeat on its ticks: they cost more.
    ticks = [vm.fuel_by_export.get("proxy_on_tick", 0) for vm in gw.vms]
    heir_index = 0 if ticks[0] < ticks[1] else 1
    heir = gw.vms[heir_index]
    # The list's key is named by the guardNacosRoutes settings: found where the
    # plugin writes it once a request learned a service and the poller ticked. A path
    # outside the configuration's rules, so the cluster decides.
    gw.backend_cluster = "outbound|8080||svc-0.DEFAULT-GROUP.public.nacos"
    gw.request(path="/learn", vm=0)
    # The request hands the service in; the poller's tick lists it.
    for vm in gw.vms:
        vm.call("proxy_on_tick", vm.ROOT_ID)
    learned = next(key for key in gw.p.shared if key.endswith(".learned"))

    def list_services(n: int) -> None:
        hosts = "\n".join(f"svc-{i}.DEFAULT-GROUP.public.nacos" for i in range(n)).encode()
        gw.p.next_cas += 1
        gw.p.shared[learned] = (hosts, gw.p.next_cas)

    list_services(count - 1)
    # A follower's request learns the last service the bound allows, and hands
    # it in to the poller.
    gw.backend_cluster = f"outbound|8080||svc-{count - 1}.DEFAULT-GROUP.public.nacos"
    before = heir.fuel_used()
    gw.request(path="/learn", vm=heir_index)
    learning_request = heir.fuel_used() - before
    listing_tick = tick_fuel(heir)
    follower_tick = tick_fuel(heir)
    # The request hands the service in to the poller (the learned list's inbox,
    # a few small values), whose tick lists it.
    last = f"svc-{count - 1}.DEFAULT-GROUP.public.nacos".encode()
    places = (value for key, (value, _) in gw.p.shared.items() if key.startswith(f"{learned}.inbox."))
    if not any(value.endswith(last) for value in places):
        raise SystemExit("the follower's request did not hand in the service it learned")
    gw.vms = [heir]  # the poller stalls before it reads the list: its VM ticks no more
    # The heir's ticks until it holds the lease and guards the listed services.
    spent = 0
    for _ in range(2_000):
        gw.p.now_ms += 10
        before = heir.fuel_used()
        heir.run_due()
        spent = max(spent, heir.fuel_used() - before)
    if gw.p.stats.get("nacos_guard.learned_services", 0) != count:
        raise SystemExit(f"the heir guards {gw.p.stats.get('nacos_guard.learned_services')} services, not {count}")
    next_tick = tick_fuel(heir)
    for what, figure in (
        ("the request that learns the last one", f"{learning_request / 1e3:.1f} k"),
        ("the follower's next tick", f"{listing_tick / 1e3:.1f} k"),
        ("the tick after", f"{follower_tick / 1e3:.1f} k"),
        ("the takeover tick (the costliest of 20 s)", f"{spent / 1e6:.1f} M"),
        ("the new poller's next tick", f"{next_tick / 1e6:.2f} M"),
    ):
        print(f"{count} learned services: {what} {figure} Wasm instructions")


if __name__ == "__main__":
    main()
