"""End-to-end harness for nacos-instance-guard.

Starts real processes on 127.0.0.1 with free ports and stops them again:

* r-nacos (``NIG_RNACOS``), a Nacos-compatible registry, data dir in a tmp dir;
* small threaded HTTP backends that answer ``200 <name>`` and count their hits;
* Envoy 1.40 (``NIG_ENVOY``) with the plugin (``NIG_PLUGIN_WASM``) in front of a
  deliberately *stale* backend cluster that lists every backend ever registered,
  the way Higress keeps stale endpoints of a Nacos service.

Only the standard library and PyYAML are used, so ``demo.py`` can import it too.

Routing layout of the generated Envoy config (one listener, one virtual host):

* route ``default/demo``   matches path prefix ``/demo``   -> ``outbound|8080||demo.dns``
* route ``default/legacy`` matches path prefix ``/legacy`` -> ``outbound|8080||demo.dns``
* cluster ``outbound|8848||nacos.dns`` -> r-nacos HTTP port (the plugin dispatches there)

The route names are the Higress ingress names that ``plugin.yaml``'s matchRules use, so
``_match_route_`` rules apply to them exactly as on a Higress gateway.
"""

from __future__ import annotations

import copy
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
PLUGIN_YAML = REPO / "plugin.yaml"
CACHE = Path(os.environ.get("NIG_CACHE", str(Path.home() / ".cache" / "nacos-instance-guard")))

ROUTING_HEADER = "x-gateway-destination-endpoint"
BACKEND_CLUSTER = "outbound|8080||demo.dns"
NACOS_CLUSTER = "outbound|8848||nacos.dns"
STAT_PREFIX = "wasmcustom.nacos_guard"
SERVICE_TAG_REGEX = r"^wasmcustom\.nacos_guard\.service\.(([^.]+)\.)"


def envoy_bin() -> str:
    return os.environ.get("NIG_ENVOY", str(CACHE / "venv" / "bin" / "envoy"))


def rnacos_bin() -> str:
    if os.environ.get("NIG_RNACOS"):
        return os.environ["NIG_RNACOS"]
    for cand in (CACHE / "rnacos-0.8.8" / "bin" / "rnacos", CACHE / "rnacos" / "bin" / "rnacos"):
        if cand.exists():
            return str(cand)
    return "rnacos"


def plugin_wasm() -> str:
    return os.environ.get("NIG_PLUGIN_WASM", str(REPO / "build" / "plugin-envoy.wasm"))


# --------------------------------------------------------------------------- utils


_HANDED_OUT: set = set()
_PORT_LOCK = threading.Lock()


def free_port() -> int:
    """A free loopback port never handed out before by this process (the kernel may
    give the same ephemeral port twice in a row once the probe socket is closed)."""
    with _PORT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


class Fatal(Exception):
    """Raised inside a wait_until predicate to stop waiting at once (e.g. process died)."""


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - we report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Proc:
    """A child process in its own process group; ``stop`` kills the whole group."""

    def __init__(self, name: str, argv: list, env: dict, log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=timeout)
        self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------ backends


class Backend:
    """Threaded HTTP server answering ``200 <name>`` and counting hits (with timestamps)."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.hits = 0
        self.hit_times: list = []  # time.monotonic() of every request
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                with backend.lock:
                    backend.hits += 1
                    backend.hit_times.append(time.monotonic())
                body = backend.name.encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-backend", backend.name)
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *a):  # silence
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"backend-{name}", daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def last_hit(self) -> Optional[float]:
        with self.lock:
            return self.hit_times[-1] if self.hit_times else None

    def reset(self):
        with self.lock:
            self.hits = 0
            self.hit_times.clear()

    def stop(self):
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.server = None


# -------------------------------------------------------------------------- r-nacos


class RNacos:
    """r-nacos on free ports with its own data dir. ``stop``/``start`` keep ports and data."""

    def __init__(self, workdir: Path, auth: bool = False, login_timeout: Optional[int] = None,
                 extra_env: Optional[dict] = None):
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.data_dir = self.workdir / "rnacos-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.console_port = free_port()
        self.auth = auth
        self.login_timeout = login_timeout
        self.proc: Optional[Proc] = None
        self._token: Optional[str] = None
        self._token_at = 0.0

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "RNACOS_HTTP_PORT": str(self.http_port),
            "RNACOS_GRPC_PORT": str(self.grpc_port),
            "RNACOS_HTTP_CONSOLE_PORT": str(self.console_port),
            "RNACOS_DATA_DIR": str(self.data_dir),
            "RNACOS_ENABLE_OPEN_API_AUTH": "true" if self.auth else "false",
            "RUST_LOG": env.get("RUST_LOG", "warn"),
        })
        if self.login_timeout is not None:
            env["RNACOS_API_LOGIN_TIMEOUT"] = str(self.login_timeout)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until usable.

        r-nacos 0.8.8 has a start-up race: on a fresh data dir its raft state-apply actor
        sometimes panics (``raftapply.rs:421 unwrap on None``); the HTTP API still answers
        but persistent instances are then neither persisted nor (with auth) is the admin
        user created. We detect the panic in its log and start again on a clean data dir.
        """
        fresh = not any(self.data_dir.iterdir())
        for attempt in range(4):
            log_path = self.workdir / "rnacos.log"
            offset = log_path.stat().st_size if log_path.exists() else 0
            self.proc = Proc("rnacos", [rnacos_bin()], self.env(), log_path)

            def new_log():
                return log_path.read_bytes()[offset:].decode(errors="replace")

            def ready():
                if not self.proc.alive():
                    raise Fatal("r-nacos exited:\n" + new_log()[-3000:])
                st, _ = self.raw("GET", "/nacos/v1/ns/instance/list",
                                 {"serviceName": "__probe__", "namespaceId": "public"}, token=False)
                return st in (200, 403)

            wait_until(ready, timeout, 0.05, "r-nacos HTTP up")
            t_up = time.monotonic()
            if self.auth:
                # the admin user is created through raft ~0.5 s after start
                def login_ok():
                    if "panicked" in new_log():
                        return "panic"
                    st, _ = self.raw("POST", "/nacos/v1/auth/login", body={"username": "admin", "password": "admin"},
                                     token=False)
                    return st == 200
                try:
                    wait_until(login_ok, 20, 0.1, "r-nacos admin login")
                except TimeoutError:
                    pass
            while time.monotonic() < t_up + 0.6:
                time.sleep(0.05)
            self._token = None
            if "panicked" not in new_log():
                return
            self.proc.stop()
            self.proc = None
            if not fresh:
                raise RuntimeError("r-nacos panicked on restart with existing data:\n" + new_log()[-2000:])
            shutil.rmtree(self.data_dir)
            self.data_dir.mkdir(parents=True)
            wait_until(lambda: not port_open(self.http_port), 10, 0.05, "r-nacos port closed")
        raise RuntimeError("r-nacos kept panicking at start-up")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None
        # wait until the port is really closed
        wait_until(lambda: not port_open(self.http_port), 10, 0.05, "r-nacos port closed")

    # ---- HTTP
    def raw(self, method: str, path: str, params: Optional[dict] = None, body: Optional[dict] = None,
            token: bool = True, timeout: float = 5.0):
        params = dict(params or {})
        if token and self.auth:
            params["accessToken"] = self.token()
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = urllib.parse.urlencode(body).encode() if body is not None else None
        headers = {"content-type": "application/x-www-form-urlencoded"} if data is not None else {}
        c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            c.request(method, url, body=data, headers=headers)
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    def login(self, username="admin", password="admin"):
        st, text = self.raw("POST", "/nacos/v1/auth/login", body={"username": username, "password": password}, token=False)
        if st != 200:
            raise RuntimeError(f"login failed: {st} {text}")
        return json.loads(text)

    def token(self) -> str:
        ttl = self.login_timeout or 18000
        if self._token is None or time.monotonic() - self._token_at > ttl / 2:
            self._token = self.login()["accessToken"]
            self._token_at = time.monotonic()
        return self._token

    def _ok(self, st, text, what):
        if st != 200:
            raise RuntimeError(f"{what}: HTTP {st} {text}")
        return text

    def register(self, port: int, service: str = "demo", ip: str = "127.0.0.1", weight: float = 1.0,
                 healthy: bool = True, enabled: bool = True, group: str = "DEFAULT_GROUP",
                 cluster: str = "DEFAULT", metadata: Optional[dict] = None) -> None:
        p = {"serviceName": service, "groupName": group, "namespaceId": "public", "ip": ip, "port": port,
             "ephemeral": "false", "weight": weight, "healthy": str(healthy).lower(),
             "enabled": str(enabled).lower(), "clusterName": cluster}
        if metadata:
            p["metadata"] = json.dumps(metadata)
        self._ok(*self.raw("POST", "/nacos/v1/ns/instance", p), "register")

    def update(self, port: int, service: str = "demo", ip: str = "127.0.0.1", weight: float = 1.0,
               healthy: bool = True, enabled: bool = True, group: str = "DEFAULT_GROUP",
               cluster: str = "DEFAULT") -> None:
        p = {"serviceName": service, "groupName": group, "namespaceId": "public", "ip": ip, "port": port,
             "ephemeral": "false", "weight": weight, "healthy": str(healthy).lower(),
             "enabled": str(enabled).lower(), "clusterName": cluster}
        self._ok(*self.raw("PUT", "/nacos/v1/ns/instance", p), "update")

    def deregister(self, port: int, service: str = "demo", ip: str = "127.0.0.1", group: str = "DEFAULT_GROUP",
                   cluster: str = "DEFAULT") -> None:
        p = {"serviceName": service, "groupName": group, "namespaceId": "public", "ip": ip, "port": port,
             "ephemeral": "false", "clusterName": cluster}
        self._ok(*self.raw("DELETE", "/nacos/v1/ns/instance", p), "deregister")

    def list(self, service: str = "demo", group: str = "DEFAULT_GROUP", healthy_only: bool = False) -> dict:
        p = {"serviceName": service, "groupName": group, "namespaceId": "public",
             "healthyOnly": str(healthy_only).lower()}
        return json.loads(self._ok(*self.raw("GET", "/nacos/v1/ns/instance/list", p), "list"))


# --------------------------------------------------------------- plugin configuration


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def higress_plugin_config(wasm_plugin: dict) -> dict:
    """Convert a WasmPlugin resource the way the Higress controller does.

    spec.defaultConfig -> global fields; each matchRule -> one ``_rules_`` entry with
    ``_match_route_`` (from ``ingress``), ``_match_domain_`` (``domain``),
    ``_match_service_`` (``service``) plus the rule's ``config`` keys; a rule with
    ``configDisable: true`` is dropped.
    """
    spec = wasm_plugin["spec"]
    out = copy.deepcopy(spec.get("defaultConfig") or {})
    rules = []
    for mr in spec.get("matchRules") or []:
        if mr.get("configDisable"):
            continue
        rule = copy.deepcopy(mr.get("config") or {})
        if mr.get("ingress"):
            rule["_match_route_"] = list(mr["ingress"])
        if mr.get("domain"):
            rule["_match_domain_"] = list(mr["domain"])
        if mr.get("service"):
            rule["_match_service_"] = list(mr["service"])
        rules.append(rule)
    if rules:
        out["_rules_"] = rules
    return out


def load_plugin_yaml() -> dict:
    with open(PLUGIN_YAML) as f:
        return yaml.safe_load(f)


def plugin_config(global_overrides: Optional[dict] = None, demo_overrides: Optional[dict] = None,
                  remove_global: Iterable[str] = ()) -> dict:
    """plugin.yaml converted as Higress does, then test overrides applied.

    ``global_overrides`` deep-merge into the global (defaultConfig) fields, e.g.
    ``{"onStale": "fail_closed", "maxStaleMs": 3000, "nacos": {"username": "admin"}}``;
    ``demo_overrides`` deep-merge into the rule that matches route ``default/demo``.
    """
    cfg = higress_plugin_config(load_plugin_yaml())
    for k in remove_global:
        cfg.pop(k, None)
    if global_overrides:
        cfg = _deep_merge({k: v for k, v in cfg.items() if k != "_rules_"}, global_overrides) | (
            {"_rules_": cfg["_rules_"]} if "_rules_" in cfg else {})
    if demo_overrides:
        for r in cfg.get("_rules_", []):
            if "default/demo" in r.get("_match_route_", []):
                r.update(_deep_merge(r, demo_overrides))
    return cfg


# -------------------------------------------------------------------- Envoy config


def _sock(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _lb_endpoints(ports: Iterable[int]) -> list:
    return [{"endpoint": {"address": _sock(p)}} for p in ports]


def backend_cluster(mode: str, backend_ports: Iterable[int]) -> dict:
    """The stale backend cluster ``outbound|8080||demo.dns``.

    mode ``override_host``: STATIC cluster listing every backend ever registered, with
    the override_host load-balancing policy (header source ``x-gateway-destination-endpoint``,
    round robin as fallback when the header is absent).
    mode ``original_dst``: ORIGINAL_DST cluster that takes its destination from the
    ``x-gateway-destination-endpoint`` header.
    """
    if mode == "override_host":
        return {
            "name": BACKEND_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": BACKEND_CLUSTER, "endpoints": [{"lb_endpoints": _lb_endpoints(backend_ports)}]},
            "load_balancing_policy": {"policies": [{"typed_extension_config": {
                "name": "envoy.load_balancing_policies.override_host",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
                    "override_host_sources": [{"header": ROUTING_HEADER}],
                    "fallback_policy": {"policies": [{"typed_extension_config": {
                        "name": "envoy.load_balancing_policies.round_robin",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"},
                    }}]},
                },
            }}]},
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


def envoy_config(listen_port: int, admin_port: int, nacos_port: int, backend_ports: Iterable[int],
                 plugin_cfg: Optional[dict], mode: str = "override_host", wasm_path: Optional[str] = None) -> dict:
    http_filters = []
    if plugin_cfg is not None:
        http_filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "nacos-instance-guard",
                    "root_id": "nacos-instance-guard",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": json.dumps(plugin_cfg)},
                    "vm_config": {
                        "vm_id": "nacos-instance-guard",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm_path or plugin_wasm()}},
                    },
                },
            },
        })
    http_filters.append({"name": "envoy.filters.http.router",
                         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    route_action = {"cluster": BACKEND_CLUSTER, "timeout": "3s"}
    return {
        "admin": {"address": _sock(admin_port)},
        "stats_config": {"stats_tags": [{"tag_name": "nacos_service", "regex": SERVICE_TAG_REGEX}]},
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": _sock(listen_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": {
                            "name": "gateway-routes",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [
                                    {"name": "default/demo", "match": {"prefix": "/demo"}, "route": dict(route_action)},
                                    {"name": "default/legacy", "match": {"prefix": "/legacy"}, "route": dict(route_action)},
                                ],
                            }],
                        },
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [
                backend_cluster(mode, backend_ports),
                {
                    "name": NACOS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": NACOS_CLUSTER,
                                        "endpoints": [{"lb_endpoints": _lb_endpoints([nacos_port])}]},
                },
            ],
        },
    }


_BASE_ID_LOCK = threading.Lock()
_BASE_ID = [int(os.getpid()) % 20000 * 10 + 1000]


def _next_base_id() -> int:
    with _BASE_ID_LOCK:
        _BASE_ID[0] += 1
        return _BASE_ID[0]


class Envoy:
    def __init__(self, workdir: Path, nacos_port: int, backend_ports: Iterable[int], plugin_cfg: Optional[dict],
                 mode: str = "override_host", concurrency: int = 2, log_level: str = "info"):
        self.workdir = Path(workdir)
        self.mode = mode
        self.plugin_cfg = plugin_cfg
        self.nacos_port = nacos_port
        self.backend_ports = list(backend_ports)
        self.concurrency = concurrency
        self.log_level = log_level
        self.proc: Optional[Proc] = None
        self._configure()

    def _configure(self) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.config = envoy_config(self.port, self.admin_port, self.nacos_port, self.backend_ports,
                                   self.plugin_cfg, self.mode)
        self.config_path = self.workdir / f"envoy-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def _argv(self) -> list:
        return [envoy_bin(), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
                "--base-id", str(_next_base_id()), "-l", self.log_level,
                "--component-log-level", "wasm:debug", "--disable-hot-restart"]

    def start(self, timeout: float = 30.0) -> None:
        for attempt in range(3):
            self.proc = Proc("envoy", self._argv(), dict(os.environ), self.workdir / f"envoy-{self.port}.log")

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

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else (self.workdir / f"envoy-{self.port}.log").read_text(errors="replace")

    def admin(self, path: str):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=3)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    def stats(self) -> dict:
        """All counters and gauges by full (untagged) name."""
        st, body = self.admin("/stats?format=json")
        assert st == 200, body
        out = {}
        for s in json.loads(body).get("stats", []):
            if "value" in s:
                out[s["name"]] = s["value"]
        return out

    def stats_matching(self, part: str) -> dict:
        return {k: v for k, v in self.stats().items() if part in k}

    def guard_stat(self, name: str, service: Optional[str] = "demo") -> int:
        key = f"{STAT_PREFIX}.service.{service}.{name}" if service else f"{STAT_PREFIX}.{name}"
        return int(self.stats().get(key, 0))

    def wait_all_workers_route(self, timeout: float = 15, path: str = "/demo", probes: int = 6):
        """Wait until every worker VM routes by the first snapshot: the poller publishes
        it through shared data and the other VMs adopt it on their next tick; until
        then a worker still applies onStale. Settled = every probe request is routed."""
        def all_routed():
            r0 = self.guard_stat("routed")
            for _ in range(probes):
                self.request(path)
            return self.guard_stat("routed") - r0 == probes
        wait_until(all_routed, timeout, 0.05, "every worker VM routes with the first snapshot")

    def prometheus(self) -> str:
        st, body = self.admin("/stats/prometheus")
        assert st == 200
        return body

    def request(self, path: str = "/demo", headers: Optional[dict] = None, timeout: float = 5.0) -> "Resp":
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            body = r.read().decode(errors="replace")
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
        finally:
            c.close()


class Resp:
    def __init__(self, status: int, headers: dict, body: str):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def backend(self) -> Optional[str]:
        return self.body if self.status == 200 else None

    def __repr__(self):
        return f"Resp({self.status}, {self.body[:200]!r})"


def parse_prometheus(text: str) -> dict:
    """{(metric_name, frozenset(labels.items())): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name_labels, value = line.rsplit(" ", 1)
        except ValueError:
            continue
        labels = {}
        name = name_labels
        if "{" in name_labels:
            name, rest = name_labels.split("{", 1)
            rest = rest.rstrip("}")
            for part in rest.split('",'):
                if "=" in part:
                    k, v = part.split("=", 1)
                    labels[k.strip()] = v.strip().strip('"')
        try:
            out[(name, frozenset(labels.items()))] = float(value)
        except ValueError:
            pass
    return out
