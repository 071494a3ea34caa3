"""A small proxy-wasm host on wasmtime: a test double of Higress / Envoy for the built plugin.

It loads the exact module `make build` writes, implements every import the module has
(ABI 0.2.1 `env.proxy_*`, the WASI calls, Higress's two), and models the gateway's
behaviour as the sources show it. Sources, by repository and path:

- cpp-host = higress-group/proxy-wasm-cpp-host (the ABI host Higress links):
  src/context.cc `ContextBase::onRequestHeaders` holds a `DeferAfterCallActions` for the
  whole call, so actions queued during the callback run when it returns, before its
  status reaches the filter manager; `convertVmCallResultToFilterHeadersStatus` turns
  StopIteration into StopAllIterationAndWatermark for ABI 0.2.x; src/exports.cc
  `get_upstream_hosts` (pairs), `set_upstream_override_host`, `http_call`;
  src/shared_data.cc (CAS); include/proxy-wasm/wasm.h (metric ids carry their type).
- envoy = higress-group/envoy: source/extensions/common/wasm/context.cc
  `Context::continueStream` / `closeStream` / `sendLocalResponse` queue their work with
  `addAfterVmCallAction`; every request-header add/replace/remove clears the route cache
  (under HIGRESS unless the `clear_route_cache` property is `off`);
  source/common/http/filter_manager.cc `commonContinue` / `commonHandleAfterHeadersCallback`
  (a continue that runs before the status is recorded lets the headers go, then the
  StopAll status holds every body frame); source/common/router/router.h
  `overrideHostToSelect` returns nothing on a retry; source/common/upstream/host_utility.cc
  `selectOverrideHost` honours an override only for a host in the cluster with an allowed
  health status (default UNKNOWN, HEALTHY, DEGRADED: api/envoy/config/cluster/v3/cluster.proto).
- strict override: upstream Envoy's envoy/upstream/load_balancer.h `OverrideHost` is
  (address, strict); strict with no valid host makes the load balancer return no host (503).
- upstream Envoy (envoyproxy/envoy) source/extensions/load_balancing_policies/override_host/
  load_balancer.cc: each attempt consumes the next address of the header's list; when none
  is left the fallback policy picks.
- health_status values: higress-group/higress plugins/wasm-go/extensions/ai-load-balancer/
  global_least_request/lb_policy.go reads `health_status` == "Healthy" from each host's JSON.

Simplifications, on purpose: one downstream request at a time; the cluster's own load
balancing is round robin over Healthy/Degraded hosts (all hosts when none is); a request
whose body never reaches the upstream is reported as `hung` instead of waiting for a timeout.
"""

from __future__ import annotations

import json
import random
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

import wasmtime

# proxy-wasm ABI constants (proxy-wasm/proxy-wasm-rust-sdk 0.2.x src/types.rs).
OK, NOT_FOUND, BAD_ARGUMENT, CAS_MISMATCH, UNIMPLEMENTED, EMPTY = 0, 1, 2, 8, 12, 7
REQUEST_HEADERS, HTTP_CALL_RESPONSE_HEADERS = 0, 6
REQUEST_BODY, HTTP_CALL_RESPONSE_BODY, VM_CONFIGURATION, PLUGIN_CONFIGURATION = 0, 4, 6, 7
CONTINUE, PAUSE = 0, 1
STREAM_REQUEST = 0
COUNTER, GAUGE = 0, 1

EPOCH_MS = 1_800_000_000_000


def pairs_bytes(pairs) -> bytes:
    """The proxy-wasm serialized map: count, (key len, value len)*, then key NUL value NUL."""
    out = struct.pack("<I", len(pairs))
    enc = [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
    for k, v in enc:
        out += struct.pack("<II", len(k), len(v))
    for k, v in enc:
        out += k + b"\0" + v + b"\0"
    return out


def parse_pairs(data: bytes) -> list:
    if len(data) < 4:
        return []
    (count,) = struct.unpack_from("<I", data, 0)
    lens = [struct.unpack_from("<II", data, 4 + 8 * i) for i in range(count)]
    pos, out = 4 + 8 * count, []
    for kl, vl in lens:
        key = data[pos : pos + kl].decode()
        pos += kl + 1
        out.append((key, data[pos : pos + vl].decode(errors="replace")))
        pos += vl + 1
    return out


# ------------------------------------------------------------------ the world around the VMs


# What Envoy 1.40 reported for a refused connection in tests/e2e/test_failed_instance.py.
REFUSED_DETAILS = (
    "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"
)


class ScriptedNacos:
    """Answers the plugin's v1 list and login calls from a dict of services."""

    def __init__(self):
        self.services: dict = {}  # service -> {endpoint: {"weight":, "healthy":, "enabled":}}
        self.calls: list = []
        self.fail_with: int | None = None

    def register(self, endpoint: str, service="demo", weight=1.0, healthy=True, enabled=True):
        self.services.setdefault(service, {})[endpoint] = dict(weight=weight, healthy=healthy, enabled=enabled)

    def deregister(self, endpoint: str, service="demo"):
        self.services.get(service, {}).pop(endpoint, None)

    def answer(self, headers: dict, body: bytes):
        path = headers.get(":path", "")
        self.calls.append(path)
        if self.fail_with:
            return self.fail_with, [], b"nacos error"
        url = urllib.parse.urlsplit(path)
        if url.path.endswith("/auth/login"):
            return 200, [("content-type", "application/json")], b'{"accessToken":"t","tokenTtl":18000}'
        q = dict(urllib.parse.parse_qsl(url.query))
        name = q.get("serviceName", "")
        hosts = []
        for ep, inst in self.services.get(name, {}).items():
            ip, port = ep.rsplit(":", 1)
            hosts.append(
                {
                    "ip": ip,
                    "port": int(port),
                    "weight": inst["weight"],
                    "healthy": inst["healthy"],
                    "enabled": inst["enabled"],
                    "ephemeral": False,
                    "clusterName": "DEFAULT",
                    "metadata": {},
                    "instanceId": f"{ep}#DEFAULT#{name}",
                }
            )
        doc = {
            "name": f"{q.get('groupName', 'DEFAULT_GROUP')}@@{name}",
            "cacheMillis": 3000,
            "hosts": hosts,
            "lastRefTime": EPOCH_MS,
            "checksum": "",
            "reachProtectionThreshold": False,
        }
        return 200, [("content-type", "application/json")], json.dumps(doc).encode()


@dataclass
class Cluster:
    """An upstream cluster as the gateway's stale endpoint list has it: address -> health."""

    name: str
    hosts: dict  # "ip:port" -> "Healthy" | "Degraded" | "Unhealthy"
    rr: int = 0

    def lb_pick(self, exclude=()) -> str | None:
        usable = [h for h, s in self.hosts.items() if s != "Unhealthy" and h not in exclude]
        usable = usable or [h for h in self.hosts if h not in exclude] or list(self.hosts)
        if not usable:
            return None
        self.rr += 1
        return usable[self.rr % len(usable)]


@dataclass
class Outcome:
    status: int | None
    body: bytes = b""
    upstream: str | None = None  # the host the (last) attempt went to
    attempts: list = field(default_factory=list)
    upstream_headers: dict = field(default_factory=dict)
    upstream_body: bytes = b""
    hung: bool = False  # the upstream never got the end of the request
    local_reply: bool = False
    route_cache_clears: int = 0
    override: str | None = None
    host_calls: dict = field(default_factory=dict)

    @property
    def json(self):
        return json.loads(self.body)


class Process:
    """What Envoy shares between its VMs: the clock, shared data, stats, clusters, Nacos."""

    def __init__(self, nacos: ScriptedNacos, clusters: dict, nacos_cluster: str):
        self.now_ms = EPOCH_MS
        self.shared: dict = {}  # key -> (bytes, cas)    cpp-host src/shared_data.cc
        self.next_cas = 0
        self.stats: dict = {}  # metric name -> value   (one stat per name, whichever VM)
        self.nacos = nacos
        self.nacos_cluster = nacos_cluster
        self.clusters = clusters


# ----------------------------------------------------------------------------------- one VM


class HostError(Exception):
    pass


class Vm:
    """One Wasm VM (one Envoy worker): its instance, root context, ticks and pending calls."""

    ROOT_ID = 1
    _modules: dict = {}
    _engine = wasmtime.Engine()
    _fuel_engine = None  # made on first use: an engine that counts fuel (Wasm instructions)
    FUEL = 10**15

    def __init__(
        self,
        process: Process,
        wasm_path: str,
        plugin_config: dict | bytes,
        higress: bool,
        strict: bool,
        seed: int,
        count_fuel: bool = False,
    ):
        self.p = process
        self.higress = higress  # Higress's host: top-level properties, override imports
        self.strict = strict
        self.rand = random.Random(seed)
        # bytes go as they are: the bench's minimal filter takes a list of operations
        self.config = plugin_config if isinstance(plugin_config, bytes) else json.dumps(plugin_config).encode()
        self.logs: list = []
        self.metric_names: dict = {}
        self.next_metric = 0
        self.tick_ms = 0
        self.next_tick_ms = 0
        self.calls: dict = {}  # token -> (due_ms, headers, body)
        self.next_token = 0
        self.call_response = None  # (headers, body) while proxy_on_http_call_response runs
        self.req = None  # the request whose callback runs now
        self.deferred: list = []  # addAfterVmCallAction queue
        self.count: dict = {}  # host call name -> count (for "work the host repeats")
        # Time (ns, perf_counter) inside calls into the VM, and inside this host's imports (bench/higress_path.py)
        self.call_ns = 0
        self.host_ns = 0
        # Wasm instructions run by each export called, with count_fuel (bench/instructions.py,
        # bench/probes/rest_instructions.py)
        self.fuel_by_export: dict = {}
        engine = self._engine
        if count_fuel:  # the bench's measure of the plugin's own work (bench/higress_path.py)
            if Vm._fuel_engine is None:
                config = wasmtime.Config()
                config.consume_fuel = True
                Vm._fuel_engine = wasmtime.Engine(config)
            engine = Vm._fuel_engine
        self.count_fuel = count_fuel
        module = self._modules.get((wasm_path, count_fuel))
        if module is None:
            module = self._modules[(wasm_path, count_fuel)] = wasmtime.Module.from_file(engine, wasm_path)
        self.store = wasmtime.Store(engine)
        if count_fuel:
            self.store.set_fuel(self.FUEL)
        linker = wasmtime.Linker(engine)
        for imp in module.imports:
            impl = getattr(self, f"{imp.module}__{imp.name}", None)
            if impl is None:
                raise HostError(f"the tier lacks import {imp.module}.{imp.name}")
            linker.define_func(
                imp.module, imp.name, imp.type, self._counted(imp.name, impl, imp.type), access_caller=True
            )
        self.instance = linker.instantiate(self.store, module)
        self.exports = self.instance.exports(self.store)
        self.memory = self.exports["memory"]
        assert "proxy_abi_version_0_2_1" in self.exports, "the module does not speak ABI 0.2.1"
        self.exports["_initialize"](self.store)
        self.call("proxy_on_context_create", self.ROOT_ID, 0)
        self.call("proxy_on_vm_start", self.ROOT_ID, 0)
        self.configured = bool(self.call("proxy_on_configure", self.ROOT_ID, len(self.config)))

    def _counted(self, name, impl, functype):
        # wasmtime hands i32 over as signed; every i32 of this ABI is a u32 (pointer, size, enum).
        unsigned = [str(t) == "i32" for t in functype.params]

        def wrapper(caller, *args):
            t0 = time.perf_counter_ns()
            self.count[name] = self.count.get(name, 0) + 1
            args = [a & 0xFFFFFFFF if u else a for a, u in zip(args, unsigned, strict=True)]
            try:
                return impl(caller, *args)
            finally:
                self.host_ns += time.perf_counter_ns() - t0

        return wrapper

    def fuel_used(self) -> int:
        """Wasm instructions run so far (wasmtime fuel), with ``count_fuel``; else 0."""
        return self.FUEL - self.store.get_fuel() if self.count_fuel else 0

    def call(self, export: str, *args):
        """Call into the VM; queued actions run when the call returns (cpp-host DeferAfterCallActions)."""
        t0, fuel0 = time.perf_counter_ns(), self.fuel_used()
        result = self.exports[export](self.store, *args)
        self.call_ns += time.perf_counter_ns() - t0
        if self.count_fuel:
            self.fuel_by_export[export] = self.fuel_by_export.get(export, 0) + self.fuel_used() - fuel0
        actions, self.deferred = self.deferred, []
        for action in actions:
            action()
        return result

    # ---- memory helpers
    def read(self, caller, ptr, size) -> bytes:
        return bytes(self.memory.read(caller, ptr, ptr + size)) if size else b""

    def text(self, caller, ptr, size) -> str:
        return self.read(caller, ptr, size).decode()

    def give(self, caller, data: bytes, ptr_ptr, size_ptr) -> int:
        """Copy data into memory the module allocates (proxy_on_memory_allocate)."""
        addr = self.exports["proxy_on_memory_allocate"](caller, len(data))
        if data:
            self.memory.write(caller, data, addr)
        self.memory.write(caller, struct.pack("<I", addr), ptr_ptr)
        self.memory.write(caller, struct.pack("<I", len(data)), size_ptr)
        return OK

    # ---- time, ticks, logs
    def env__proxy_get_current_time_nanoseconds(self, caller, ptr):
        self.memory.write(caller, struct.pack("<Q", self.p.now_ms * 1_000_000), ptr)
        return OK

    def env__proxy_set_tick_period_milliseconds(self, caller, ms):
        self.tick_ms = ms
        self.next_tick_ms = self.p.now_ms + ms
        return OK

    def env__proxy_log(self, caller, level, ptr, size):
        self.logs.append((level, self.text(caller, ptr, size)))
        return OK

    def env__proxy_get_status(self, caller, code_ptr, msg_ptr, msg_size):
        self.memory.write(caller, struct.pack("<I", 0), code_ptr)
        return self.give(caller, b"", msg_ptr, msg_size)

    def env__proxy_set_effective_context(self, caller, context_id):
        return OK

    def env__proxy_done(self, caller):
        return OK

    # ---- configuration and bodies
    def env__proxy_get_buffer_bytes(self, caller, kind, start, max_size, ptr_ptr, size_ptr):
        if kind == PLUGIN_CONFIGURATION:
            data = self.config
        elif kind == VM_CONFIGURATION:
            data = b""
        elif kind == HTTP_CALL_RESPONSE_BODY and self.call_response is not None:
            data = self.call_response[1]
        elif kind == REQUEST_BODY and self.req is not None:
            data = self.req.body_seen
        else:
            return NOT_FOUND
        return self.give(caller, data[start : start + max_size], ptr_ptr, size_ptr)

    def env__proxy_set_buffer_bytes(self, caller, kind, start, size, data_ptr, data_size):
        if kind != REQUEST_BODY or self.req is None:
            return NOT_FOUND
        body = self.req.body_seen
        self.req.body_seen = body[:start] + self.read(caller, data_ptr, data_size) + body[start + size :]
        return OK

    # ---- properties (Envoy's `route_name`/`cluster_name` and the `xds.` forms)
    def env__proxy_get_property(self, caller, path_ptr, path_size, ptr_ptr, size_ptr):
        path = self.text(caller, path_ptr, path_size).strip("\0").split("\0")
        value = self.req.properties.get(".".join(path)) if self.req is not None else None
        if value is None:
            return NOT_FOUND
        return self.give(caller, value if isinstance(value, bytes) else value.encode(), ptr_ptr, size_ptr)

    def env__proxy_set_property(self, caller, path_ptr, path_size, value_ptr, value_size):
        path = self.text(caller, path_ptr, path_size).strip("\0")
        if self.req is not None and path == "clear_route_cache":
            # envoy context.cc setProperty (HIGRESS): "off" stops header edits clearing the route cache.
            self.req.keep_route_cache = self.text(caller, value_ptr, value_size) == "off"
        return OK

    # ---- request headers; every change clears the route cache (envoy context.cc)
    def _headers(self, kind):
        if kind == REQUEST_HEADERS and self.req is not None:
            return self.req.headers
        if kind == HTTP_CALL_RESPONSE_HEADERS and self.call_response is not None:
            return self.call_response[0]
        return None

    def _modified(self, kind):
        if kind == REQUEST_HEADERS and not self.req.keep_route_cache:
            self.req.route_cache_clears += 1

    def env__proxy_get_header_map_value(self, caller, kind, key_ptr, key_size, ptr_ptr, size_ptr):
        headers = self._headers(kind)
        key = self.text(caller, key_ptr, key_size).lower()
        values = [v for k, v in headers or [] if k == key]
        if headers is None or not values:
            return NOT_FOUND
        return self.give(caller, values[0].encode(), ptr_ptr, size_ptr)

    def env__proxy_get_header_map_pairs(self, caller, kind, ptr_ptr, size_ptr):
        headers = self._headers(kind)
        if headers is None:
            return NOT_FOUND
        return self.give(caller, pairs_bytes(headers), ptr_ptr, size_ptr)

    def env__proxy_set_header_map_pairs(self, caller, kind, ptr, size):
        if self._headers(kind) is None:
            return NOT_FOUND
        self.req.headers[:] = parse_pairs(self.read(caller, ptr, size))
        self._modified(kind)
        return OK

    def env__proxy_add_header_map_value(self, caller, kind, key_ptr, key_size, value_ptr, value_size):
        headers = self._headers(kind)
        if headers is None:
            return NOT_FOUND
        headers.append((self.text(caller, key_ptr, key_size).lower(), self.text(caller, value_ptr, value_size)))
        self._modified(kind)
        return OK

    def env__proxy_replace_header_map_value(self, caller, kind, key_ptr, key_size, value_ptr, value_size):
        headers = self._headers(kind)
        if headers is None:
            return NOT_FOUND
        key = self.text(caller, key_ptr, key_size).lower()
        headers[:] = [(k, v) for k, v in headers if k != key] + [(key, self.text(caller, value_ptr, value_size))]
        self._modified(kind)
        return OK

    def env__proxy_remove_header_map_value(self, caller, kind, key_ptr, key_size):
        headers = self._headers(kind)
        if headers is None:
            return NOT_FOUND
        key = self.text(caller, key_ptr, key_size).lower()
        headers[:] = [(k, v) for k, v in headers if k != key]
        self._modified(kind)
        return OK

    # ---- stream control: deferred until the callback returns (envoy context.cc)
    def env__proxy_continue_stream(self, caller, stream):
        if self.req is not None and stream == STREAM_REQUEST:
            req = self.req
            self.deferred.append(req.continue_decoding)
        return OK

    def env__proxy_close_stream(self, caller, stream):
        if self.req is not None:
            req = self.req
            self.deferred.append(lambda: setattr(req, "reset", True))
        return OK

    def env__proxy_send_local_response(
        self, caller, status, det_ptr, det_size, body_ptr, body_size, hdr_ptr, hdr_size, grpc_status
    ):
        req, body = self.req, self.read(caller, body_ptr, body_size)
        headers = parse_pairs(self.read(caller, hdr_ptr, hdr_size))
        if req is None:
            return NOT_FOUND
        self.deferred.append(lambda: req.local_response(status, headers, body))
        return OK

    # ---- Higress's imports (cpp-host src/exports.cc)
    def env__proxy_set_upstream_override_host(self, caller, ptr, size):
        if self.req is not None:
            self.req.override = (self.text(caller, ptr, size), self.strict)
        return OK

    def env__proxy_get_upstream_hosts(self, caller, ptr_ptr, size_ptr):
        cluster = self.p.clusters.get(self.req.cluster) if self.req is not None else None
        if cluster is None:
            return NOT_FOUND
        pairs = [(h, json.dumps({"health_status": s})) for h, s in cluster.hosts.items()]
        return self.give(caller, pairs_bytes(pairs) if pairs else b"", ptr_ptr, size_ptr)

    # ---- dispatch_http_call, answered later by the scripted Nacos
    def env__proxy_http_call(
        self, caller, up_ptr, up_size, hdr_ptr, hdr_size, body_ptr, body_size, trl_ptr, trl_size, timeout_ms, token_ptr
    ):
        if self.text(caller, up_ptr, up_size) != self.p.nacos_cluster:
            return BAD_ARGUMENT  # Envoy: no such cluster
        self.next_token += 1
        headers = dict(parse_pairs(self.read(caller, hdr_ptr, hdr_size)))
        self.calls[self.next_token] = (self.p.now_ms + 5, headers, self.read(caller, body_ptr, body_size))
        self.memory.write(caller, struct.pack("<I", self.next_token), token_ptr)
        return OK

    def env__proxy_grpc_send(self, caller, *args):
        return UNIMPLEMENTED

    # The host tier scripts Nacos over HTTP only; push (gRPC) is proven against real
    # Envoy and r-nacos in tests/e2e/test_push.py.
    env__proxy_grpc_cancel = env__proxy_grpc_close = env__proxy_grpc_send
    env__proxy_grpc_call = env__proxy_grpc_stream = env__proxy_grpc_send

    def env__proxy_register_shared_queue(self, caller, *args):
        return UNIMPLEMENTED

    # The SDK imports these too; the plugin never calls them, and wasm-opt drops them
    # from build/plugin.wasm, but the raw cargo output (test_default_build.py) keeps them.
    env__proxy_dequeue_shared_queue = env__proxy_enqueue_shared_queue = env__proxy_register_shared_queue
    env__proxy_resolve_shared_queue = env__proxy_call_foreign_function = env__proxy_register_shared_queue

    # ---- shared data, process-wide, with CAS (cpp-host src/shared_data.cc)
    def env__proxy_get_shared_data(self, caller, key_ptr, key_size, ptr_ptr, size_ptr, cas_ptr):
        entry = self.p.shared.get(self.text(caller, key_ptr, key_size))
        if entry is None:
            return NOT_FOUND
        self.memory.write(caller, struct.pack("<I", entry[1]), cas_ptr)
        return self.give(caller, entry[0], ptr_ptr, size_ptr)

    def env__proxy_set_shared_data(self, caller, key_ptr, key_size, value_ptr, value_size, cas):
        key = self.text(caller, key_ptr, key_size)
        entry = self.p.shared.get(key)
        if cas and entry is not None and entry[1] != cas:
            return CAS_MISMATCH
        self.p.next_cas += 1
        self.p.shared[key] = (self.read(caller, value_ptr, value_size), self.p.next_cas)
        return OK

    # ---- metrics: one stat per name across VMs; ids carry the type in their low bits
    def env__proxy_define_metric(self, caller, kind, name_ptr, name_size, id_ptr):
        name = self.text(caller, name_ptr, name_size)
        self.next_metric += 1
        metric_id = (self.next_metric << 2) | kind
        self.metric_names[metric_id] = name
        self.p.stats.setdefault(name, 0)
        self.memory.write(caller, struct.pack("<I", metric_id), id_ptr)
        return OK

    def env__proxy_increment_metric(self, caller, metric_id, delta):
        name = self.metric_names.get(metric_id)
        if name is None:
            return NOT_FOUND
        self.p.stats[name] += delta
        return OK

    def env__proxy_record_metric(self, caller, metric_id, value):
        name = self.metric_names.get(metric_id)
        if name is None:
            return NOT_FOUND
        self.p.stats[name] = value
        return OK

    # ---- WASI
    def wasi_snapshot_preview1__random_get(self, caller, ptr, size):
        self.memory.write(caller, bytes(self.rand.getrandbits(8) for _ in range(size)), ptr)
        return 0

    def wasi_snapshot_preview1__environ_sizes_get(self, caller, count_ptr, size_ptr):
        self.memory.write(caller, struct.pack("<I", 0), count_ptr)
        self.memory.write(caller, struct.pack("<I", 0), size_ptr)
        return 0

    def wasi_snapshot_preview1__environ_get(self, caller, environ_ptr, buf_ptr):
        return 0

    def wasi_snapshot_preview1__fd_write(self, caller, fd, iovs, iovs_len, nwritten_ptr):
        total = 0
        for i in range(iovs_len):
            base, length = struct.unpack("<II", self.read(caller, iovs + 8 * i, 8))
            self.logs.append(("fd", self.read(caller, base, length).decode(errors="replace")))
            total += length
        self.memory.write(caller, struct.pack("<I", total), nwritten_ptr)
        return 0

    def wasi_snapshot_preview1__proc_exit(self, caller, code):
        raise HostError(f"proc_exit({code})")

    # ---- time passing
    def run_due(self):
        """Answer due Nacos calls, then fire the tick if due."""
        for token, (due, headers, body) in sorted(self.calls.items()):
            if due <= self.p.now_ms:
                del self.calls[token]
                status, rheaders, rbody = self.p.nacos.answer(headers, body)
                self.call_response = ([(":status", str(status))] + rheaders, rbody)
                try:
                    self.call(
                        "proxy_on_http_call_response", self.ROOT_ID, token, len(self.call_response[0]), len(rbody), 0
                    )
                finally:
                    self.call_response = None
        if self.tick_ms and self.p.now_ms >= self.next_tick_ms:
            self.next_tick_ms = self.p.now_ms + self.tick_ms
            self.call("proxy_on_tick", self.ROOT_ID)


# The plugin's request counters, counted in the VM and handed to the host per tick.
REQUEST_COUNTERS = ("routed", "rerouted", "rejected", "passed_through")

# ------------------------------------------------------------------------------ one request


class Request:
    """One downstream stream through the filter chain [plugin, router] of one VM."""

    def __init__(self, vm: Vm, method, path, headers, route, cluster, end_of_headers):
        self.vm = vm
        self.headers = [(":method", method), (":path", path), (":authority", "gateway")] + [
            (k.lower(), v) for k, v in headers.items()
        ]
        self.cluster = cluster
        self.properties = {
            "route_name": route,
            "xds.route_name": route,
            "cluster_name": cluster,
            "xds.cluster_name": cluster,
        }
        self.body_seen = b""  # body the plugin has seen / passed on
        self.override = None
        self.override_consumed = 0  # override_host policy: listed addresses used by attempts
        self.keep_route_cache = False
        self.route_cache_clears = 0
        self.reset = False
        self.local = None
        # filter_manager.cc: iteration state of the plugin filter and what the router got.
        self.stopped_all = False
        self.headers_continued = False
        self.buffered = b""
        self.request_complete = end_of_headers
        self.router_headers = None
        self.router_body = b""
        self.router_end = False

    def local_response(self, status, headers, body):
        self.local = (status, headers, body)

    def continue_decoding(self):
        """filter_manager.cc commonContinue: resume iteration, hand the headers on once."""
        if self.local is not None or self.reset:
            return
        self.stopped_all = False
        if not self.headers_continued:
            self.headers_continued = True
            self.router_headers = list(self.headers)
            self.router_end = self.request_complete and not self.buffered
        if self.buffered:
            self.router_body += self.buffered
            self.buffered = b""
            self.router_end = self.request_complete

    def after_headers(self, status):
        """filter_manager.cc commonHandleAfterHeadersCallback, with cpp-host's conversion of
        StopIteration to StopAllIterationAndWatermark for ABI 0.2.x."""
        if status == CONTINUE:
            if not self.headers_continued:
                self.headers_continued = True
                self.router_headers = list(self.headers)
                self.router_end = self.request_complete
        else:
            self.stopped_all = True


class Gateway:
    """Higress (mode "higress") or plain Envoy ("override_host", "original_dst") with the plugin.

    Routes: /demo -> route `default/demo`, /legacy -> `default/legacy`, both to
    `backend_cluster`, as tests/testbed/envoy.py sets up real Envoy.
    """

    def __init__(
        self,
        wasm_path: str,
        plugin_config: dict,
        *,
        mode="higress",
        strict=False,
        cluster_hosts: dict | None = None,
        workers=2,
        nacos: ScriptedNacos | None = None,
        backends: dict | None = None,
        retries=0,
        routing_header="x-gateway-destination-endpoint",
        count_fuel=False,
    ):
        self.mode = mode
        self.backend_cluster = "outbound|8080||demo.dns"
        self.nacos = nacos or ScriptedNacos()
        self.cluster = Cluster(self.backend_cluster, dict(cluster_hosts or {}))
        self.p = Process(self.nacos, {self.backend_cluster: self.cluster}, plugin_config["nacos"]["cluster"])
        self.p.clusters[self.p.nacos_cluster] = Cluster(self.p.nacos_cluster, {"127.0.0.1:8848": "Healthy"})
        # endpoint -> callable(method, headers, body) -> (status, body); default: 200 with its name
        self.backends = backends if backends is not None else {}
        self.retries = retries
        self.routing_header = routing_header
        self.vms = [
            Vm(self.p, wasm_path, plugin_config, mode == "higress", strict, seed=i, count_fuel=count_fuel)
            for i in range(workers)
        ]
        self.next_vm = 0
        self.next_context = 100

    # ---- time
    def advance(self, ms: int, step: int = 5):
        for _ in range(max(1, ms // step)):
            self.p.now_ms += step
            for vm in self.vms:
                vm.run_due()

    def stat(self, name: str, service: str | None = "demo") -> int:
        """A stat; request counters after a tick of every VM, which is when the plugin
        hands Envoy the requests it counted (at the same time: nothing else comes due)."""
        if name in REQUEST_COUNTERS:
            for vm in self.vms:
                vm.call("proxy_on_tick", vm.ROOT_ID)
        key = f"nacos_guard.service.public.DEFAULT_GROUP.{service}.{name}" if service else f"nacos_guard.{name}"
        return int(self.p.stats.get(key, 0))

    # ---- one request
    def request(self, method="GET", path="/demo", headers: dict | None = None, body_chunks=(), vm=None) -> Outcome:
        vm = self.vms[self.next_vm % len(self.vms)] if vm is None else self.vms[vm]
        self.next_vm += 1
        route = "default/demo" if path.startswith("/demo") else "default/legacy" if path.startswith("/legacy") else None
        chunks = [c.encode() if isinstance(c, str) else c for c in body_chunks]
        req = Request(vm, method, path, headers or {}, route, self.backend_cluster, end_of_headers=not chunks)
        before = dict(vm.count)
        self.next_context += 1
        ctx = self.next_context
        vm.req = req
        try:
            vm.call("proxy_on_context_create", ctx, Vm.ROOT_ID)
            status = vm.call("proxy_on_request_headers", ctx, len(req.headers), int(not chunks))
            # The filter manager records the status only now, after the deferred actions ran.
            req.after_headers(status)
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                req.request_complete = last
                if req.local is not None or req.reset:
                    break
                if req.stopped_all:
                    req.buffered += chunk  # held behind StopAll (filter_manager.cc decodeData)
                    continue
                req.body_seen = chunk
                vm.call("proxy_on_request_body", ctx, len(chunk), int(last))
                req.router_body += req.body_seen
                req.router_end = last
            outcome = self._finish(req)
            if req.local is None and req.router_end:
                vm.call("proxy_on_response_headers", ctx, 2, 0)
            vm.call("proxy_on_done", ctx)
            vm.call("proxy_on_log", ctx)
            vm.call("proxy_on_delete", ctx)
        finally:
            vm.req = None
        outcome.host_calls = {k: v - before.get(k, 0) for k, v in vm.count.items() if v != before.get(k, 0)}
        return outcome

    def _finish(self, req: Request) -> Outcome:
        common = dict(route_cache_clears=req.route_cache_clears, override=req.override[0] if req.override else None)
        if req.local is not None:
            status, _headers, body = req.local
            return Outcome(status, body, local_reply=True, **common)
        if req.reset:
            return Outcome(None, b"reset", **common)
        if req.router_headers is None or not req.router_end:
            return Outcome(None, b"", hung=True, upstream_headers=dict(req.router_headers or []), **common)
        headers = dict(req.router_headers)
        attempts = []
        for attempt in range(self.retries + 1):
            host = self._choose_host(req, headers, retry=attempt > 0, tried=attempts)
            if host is None:
                return Outcome(503, b"no healthy upstream", attempts=attempts, upstream_headers=headers, **common)
            attempts.append(host)
            status, body = self.backends.get(host, lambda m, h, b, host=host: (200, host.encode()))(
                headers.get(":method"), headers, req.router_body
            )
            if status is None and attempt == self.retries:
                # A backend that refuses the connection: the router's local 503 with the
                # UF flag (0x20, envoy/stream_info/stream_info.h) and its code details.
                req.properties["response.flags"] = (0x20).to_bytes(8, "little")
                req.properties["response.code_details"] = REFUSED_DETAILS
                return Outcome(503, b"upstream connect error", upstream=host, attempts=attempts, **common)
            if status is None:
                continue
            req.properties["response.flags"] = bytes(8)
            req.properties["response.code_details"] = "via_upstream"
            if status < 500 or attempt == self.retries:
                return Outcome(
                    status,
                    body,
                    upstream=host,
                    attempts=attempts,
                    upstream_headers=headers,
                    upstream_body=req.router_body,
                    **common,
                )
        raise AssertionError("unreachable")

    def _choose_host(self, req: Request, headers: dict, retry: bool, tried: list) -> str | None:
        cluster = self.cluster
        if self.mode == "higress":
            # router.h overrideHostToSelect: nothing on a retry; host_utility.cc selectOverrideHost.
            if req.override and not retry:
                address, strict = req.override
                if cluster.hosts.get(address) in ("Healthy", "Degraded"):
                    return address
                if strict:
                    return None
            return cluster.lb_pick()
        wanted = headers.get(self.routing_header)
        if self.mode == "original_dst":
            return wanted  # the header is the destination, on every attempt
        # override_host policy: each attempt consumes the next listed address, then fallback.
        listed = [h.strip() for h in wanted.split(",")] if wanted else []
        while req.override_consumed < len(listed):
            address = listed[req.override_consumed]
            req.override_consumed += 1
            if address in cluster.hosts:
                return address
        return cluster.lb_pick()
