"""A small misbehaving Nacos-compatible HTTP server for the fault tests.

It answers the v1 instance-list call (``GET /nacos/v1/ns/instance/list``) and the v1
login (``POST /nacos/v1/auth/login``) the way the test tells it to at run time:
``server.mode = "status:500"`` and so on (see ``MODES``). It listens on a loopback
port of its own that stays the same over ``stop_listening``/``start_listening``, so
Envoy's ``outbound|8848||nacos.dns`` cluster can point at it for the whole test.

Every answer carries ``Connection: close``: each poll is a new connection, so "not
listening" really means connection refused, never an old keep-alive connection.

Also here: ``EchoBackend``, a backend that records the headers of each request it
gets, and ``RoutedEnvoy``, the harness Envoy with one more route that no rule of
``plugin.yaml`` matches (``default/other`` on ``/other``).
"""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse
from typing import Optional

from harness import BACKEND_CLUSTER, Backend, Envoy, ROUTING_HEADER, envoy_config

import yaml


def host(ip: str, port, weight: float = 1.0, healthy: bool = True, enabled: bool = True, **extra) -> dict:
    """One entry of a v1 ``hosts`` list, as Nacos writes it."""
    h = {"instanceId": f"{ip}#{port}#DEFAULT#DEFAULT_GROUP@@demo", "ip": ip, "port": port, "weight": weight,
         "healthy": healthy, "enabled": enabled, "ephemeral": False, "clusterName": "DEFAULT",
         "serviceName": "DEFAULT_GROUP@@demo", "metadata": {}}
    h.update(extra)
    return h


def v1_list(hosts: list) -> dict:
    return {"name": "DEFAULT_GROUP@@demo", "groupName": "DEFAULT_GROUP", "clusters": "", "cacheMillis": 10000,
            "hosts": hosts, "lastRefTime": int(time.time() * 1000), "checksum": "", "allIPs": False,
            "reachProtectionThreshold": False, "valid": True}


class FaultyNacos:
    """Threaded loopback HTTP server whose answers the test switches at run time.

    Modes (``self.mode``):

    * ``good``          200, v1 list of ``self.hosts``
    * ``status:N``      HTTP N with a short text body (500, 403, 404, 410 ...)
    * ``html``          200 ``text/html`` page (a proxy's or a console's error page)
    * ``truncated``     200, the good JSON cut in the middle (consistent content-length)
    * ``wrong_shape``   200, a v3-style ``{code, data: [...]}`` envelope, no ``hosts``
    * ``huge``          200, a valid v1 list of ``huge_bytes`` (default 6 MB)
    * ``hosts``         200, v1 list of ``self.fault_hosts`` (bad addresses, duplicates ...)
    * ``slow``          waits ``slow_s`` then answers good (beyond ``nacos.timeoutMs``)
    * ``close_mid``     headers with the full content-length, half the body, then close
    * ``stall_mid``     headers and half the body, then silence for ``slow_s``
    * ``reset``         the request read, then the connection reset (RST), no answer
    * ``not_listening`` (set through ``stop_listening``) connection refused

    With ``auth=True`` the login hands out tokens (``tokenTtl`` = ``token_ttl_s``) and
    list calls without a token, or with one older than ``revoke_after_s``, get 403.
    """

    def __init__(self, hosts: Optional[list] = None, huge_bytes: int = 6 * 1024 * 1024):
        self.hosts = list(hosts or [])
        self.fault_hosts: list = []
        self.mode = "good"
        self.slow_s = 1.5
        self.auth = False
        self.token_ttl_s = 3600
        self.revoke_after_s: Optional[float] = None
        self.lock = threading.Lock()
        self.log: list = []  # (t_monotonic, method, path, mode, status or None)
        self._tokens: dict = {}  # token -> issued at (monotonic)
        self._huge_bytes = huge_bytes
        self._huge: Optional[bytes] = None
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0
        self.start_listening()

    # ------------------------------------------------------------------ control
    def start_listening(self) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="faulty-nacos", daemon=True)
        self._thread.start()
        if self.mode == "not_listening":
            self.mode = "good"

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.mode = "not_listening"

    def stop(self) -> None:
        self.stop_listening()

    def record(self, method: str, path: str, mode: str, status: Optional[int]) -> None:
        with self.lock:
            self.log.append((time.monotonic(), method, path, mode, status))

    def calls(self, path_part: str = "/instance/list", since: float = 0.0) -> list:
        with self.lock:
            return [e for e in self.log if path_part in e[2] and e[0] >= since]

    def last_good_answer(self) -> Optional[float]:
        with self.lock:
            good = [e[0] for e in self.log if "/instance/list" in e[2] and e[4] == 200 and e[3] == "good"]
        return good[-1] if good else None

    # ------------------------------------------------------------------ bodies
    def good_body(self) -> bytes:
        return json.dumps(v1_list(self.hosts)).encode()

    def huge_body(self) -> bytes:
        if self._huge is None:
            # A valid answer: the good hosts first, then padding instances whose
            # metadata makes the body huge_bytes long.
            pad = "x" * 1000
            filler = []
            size = len(self.good_body())
            i = 0
            while size < self._huge_bytes:
                h = host(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 8080, healthy=False,
                         metadata={"pad": pad})
                filler.append(h)
                size += len(json.dumps(h)) + 2
                i += 1
            self._huge = json.dumps(v1_list(self.hosts + filler)).encode()
        return self._huge

    # ------------------------------------------------------------------ handler
    def _handler(self):
        nacos = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json", length: Optional[int] = None):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body) if length is None else length))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def _send_first_half(self, body: bytes):
                """Announce the whole body, send half of it; the caller then fails the rest."""
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode(errors="replace"))
                path = self.path
                if path.startswith("/nacos/v1/auth/login"):
                    if form.get("username") == ["admin"] and form.get("password") == ["admin"]:
                        token = f"tok-{len(nacos._tokens) + 1}-{time.monotonic_ns()}"
                        with nacos.lock:
                            nacos._tokens[token] = time.monotonic()
                        nacos.record("POST", path, nacos.mode, 200)
                        return self._send(200, json.dumps({"accessToken": token, "tokenTtl": nacos.token_ttl_s,
                                                           "globalAdmin": True, "username": "admin"}).encode())
                    nacos.record("POST", path, nacos.mode, 403)
                    return self._send(403, b"user not found!", "text/plain")
                nacos.record("POST", path, nacos.mode, 404)
                self._send(404, b"not found", "text/plain")

            def do_GET(self):
                mode = nacos.mode
                path = self.path
                if not path.startswith("/nacos/v1/ns/instance/list"):
                    nacos.record("GET", path, mode, 404)
                    return self._send(404, b"not found", "text/plain")
                if nacos.auth:
                    q = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
                    tok = (q.get("accessToken") or [""])[0]
                    with nacos.lock:
                        issued = nacos._tokens.get(tok)
                    expired = issued is None or (nacos.revoke_after_s is not None
                                                 and time.monotonic() - issued > nacos.revoke_after_s)
                    if expired:
                        nacos.record("GET", path, mode, 403)
                        return self._send(403, b"token invalid!", "text/plain")
                try:
                    self._answer(mode, path)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _answer(self, mode: str, path: str):
                if mode == "good":
                    nacos.record("GET", path, mode, 200)
                    return self._send(200, nacos.good_body())
                if mode.startswith("status:"):
                    status = int(mode.split(":", 1)[1])
                    nacos.record("GET", path, mode, status)
                    return self._send(status, f"caused: fault {status}".encode(), "text/plain")
                if mode == "html":
                    nacos.record("GET", path, mode, 200)
                    return self._send(200, b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
                                           b"<body><h1>Bad Gateway</h1></body></html>", "text/html")
                if mode == "truncated":
                    body = nacos.good_body()
                    nacos.record("GET", path, mode, 200)
                    return self._send(200, body[: len(body) // 2])
                if mode == "wrong_shape":
                    nacos.record("GET", path, mode, 200)
                    return self._send(200, json.dumps({"code": 0, "message": "success",
                                                       "data": nacos.hosts}).encode())
                if mode == "huge":
                    nacos.record("GET", path, mode, 200)
                    return self._send(200, nacos.huge_body())
                if mode == "hosts":
                    nacos.record("GET", path, mode, 200)
                    return self._send(200, json.dumps(v1_list(nacos.fault_hosts)).encode())
                if mode == "slow":
                    nacos.record("GET", path, mode, None)
                    time.sleep(nacos.slow_s)
                    return self._send(200, nacos.good_body())
                if mode == "close_mid":
                    nacos.record("GET", path, mode, None)
                    self._send_first_half(nacos.good_body())
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                if mode == "stall_mid":
                    nacos.record("GET", path, mode, None)
                    self._send_first_half(nacos.good_body())
                    time.sleep(nacos.slow_s)
                    self.close_connection = True
                    return None
                if mode == "reset":
                    nacos.record("GET", path, mode, None)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return None
                raise ValueError(f"unknown mode {mode!r}")

        return Handler


class EchoBackend(Backend):
    """A ``Backend`` that also keeps the headers of every request it gets."""

    def __init__(self, name: str):
        super().__init__(name)
        self.seen_headers: list = []  # list of [(name, value), ...] per request, names lower-case
        be = self
        handler = self.server.RequestHandlerClass
        orig = handler._answer

        def _answer(h):
            with be.lock:
                be.seen_headers.append([(k.lower(), v) for k, v in h.headers.items()])
            orig(h)

        handler._answer = _answer
        handler.do_GET = _answer
        handler.do_POST = _answer

    def reset(self):
        super().reset()
        with self.lock:
            self.seen_headers.clear()


class RoutedEnvoy(Envoy):
    """The harness Envoy plus route ``default/other`` (prefix ``/other``) to the same
    stale cluster; no rule of ``plugin.yaml`` matches it and the global configuration
    has no ``service``, so the plugin must leave its requests alone."""

    def _configure(self) -> None:
        from harness import free_port
        self.port = free_port()
        self.admin_port = free_port()
        self.config = envoy_config(self.port, self.admin_port, self.nacos_port, self.backend_ports,
                                   self.plugin_cfg, self.mode)
        hcm = self.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes.append({"name": "default/other", "match": {"prefix": "/other"},
                       "route": {"cluster": BACKEND_CLUSTER, "timeout": "3s"}})
        self.config_path = self.workdir / f"envoy-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))


__all__ = ["FaultyNacos", "EchoBackend", "RoutedEnvoy", "host", "v1_list", "ROUTING_HEADER"]
