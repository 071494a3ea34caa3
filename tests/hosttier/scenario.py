"""One scripted scenario, run unchanged against the host tier and against real Envoy.

A driver knows three backends by name: `a` and `b` get registered in Nacos, `c` is only
in the gateway's stale cluster. The scenario returns a transcript of what it saw
(statuses, which backend answered, rejection codes, what the upstream received, counter
deltas); the cross-check asserts the two transcripts are equal.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from gateway import Gateway, ScriptedNacos

PLUGIN_YAML = Path(__file__).resolve().parent.parent.parent / "plugin.yaml"
ROUTING_HEADER = "x-gateway-destination-endpoint"
PIN_HEADER = "x-nacos-instance"
COUNTERS = ("routed", "rerouted", "rejected", "passed_through")


def plugin_config(global_overrides: dict | None = None, demo_overrides: dict | None = None) -> dict:
    """plugin.yaml as the Higress controller hands it to the plugin: defaultConfig plus one
    `_rules_` entry per matchRule (`ingress` -> `_match_route_`)."""
    spec = yaml.safe_load(PLUGIN_YAML.read_text())["spec"]
    out = copy.deepcopy(spec.get("defaultConfig") or {})
    out.update(global_overrides or {})
    rules = []
    for match in spec.get("matchRules") or []:
        rule = copy.deepcopy(match.get("config") or {})
        if match.get("ingress"):
            rule["_match_route_"] = list(match["ingress"])
            if "default/demo" in match["ingress"]:
                rule.update(demo_overrides or {})
        rules.append(rule)
    out["_rules_"] = rules
    return out


class TierDriver:
    """The scenario's view of the host tier."""

    def __init__(self, wasm: str, mode: str, addresses: dict, plugin_cfg: dict | None = None, **gateway_args):
        self.addr = addresses  # name -> "ip:port"
        self.names = {v: k for k, v in addresses.items()}
        self.nacos = ScriptedNacos()
        self.gw = Gateway(
            wasm,
            plugin_cfg or plugin_config(),
            mode=mode,
            nacos=self.nacos,
            cluster_hosts={ep: "Healthy" for ep in addresses.values()},
            **gateway_args,
        )
        self.received: dict = {}
        for name, ep in addresses.items():
            self.gw.backends[ep] = self._backend(name)

    def _backend(self, name):
        def answer(method, headers, body):
            self.received[name] = (headers.get(ROUTING_HEADER), len(body))
            return 200, name.encode()

        return answer

    def register(self, name):
        self.nacos.register(self.addr[name])

    def deregister(self, name):
        self.nacos.deregister(self.addr[name])

    def settle(self):
        self.gw.advance(2500)

    def request(self, method="GET", path="/demo", headers=None, body=b"") -> dict:
        self.received.clear()
        out = self.gw.request(method, path, headers or {}, body_chunks=[body] if body else ())
        assert not out.hung, f"{method} {path}: the upstream never got the whole request"
        seen = next(iter(self.received.values()), (None, 0))
        return observation(
            out.status,
            out.body,
            self.names.get(out.upstream) if out.status == 200 else None,
            seen[0] is not None,
            seen[1],
        )

    def counters(self) -> dict:
        return {c: self.gw.stat(c) for c in COUNTERS}


def observation(status, body: bytes, backend: str | None, header_seen: bool, body_len: int) -> dict:
    obs = {"status": status, "backend": backend}
    if status == 200:
        obs.update(upstream_saw_routing_header=header_seen, upstream_body_len=body_len)
    elif body[:1] == b"{":
        obs["code"] = json.loads(body)["code"]
    return obs


def run(d, mode: str) -> list:
    """The scenario. `d` is a driver: register, deregister, settle, request, counters."""
    t = []
    d.register("a")
    d.register("b")
    d.settle()
    start = d.counters()

    got = {d.request()["backend"] for _ in range(8)}
    t.append(("GET, a and b registered: backends", sorted(map(str, got))))
    pinned = [d.request(headers={PIN_HEADER: d.addr["a"]})["backend"] for _ in range(3)]
    t.append(("pinned to a", pinned))
    forged = {d.request(headers={ROUTING_HEADER: d.addr["c"]})["backend"] for _ in range(4)}
    t.append(("forged routing header to c: c reached", "c" in forged))
    # Pinned, so that the answer does not depend on which worker got the request.
    t.append(("POST 1000 bytes, pinned to a", d.request("POST", headers={PIN_HEADER: d.addr["a"]}, body=b"x" * 1000)))
    legacy = d.request(path="/legacy", headers={ROUTING_HEADER: d.addr["c"]})
    # Unguarded route: the forged header is removed; the gateway's own balancing decides.
    t.append(
        (
            "legacy route, forged header: status, header reached upstream",
            legacy["status"],
            legacy.get("upstream_saw_routing_header"),
        )
    )

    d.deregister("b")
    d.settle()
    t.append(("b deregistered: backends", sorted({str(d.request()["backend"]) for _ in range(6)})))
    t.append(("pinned to deregistered b", [d.request(headers={PIN_HEADER: d.addr["b"]}) for _ in range(2)]))

    d.deregister("a")
    d.settle()
    t.append(("nothing registered", [d.request() for _ in range(3)]))
    t.append(("POST, nothing registered", d.request("POST", body=b"y" * 10)))

    end = d.counters()
    t.append(("counter deltas", {c: end[c] - start[c] for c in COUNTERS}))
    return t
