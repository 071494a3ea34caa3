"""The host tier (tests/hosttier) against real Envoy: one scenario, the same transcript.

The upstream-Envoy artifact runs the scenario of tests/hosttier/scenario.py in real
Envoy 1.40 with r-nacos and in the host tier with its scripted Nacos, in both plain-Envoy
routing modes: which backend answered, rejections and their codes, what reached the
upstream (routing header, body length) and the plugin's counters must all agree.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hosttier"))

import scenario  # noqa: E402

from testbed.paths import plugin_wasm  # noqa: E402
from testbed.real_gateway import RealGateway  # noqa: E402


class RealDriver:
    def __init__(self, gw: RealGateway):
        self.gw = gw
        self.addr = {name: b.addr for name, b in gw.backends.items()}

    def register(self, name):
        self.gw.register(name)

    def deregister(self, name):
        self.gw.deregister(name)

    def settle(self):
        self.gw.settle()

    def request(self, method="GET", path="/demo", headers=None, body=b""):
        seen_before = {n: len(b.seen) for n, b in self.gw.backends.items()}
        status, text, backend = self.gw.request(method, path, headers, body or None)
        new = [b.seen[-1] for n, b in self.gw.backends.items() if len(b.seen) > seen_before[n]]
        header, length = (new[0][1], new[0][2]) if new else (None, 0)
        return scenario.observation(status, text.encode(), backend, header is not None, length)

    def counters(self):
        return {c: self.gw.envoy.guard_stat(c) for c in scenario.COUNTERS}


@pytest.mark.parametrize("mode", ["override_host", "original_dst"])
def test_tier_and_real_envoy_agree(tmp_path, mode):
    gw = RealGateway(tmp_path, mode, ["a", "b", "c"])
    try:
        real = scenario.run(RealDriver(gw), mode)
        tier = scenario.run(scenario.TierDriver(plugin_wasm(), mode, {n: b.addr for n, b in gw.backends.items()}), mode)
    finally:
        gw.stop()
    for step_real, step_tier in zip(real, tier, strict=False):
        print("real:", step_real, "\ntier:", step_tier)
    assert real == tier
