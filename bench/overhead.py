"""Section ``overhead``: requests through the same gateway without a filter, with the
minimal filter and with the plugin (and, with the breakdown, three variants that split
the plugin's cost), wrk rounds alternating the variants."""

from __future__ import annotations

from pathlib import Path

from gateways import OWNER, fast_backend, gateway, start_nacos, wait_first_snapshot
from measure import fmt_profile, log, wrk, wrk_profiled

from testbed.higress import plugin_config


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
    backend = fast_backend(work, 2)
    for port in backend.ports:
        nacos.register(port, service="demo")
    endpoint = f"127.0.0.1:{backend.ports[0]}"
    endpoints = "|".join(f"127.0.0.1:{p}" for p in backend.ports)  # in turn, like the plugin
    gateways = {
        "none": dict(plugin_cfg=None),
        "minimal": dict(plugin_cfg={}, minimal_ops="set"),
        "minimal-calls": dict(plugin_cfg={}, minimal_ops=f"remove,property,pin,metric,route={endpoints}"),
        "plugin": dict(plugin_cfg=plugin_config()),
    }
    targets = {  # variant: (gateway, path, extra wrk args)
        "no plugin": ("none", "/demo", []),
        "minimal filter": ("minimal", "/demo", []),
        "plugin": ("plugin", "/demo", []),
        "no plugin, client sets the routing header": (
            "none",
            "/demo",
            ["-H", f"x-gateway-destination-endpoint: {endpoint}"],
        ),
        "minimal filter making the plugin's host calls": ("minimal-calls", "/demo", []),
        "plugin, route switched off (enabled: false)": ("plugin", "/legacy", []),
    }
    if not args.breakdown:
        targets = {k: v for k, v in targets.items() if k in ("no plugin", "minimal filter", "plugin")}
        gateways = {k: v for k, v in gateways.items() if k in ("none", "minimal", "plugin")}
    envoys = {}
    for name, kw in gateways.items():
        envoys[name] = gateway(work, nacos.http_port, backend.ports, concurrency=1, **kw)
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
            log(
                f"round {rnd + 1} {name:>46}: {r['rps']:7.0f} rps  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                f"  non-2xx {r['non2xx']}  errors {r['socket_errors']}"
                + (f"  decided by the plugin {r['decided']}/{r['requests']}" if name == "plugin" else "")
            )
        order = order[1:] + order[:1]  # rotate who goes first
    res["overhead"] = runs
    if args.profile:
        profiles = {}
        for name in ("minimal filter", "minimal filter making the plugin's host calls", "plugin"):
            if name not in targets:
                continue
            gw, path, extra = targets[name]
            r = wrk_profiled(
                envoys[gw],
                f"http://127.0.0.1:{envoys[gw].port}{path}",
                max(args.duration, 8),
                args.connections,
                True,
                extra=extra,
            )
            if r.get("profile"):
                profiles[name] = r["profile"]
                log(f"profile {name}: {fmt_profile(r['profile'])}")
        res["overhead_profile"] = profiles
    for e in envoys.values():
        OWNER.stop(e)
    OWNER.stop(backend)
    OWNER.stop(nacos)
