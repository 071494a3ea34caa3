#!/usr/bin/env python3
"""The plugin's own work at rest with many services, exactly: the host tier
(tests/hosttier, wasmtime) runs build/plugin.wasm as a Higress gateway of two workers
guarding ``N`` services (10 instances each, one rule each) polled every second, and
counts the Wasm instructions (wasmtime fuel) of every call into each VM over 5 s of
simulated time after 5 s of warm-up; per second, by callback. Which VM polls is the
one that took the lease; the other follows.

With ``changing`` as a third argument every answer differs from the one before (the
first instance's weight alternates between 1 and 2), so each is parsed and published:
the cost of reading an answer, where at rest an unchanged answer is matched unparsed.

Run (with the tool cache's venv): python bench/probes/rest_instructions.py [N] [wasm] [changing]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "hosttier"))

import gateway as tier  # noqa: E402

from testbed.higress import plugin_config, with_rules  # noqa: E402

SECONDS = 5


class ChangingNacos(tier.ScriptedNacos):
    """Every answer for a service differs from its last: the first instance's weight alternates."""

    def answer(self, headers: dict, body: bytes):
        name = dict(tier.urllib.parse.parse_qsl(tier.urllib.parse.urlsplit(headers.get(":path", "")).query)).get(
            "serviceName", ""
        )
        instances = self.services.get(name, {})
        if instances:
            first = instances[next(iter(instances))]
            first["weight"] = 3.0 - first["weight"]
        return super().answer(headers, body)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    wasm = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "build" / "plugin.wasm")
    changing = len(sys.argv) > 3 and sys.argv[3] == "changing"
    nacos = ChangingNacos() if changing else tier.ScriptedNacos()
    for s in range(count):
        for i in range(10):
            nacos.register(f"10.{s // 250}.{s % 250}.{i + 1}:8080", service=f"svc-{s}")
    rules = [{"_match_route_": [f"route-{s}"], "service": {"name": f"svc-{s}"}} for s in range(count)]
    cfg = with_rules(plugin_config({"routing": "higress"}), rules)
    gw = tier.Gateway(wasm, cfg, mode="higress", cluster_hosts={}, nacos=nacos, workers=2, count_fuel=True)
    gw.advance(SECONDS * 1000)
    for vm in gw.vms:
        vm.fuel_by_export.clear()
    calls = len(nacos.calls)
    gw.advance(SECONDS * 1000)
    answers = (len(nacos.calls) - calls) / SECONDS
    kind = "every answer changed" if changing else "answers unchanged"
    print(f"{count} services ({kind}): {answers:.0f} Nacos calls a second")
    for k, vm in enumerate(gw.vms):
        per_vm = vm.fuel_by_export
        total = sum(per_vm.values()) / SECONDS
        parts = ", ".join(f"{export} {n / SECONDS / 1e6:.2f} M" for export, n in sorted(per_vm.items()))
        print(f"VM {k}: {total / 1e6:.2f} M Wasm instructions a second ({parts})")
        answered = per_vm.get("proxy_on_http_call_response", 0) / SECONDS
        if answered and answers:
            print(f"VM {k}: {answered / answers / 1e3:.1f} k instructions per answer")


if __name__ == "__main__":
    main()
