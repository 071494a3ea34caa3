"""Section ``instructions``: a guarded request's path counted in Wasm instructions, in
the host tier (tests/hosttier: wasmtime with fuel, exact and untouched by the machine's
load), for the upstream-Envoy artifact (build/plugin-envoy.wasm, header mode) and for
the overhead section's minimal filter, plain and making the plugin's host calls
(``gateways.PLUGIN_HOST_CALLS``). Per request and per callback the VM runs: context
create, request headers, response headers, done, log, delete.

The CPU-per-request ratios of the overhead section say how much the plugin costs Envoy;
this says how much of it is the plugin's own Wasm, and where. The minimal filter is
built with opt-level "s", the plugin with "z" (to stay under 300 KB): the SDK's
callbacks cost more in the plugin for that reason alone.
"""

from __future__ import annotations

from gateways import MINIMAL_WASM, PLUGIN_HOST_CALLS, ensure_minimal_filter
from higress_path import host_tier
from measure import log

from testbed.higress import plugin_config
from testbed.paths import REPO

REQUEST_CALLBACKS = (
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_response_headers",
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_delete",
)
INSTANCES = ("10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080")
# The status an import the host does not offer answers with (proxy-wasm ABI 0.2.1).
UNIMPLEMENTED = 12


def minimal_vm_class(gateway):
    """The tier's VM with the imports the SDK links into the minimal filter but the
    plugin never uses (shared queues, foreign functions), answered as unimplemented."""

    class MinimalVm(gateway.Vm):
        def env__proxy_enqueue_shared_queue(self, caller, *args):
            return UNIMPLEMENTED

        def env__proxy_resolve_shared_queue(self, caller, *args):
            return UNIMPLEMENTED

        def env__proxy_call_foreign_function(self, caller, *args):
            return UNIMPLEMENTED

    return MinimalVm


def counted_gateway(wasm: str, minimal_ops: str | None):
    """One VM in override_host mode: the plugin (``minimal_ops`` None) or the minimal
    filter with those operations; three instances registered, polled once."""
    gateway = host_tier()
    nacos = gateway.ScriptedNacos()
    for endpoint in INSTANCES:
        nacos.register(endpoint)
    cfg = plugin_config({"routing": "header"})
    gw = gateway.Gateway(
        str(REPO / "build" / "plugin-envoy.wasm"),
        cfg,
        mode="override_host",
        nacos=nacos,
        workers=1,
        count_fuel=True,
        cluster_hosts=dict.fromkeys(INSTANCES, "Healthy"),
    )
    if minimal_ops is not None:
        gw.vms = [minimal_vm_class(gateway)(gw.p, wasm, minimal_ops.encode(), False, False, seed=0, count_fuel=True)]
    if not gw.vms[0].configured:
        raise RuntimeError(f"{wasm} refused its configuration: {gw.vms[0].logs[-5:]}")
    gw.advance(2500)  # the plugin's first poll
    return gw


def count_requests(gw, requests: int, headers: dict | None = None) -> dict:
    """Wasm instructions per request, per callback, over ``requests`` requests with
    ``headers`` (the clock moves 5 ms every 10 requests, so ticks and polls run
    between them)."""
    spent = gw.vms[0].fuel_by_export
    before = {k: spent.get(k, 0) for k in REQUEST_CALLBACKS}
    statuses: dict = {}
    for i in range(requests):
        status = gw.request(headers=headers).status
        statuses[status] = statuses.get(status, 0) + 1
        if i % 10 == 9:
            gw.advance(5)
    per = {k: (spent.get(k, 0) - before[k]) / requests for k in REQUEST_CALLBACKS}
    return {"total": sum(per.values()), "callbacks": per, "statuses": statuses}


PIN_HEADER = {"x-nacos-instance": INSTANCES[1]}
PLUGIN_GUARDED = "the plugin (guarded route, header mode)"
PLUGIN_PINNED = "the plugin, pin header on every request"
MINIMAL_HOST_CALLS = "the minimal filter making the plugin's host calls"
MINIMAL_PLAIN = "the minimal filter (sets one header)"
# name: (minimal-filter operations or None for the plugin, request headers)
VARIANTS = {
    PLUGIN_GUARDED: (None, None),
    PLUGIN_PINNED: (None, PIN_HEADER),
    MINIMAL_HOST_CALLS: (f"{PLUGIN_HOST_CALLS},route={'|'.join(INSTANCES)}", None),
    MINIMAL_PLAIN: ("set", None),
}


def section_instructions(args, res: dict) -> None:
    ensure_minimal_filter()
    passes = []
    for _ in range(2):  # the count is exact: both passes must agree to the instruction
        figures = {}
        for name, (ops, headers) in VARIANTS.items():
            gw = counted_gateway(str(MINIMAL_WASM), ops)
            count_requests(gw, 200, headers)  # warm-up
            figures[name] = count_requests(gw, args.instruction_requests, headers)
            f = figures[name]
            log(f"{name}: {f['total']:.0f} Wasm instructions per request, statuses {f['statuses']}")
        passes.append(figures)
    res["instructions"] = {
        "requests": args.instruction_requests,
        "figures": passes[0],
        "passes_agree": all(abs(passes[0][n]["total"] - passes[1][n]["total"]) < 1 for n in VARIANTS),
    }
