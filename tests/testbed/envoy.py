"""Envoy: the configuration generator, the process, its admin client and stats.

The gateway configuration (one listener, one virtual host):

* routes, by default ``default/demo`` (prefix ``/demo``) and ``default/legacy``
  (prefix ``/legacy``), both to the stale backend cluster ``outbound|8080||demo.dns``,
  which lists every backend ever registered, as Higress keeps stale endpoints;
* cluster ``outbound|8848||nacos.dns`` -> the Nacos port (the plugin dispatches there).

The route names are the Higress ingress names that ``plugin.yaml``'s matchRules use, so
``_match_route_`` rules apply to them exactly as on a Higress gateway.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import yaml

from testbed.paths import envoy_bin, plugin_wasm
from testbed.processes import Proc, log_since, log_size
from testbed.waiting import Fatal, free_port, wait_until

ROUTING_HEADER = "x-gateway-destination-endpoint"
ORIGINAL_DST_HOST = "x-envoy-original-dst-host"
PIN_HEADER = "x-nacos-instance"
BACKEND_CLUSTER = "outbound|8080||demo.dns"
NACOS_CLUSTER = "outbound|8848||nacos.dns"
# The Nacos gRPC port as Higress names it: the HTTP port + 1000.
NACOS_GRPC_CLUSTER = "outbound|9848||nacos.dns"
STAT_PREFIX = "wasmcustom.nacos_guard"
# The stats tags of docs/observability.md ("Metrics"): each cuts its first group
# from wasmcustom.nacos_guard.service.<namespace>.<group>.<service>.<name> and makes
# the second a label.
STATS_TAGS = [
    {"tag_name": "nacos_namespace", "regex": r"^wasmcustom\.nacos_guard\.service\.(([^.]+)\.)[^.]+\.[^.]+\."},
    {"tag_name": "nacos_group", "regex": r"^wasmcustom\.nacos_guard\.service\.[^.]+\.(([^.]+)\.)[^.]+\."},
    {"tag_name": "nacos_service", "regex": r"^wasmcustom\.nacos_guard\.service\.[^.]+\.[^.]+\.(([^.]+)\.)"},
]


def service_stat(name: str, service: str = "demo", group: str = "DEFAULT_GROUP", namespace: str = "public") -> str:
    """The stat name of the plugin's metric ``name`` of one Nacos service."""
    return f"{STAT_PREFIX}.service.{namespace}.{group}.{service}.{name}"


FILTER_NAME = "nacos-instance-guard"
# The plugin counts requests in the VM and hands the counts to Envoy on its next
# tick (every 50 ms at most), so these lag the requests by up to one tick.
REQUEST_COUNTERS = ("routed", "rerouted", "rejected", "passed_through")
REQUEST_COUNTER_LAG_S = 0.12
EXTENSIONS = "type.googleapis.com/envoy.extensions."
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = EXTENSIONS + "filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": EXTENSIONS + "filters.http.router.v3.Router"}}


# ------------------------------------------------------------------ configuration


def settle_request_counters() -> None:
    """Wait until every request sent so far is in the request counters."""
    time.sleep(REQUEST_COUNTER_LAG_S)


def sock(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def typed(name: str, type_name: str, **fields) -> dict:
    """An extension by name with its typed config (``type_name`` under ``envoy.extensions.``)."""
    return {"name": name, "typed_config": {"@type": EXTENSIONS + type_name, **fields}}


def static_cluster(name: str, ports: Iterable[int]) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(p)}} for p in ports]}],
        },
    }


def port_list(port: int | Iterable[int]) -> list:
    """One port, or several: the hosts of a cluster (e.g. the nodes of a Nacos cluster)."""
    return [port] if isinstance(port, int) else list(port)


def grpc_cluster(name: str, port: int | Iterable[int]) -> dict:
    """A cluster Envoy speaks gRPC to: HTTP/2 cleartext, with pings so a dead peer is
    noticed (the plugin's probe notices too, this only makes it sooner). Several ports:
    one host each."""
    http2 = {"connection_keepalive": {"interval": "10s", "timeout": "5s"}}
    options = {
        "@type": EXTENSIONS + "upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": http2},
    }
    return static_cluster(name, port_list(port)) | {
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}
    }


def backend_cluster(mode: str, backend_ports: Iterable[int]) -> dict:
    """The stale backend cluster ``outbound|8080||demo.dns``.

    mode ``override_host``: STATIC cluster listing every backend ever registered, with
    the override_host load-balancing policy (header source ``x-gateway-destination-endpoint``,
    round robin as fallback when the header is absent).
    mode ``original_dst``: ORIGINAL_DST cluster that takes its destination from the
    ``x-gateway-destination-endpoint`` header.
    """
    if mode == "override_host":
        round_robin = typed(
            "envoy.load_balancing_policies.round_robin", "load_balancing_policies.round_robin.v3.RoundRobin"
        )
        override = typed(
            "envoy.load_balancing_policies.override_host",
            "load_balancing_policies.override_host.v3.OverrideHost",
            override_host_sources=[{"header": ROUTING_HEADER}],
            fallback_policy={"policies": [{"typed_extension_config": round_robin}]},
        )
        return static_cluster(BACKEND_CLUSTER, backend_ports) | {
            "load_balancing_policy": {"policies": [{"typed_extension_config": override}]}
        }
    if mode == "original_dst":
        return {
            "name": BACKEND_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "1s",
            "original_dst_lb_config": {"use_http_header": True, "http_header_name": ROUTING_HEADER},
        }
    raise ValueError(mode)


def route(name: str, prefix: str | None = None, path: str | None = None) -> dict:
    """A route to the stale backend cluster, matching a path prefix or an exact path."""
    match = {"prefix": prefix} if prefix is not None else {"path": path}
    return {"name": name, "match": match, "route": {"cluster": BACKEND_CLUSTER, "timeout": "3s"}}


DEFAULT_ROUTES = (route("default/demo", prefix="/demo"), route("default/legacy", prefix="/legacy"))


def wasm_filter(configuration: str, wasm_path: str, name: str = FILTER_NAME) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path}},
                },
            },
        },
    }


def listener(name: str, port: int, stat_prefix: str, routes: list, http_filters: list) -> dict:
    return {
        "name": name,
        "address": sock(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": HCM,
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": stat_prefix,
                            "route_config": {
                                "name": f"{name}-routes",
                                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
                            },
                            "http_filters": http_filters,
                        },
                    }
                ]
            }
        ],
    }


def envoy_config(
    listen_port: int,
    admin_port: int,
    nacos_port: int | Iterable[int],
    backend_ports: Iterable[int],
    plugin_cfg: dict | None,
    mode: str = "override_host",
    routes: Iterable[dict] | None = None,
    wasm_path: str | None = None,
    filter_name: str = FILTER_NAME,
    filter_configuration: str | None = None,
    nacos_grpc_port: int | Iterable[int] | None = None,
) -> dict:
    """The gateway: ``routes`` (default ``DEFAULT_ROUTES``) to the stale backend cluster,
    the Nacos cluster (and its gRPC cluster if ``nacos_grpc_port``; a list of ports makes
    one host of each), and, unless ``plugin_cfg`` is None, the Wasm filter
    (``wasm_path``, default the plugin; ``filter_configuration``, default ``plugin_cfg``
    as JSON)."""
    http_filters = []
    if plugin_cfg is not None:
        configuration = json.dumps(plugin_cfg) if filter_configuration is None else filter_configuration
        http_filters.append(wasm_filter(configuration, wasm_path or plugin_wasm(), filter_name))
    http_filters.append(ROUTER)
    routes = [dict(r, route=dict(r["route"])) for r in (DEFAULT_ROUTES if routes is None else routes)]
    clusters = [backend_cluster(mode, backend_ports), static_cluster(NACOS_CLUSTER, port_list(nacos_port))]
    if nacos_grpc_port is not None:
        clusters.append(grpc_cluster(NACOS_GRPC_CLUSTER, nacos_grpc_port))
    return {
        "admin": {"address": sock(admin_port)},
        "stats_config": {"stats_tags": STATS_TAGS},
        "static_resources": {
            "listeners": [listener("gateway", listen_port, "gateway", routes, http_filters)],
            "clusters": clusters,
        },
    }


def direct_response_config(admin_port: int, ports: list) -> dict:
    """One listener per port answering ``200 backend-<i>`` itself."""
    listeners = [
        listener(
            f"backend-{i}",
            port,
            f"backend_{i}",
            [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": f"backend-{i}"}}}],
            [ROUTER],
        )
        for i, port in enumerate(ports)
    ]
    return {"admin": {"address": sock(admin_port)}, "static_resources": {"listeners": listeners}}


# ------------------------------------------------------------------------ process

_BASE_ID_LOCK = threading.Lock()
_BASE_ID = [int(os.getpid()) % 20000 * 10 + 1000]


def next_base_id() -> int:
    """A ``--base-id`` of its own for each Envoy (several run side by side)."""
    with _BASE_ID_LOCK:
        _BASE_ID[0] += 1
        return _BASE_ID[0]


class Resp:
    def __init__(self, status: int, headers: dict, body: str):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def backend(self) -> str | None:
        return self.body if self.status == 200 else None

    def __repr__(self):
        return f"Resp({self.status}, {self.body[:200]!r})"


def names(responses) -> list:
    """The backend name of each 200 answer, the status of the others."""
    return [r.body if r.status == 200 else r.status for r in responses]


class EnvoyProcess:
    """One Envoy on free ports: ``config()`` (a subclass's) written to YAML, started, asked
    through its admin port. ``argv_prefix`` (e.g. taskset) goes before the command."""

    log_name = "envoy"
    LOG_TAIL = 6000

    def __init__(
        self,
        workdir: Path,
        concurrency: int = 2,
        log_level: str = "info",
        wasm_debug: bool = True,
        argv_prefix: Iterable[str] = (),
    ):
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.log_level = log_level
        self.wasm_debug = wasm_debug
        self.argv_prefix = list(argv_prefix)
        self.proc: Proc | None = None
        self._configure()

    def allocate_ports(self) -> None:
        self.port = free_port()
        self.admin_port = free_port()

    def config(self) -> dict:
        raise NotImplementedError

    def _configure(self) -> None:
        self.allocate_ports()
        self.config_path = self.workdir / f"envoy-{self.admin_port}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.log_path = self.workdir / f"envoy-{self.admin_port}.log"

    def argv(self) -> list:
        return [
            *self.argv_prefix,
            envoy_bin(),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self.concurrency),
            "--base-id",
            str(next_base_id()),
            "-l",
            self.log_level,
            *(["--component-log-level", "wasm:debug"] if self.wasm_debug else []),
            "--disable-hot-restart",
        ]

    def start(self, timeout: float = 30.0) -> None:
        for attempt in range(3):
            self.proc = Proc("envoy", self.argv(), dict(os.environ), self.log_path)

            def ready():
                if not self.proc.alive():
                    raise Fatal("envoy exited:\n" + self.proc.log_text()[-4000:])
                st, body = self.admin("/ready")
                return st == 200 and body.strip() == "LIVE"

            try:
                wait_until(ready, timeout, 0.05, "envoy /ready LIVE")
                return
            except Fatal as e:
                self.proc.stop()
                self.proc = None
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                self._configure()  # a port was taken meanwhile: new ports, try again

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None

    # ---- logs and the process
    def log_text(self) -> str:
        return log_since(self.log_path, 0)

    def log_size(self) -> int:
        return log_size(self.log_path)

    def log_since(self, offset: int) -> str:
        return log_since(self.log_path, offset)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return self.proc.rss_kb() or 0

    # ---- admin
    def admin(self, path: str):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=3)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    def stats(self, regex: str | None = None) -> dict:
        """Counters and gauges by full (untagged) name; only those matching ``regex`` if given."""
        st, body = self.admin("/stats?format=json" + ("&filter=" + urllib.parse.quote(regex) if regex else ""))
        if st != 200:
            raise RuntimeError(f"/stats: {st} {body[:200]}")
        return {s["name"]: s["value"] for s in json.loads(body).get("stats", []) if "value" in s}

    def stat(self, name: str) -> int:
        return int(self.stats("^" + re.escape(name) + "$").get(name, 0))

    def stats_matching(self, part: str) -> dict:
        return {k: v for k, v in self.stats().items() if part in k}

    def heap_allocated(self) -> int:
        st, body = self.admin("/memory")
        try:
            return int(json.loads(body).get("allocated", 0))
        except (ValueError, json.JSONDecodeError):
            return 0

    def prometheus(self) -> str:
        st, body = self.admin("/stats/prometheus")
        assert st == 200
        return body


class Envoy(EnvoyProcess):
    """The gateway: ``envoy_config`` with the plugin (unless ``plugin_cfg`` is None) in
    front of the stale backend cluster; see ``envoy_config`` for ``routes`` and the
    ``wasm_path``/``filter_*`` knobs."""

    def __init__(
        self,
        workdir: Path,
        nacos_port: int | Iterable[int],
        backend_ports: Iterable[int],
        plugin_cfg: dict | None,
        mode: str = "override_host",
        concurrency: int = 2,
        log_level: str = "info",
        routes: Iterable[dict] | None = None,
        wasm_path: str | None = None,
        filter_name: str = FILTER_NAME,
        filter_configuration: str | None = None,
        nacos_grpc_port: int | Iterable[int] | None = None,
        **process,
    ):
        self.mode = mode
        self.nacos_grpc_port = nacos_grpc_port
        self.plugin_cfg = plugin_cfg
        self.nacos_port = nacos_port
        self.backend_ports = list(backend_ports)
        self.routes = routes
        self.filter = {"wasm_path": wasm_path, "filter_name": filter_name, "filter_configuration": filter_configuration}
        super().__init__(workdir, concurrency=concurrency, log_level=log_level, **process)

    def config(self) -> dict:
        return envoy_config(
            self.port,
            self.admin_port,
            self.nacos_port,
            self.backend_ports,
            self.plugin_cfg,
            self.mode,
            self.routes,
            **self.filter,
            nacos_grpc_port=self.nacos_grpc_port,
        )

    def guard_stat(self, name: str, service: str | None = "demo", group: str = "DEFAULT_GROUP") -> int:
        """The plugin's metric ``name`` of ``service`` in ``group`` of the public
        namespace (None: a gateway-wide one). A request counter is read after the ticks
        that count every request sent so far."""
        if name in REQUEST_COUNTERS:
            settle_request_counters()
        return self.stat(service_stat(name, service, group) if service else f"{STAT_PREFIX}.{name}")

    def request(self, path: str = "/demo", headers: dict | None = None, timeout: float = 5.0) -> Resp:
        return self.raw_request(path, list((headers or {}).items()), timeout)

    def raw_request(self, path: str, headers: list, timeout: float = 5.0) -> Resp:
        """GET with a list of (name, value) pairs: repeated names and raw bytes allowed."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.putrequest("GET", path)
            for k, v in headers:
                c.putheader(k, v)
            c.endheaders()
            r = c.getresponse()
            body = r.read().decode(errors="replace")
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
        finally:
            c.close()

    def send(self, n: int, path: str = "/demo", headers: dict | None = None) -> list:
        return [self.request(path, headers) for _ in range(n)]


def route_to(name: str, prefix: str, cluster: str) -> dict:
    """A route to ``cluster`` (the stale backends under that name)."""
    return {"name": name, "match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "3s"}}


class HigressNamedEnvoy(Envoy):
    """The gateway with the stale backend cluster under each of ``clusters`` names
    instead of its own, e.g. as Higress names Nacos services
    (``outbound|8080||orders.DEFAULT-GROUP.public.nacos``); ``routes`` go to them."""

    def __init__(self, *args, clusters: Iterable[str], **kwargs):
        self.cluster_names = list(clusters)
        super().__init__(*args, **kwargs)

    def config(self) -> dict:
        config = super().config()
        clusters = config["static_resources"]["clusters"]
        stale = next(c for c in clusters if c["name"] == BACKEND_CLUSTER)
        clusters.remove(stale)
        for name in self.cluster_names:
            renamed = dict(stale, name=name)
            if "load_assignment" in stale:
                renamed["load_assignment"] = dict(stale["load_assignment"], cluster_name=name)
            clusters.append(renamed)
        return config


class DirectResponseEnvoy(EnvoyProcess):
    """An Envoy answering ``200 backend-<i>`` from a direct_response on each of ``count``
    ports: a backend far faster than the gateway under test."""

    log_name = "backend envoy"

    def __init__(self, workdir: Path, count: int, **process):
        self.count = count
        super().__init__(workdir, concurrency=1, log_level="warn", wasm_debug=False, **process)

    def allocate_ports(self) -> None:
        self.ports = [free_port() for _ in range(self.count)]
        self.port = self.ports[0]
        self.admin_port = free_port()

    def config(self) -> dict:
        return direct_response_config(self.admin_port, self.ports)


def wait_every_worker_routes(
    envoy: Envoy,
    path: str = "/demo",
    service: str = "demo",
    probes: int = 6,
    expect: set | None = None,
    timeout: float = 15,
    interval: float = 0.05,
) -> None:
    """Wait until every worker VM routes by a snapshot: the poller publishes it through
    shared data and the other VMs adopt it on their next tick; until then a worker still
    applies onStale. Settled = every one of ``probes`` requests (a new connection each,
    so spread over the workers) is routed by the plugin, and, if given, answered by
    exactly the backends ``expect``."""

    def all_routed():
        r0 = envoy.guard_stat("routed", service)
        got = {envoy.request(path).body for _ in range(probes)}
        return envoy.guard_stat("routed", service) - r0 == probes and (expect is None or got == set(expect))

    wait_until(all_routed, timeout, interval, f"every worker VM routes {service}")


def wait_first_poll(envoy: Envoy, service: str = "demo", timeout: float = 15) -> None:
    wait_until(lambda: envoy.guard_stat("poll_success", service) >= 1, timeout, 0.05, f"first poll of {service}")
