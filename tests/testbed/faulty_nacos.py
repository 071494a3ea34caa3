"""A small misbehaving Nacos-compatible HTTP server for the fault tests.

It answers the v1 instance-list call (``GET /nacos/v1/ns/instance/list``) and the v1
login (``POST /nacos/v1/auth/login``) the way the test tells it to at run time:
``server.mode = "status:500"`` and so on (``MODES``: a mode's name, before an optional
``:argument``, names its behaviour). It listens on a loopback port of its own that stays
the same over ``stop_listening``/``start_listening``, so Envoy's
``outbound|8848||nacos.dns`` cluster can point at it for the whole test.

Every answer carries ``Connection: close``: each poll is a new connection, so "not
listening" really means connection refused, never an old keep-alive connection.
"""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse

LIST_PATH = "/nacos/v1/ns/instance/list"
LOGIN_PATH = "/nacos/v1/auth/login"
HTML_PAGE = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


def host(ip: str, port, weight: float = 1.0, healthy: bool = True, enabled: bool = True, **extra) -> dict:
    """One entry of a v1 ``hosts`` list, as Nacos writes it."""
    h = {
        "instanceId": f"{ip}#{port}#DEFAULT#DEFAULT_GROUP@@demo",
        "ip": ip,
        "port": port,
        "weight": weight,
        "healthy": healthy,
        "enabled": enabled,
        "ephemeral": False,
        "clusterName": "DEFAULT",
        "serviceName": "DEFAULT_GROUP@@demo",
        "metadata": {},
    }
    h.update(extra)
    return h


def v1_list(hosts: list) -> dict:
    return {
        "name": "DEFAULT_GROUP@@demo",
        "groupName": "DEFAULT_GROUP",
        "clusters": "",
        "cacheMillis": 10000,
        "hosts": hosts,
        "lastRefTime": int(time.time() * 1000),
        "checksum": "",
        "allIPs": False,
        "reachProtectionThreshold": False,
        "valid": True,
    }


# ------------------------------------------------------------- the fault modes
# Each behaviour answers one list call: ``h`` is the request handler, ``arg`` what
# follows ``:`` in the mode's name. ``h.reply`` records the status and answers in full;
# the partial answers record None.


def _good(h, arg):
    """200, v1 list of ``hosts``"""
    h.reply(200, h.nacos.good_body())


def _status(h, arg):
    """``status:N``: HTTP N with a short text body (500, 403, 404, 410 ...)"""
    h.reply(int(arg), f"caused: fault {int(arg)}".encode(), "text/plain")


def _html(h, arg):
    """200 ``text/html`` page (a proxy's or a console's error page)"""
    h.reply(200, HTML_PAGE, "text/html")


def _truncated(h, arg):
    """200, the good JSON cut in the middle (consistent content-length)"""
    body = h.nacos.good_body()
    h.reply(200, body[: len(body) // 2])


def _wrong_shape(h, arg):
    """200, a v3-style ``{code, data: [...]}`` envelope, no ``hosts``"""
    h.reply(200, json.dumps({"code": 0, "message": "success", "data": h.nacos.hosts}).encode())


def _huge(h, arg):
    """200, a valid v1 list of ``huge_bytes`` (default 6 MB)"""
    h.reply(200, h.nacos.huge_body())


def _hosts(h, arg):
    """200, v1 list of ``fault_hosts`` (bad addresses, duplicates ...)"""
    h.reply(200, json.dumps(v1_list(h.nacos.fault_hosts)).encode())


def _slow(h, arg):
    """waits ``slow_s`` then answers good (beyond ``nacos.timeoutMs``)"""
    h.record(None)
    time.sleep(h.nacos.slow_s)
    h.send(200, h.nacos.good_body())


def _close_mid(h, arg):
    """headers with the full content-length, half the body, then close"""
    h.record(None)
    h.send_first_half(h.nacos.good_body())
    h.connection.shutdown(socket.SHUT_RDWR)
    h.close_connection = True


def _stall_mid(h, arg):
    """headers and half the body, then silence for ``slow_s``"""
    h.record(None)
    h.send_first_half(h.nacos.good_body())
    time.sleep(h.nacos.slow_s)
    h.close_connection = True


def _reset(h, arg):
    """the request read, then the connection reset (RST), no answer"""
    h.record(None)
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.close_connection = True


MODES = {
    "good": _good,
    "status": _status,
    "html": _html,
    "truncated": _truncated,
    "wrong_shape": _wrong_shape,
    "huge": _huge,
    "hosts": _hosts,
    "slow": _slow,
    "close_mid": _close_mid,
    "stall_mid": _stall_mid,
    "reset": _reset,
    # "not_listening" is no answer at all: set through ``stop_listening``
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    nacos: FaultyNacos  # set per server
    mode = "good"

    def log_message(self, *a):
        pass

    def record(self, status: int | None) -> None:
        self.nacos.record(self.command, self.path, self.mode, status)

    def send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.record(status)
        self.send(status, body, ctype)

    def send_first_half(self, body: bytes) -> None:
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
        self.mode = self.nacos.mode
        if not self.path.startswith(LOGIN_PATH):
            return self.reply(404, b"not found", "text/plain")
        if form.get("username") == ["admin"] and form.get("password") == ["admin"]:
            token = self.nacos.issue_token()
            return self.reply(
                200,
                json.dumps(
                    {"accessToken": token, "tokenTtl": self.nacos.token_ttl_s, "globalAdmin": True, "username": "admin"}
                ).encode(),
            )
        return self.reply(403, b"user not found!", "text/plain")

    def do_GET(self):
        self.mode = self.nacos.mode
        if not self.path.startswith(LIST_PATH):
            return self.reply(404, b"not found", "text/plain")
        if self.nacos.auth:
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if not self.nacos.token_valid((q.get("accessToken") or [""])[0]):
                return self.reply(403, b"token invalid!", "text/plain")
        name, _, arg = self.mode.partition(":")
        behaviour = MODES.get(name)
        if behaviour is None:
            raise ValueError(f"unknown mode {self.mode!r}")
        try:
            behaviour(self, arg)
        except (BrokenPipeError, ConnectionResetError):
            pass


class FaultyNacos:
    """Threaded loopback HTTP server whose answers the test switches at run time
    (``mode``, one of ``MODES``, or ``not_listening`` through ``stop_listening``).

    With ``auth=True`` the login hands out tokens (``tokenTtl`` = ``token_ttl_s``) and
    list calls without a token, or with one older than ``revoke_after_s``, get 403.
    """

    log_name = "faulty nacos"

    def __init__(self, hosts: list | None = None, huge_bytes: int = 6 * 1024 * 1024):
        self.hosts = list(hosts or [])
        self.fault_hosts: list = []
        self.mode = "good"
        self.slow_s = 1.5
        self.auth = False
        self.token_ttl_s = 3600
        self.revoke_after_s: float | None = None
        self.lock = threading.Lock()
        self.log: list = []  # (t_monotonic, method, path, mode, status or None)
        self._tokens: dict = {}  # token -> issued at (monotonic)
        self._huge_bytes = huge_bytes
        self._huge: bytes | None = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.start_listening()

    # ------------------------------------------------------------------ control
    def set_fault(self, mode: str, fault_hosts: list | None = None) -> None:
        """Answer by ``mode`` from now on (``not_listening``: stop listening)."""
        if mode == "not_listening":
            self.stop_listening()
            return
        if fault_hosts is not None:
            self.fault_hosts = fault_hosts
        self.mode = mode

    def heal(self) -> None:
        """Listen (if not) and answer good."""
        if self._server is None:
            self.start_listening()
        self.mode = "good"

    def start_listening(self) -> None:
        handler = type("Handler", (_Handler,), {"nacos": self})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="faulty-nacos", daemon=True).start()
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

    # ------------------------------------------------------------------ auth
    def issue_token(self) -> str:
        with self.lock:
            token = f"tok-{len(self._tokens) + 1}-{time.monotonic_ns()}"
            self._tokens[token] = time.monotonic()
        return token

    def token_valid(self, token: str) -> bool:
        with self.lock:
            issued = self._tokens.get(token)
        return issued is not None and (self.revoke_after_s is None or time.monotonic() - issued <= self.revoke_after_s)

    # ------------------------------------------------------------------ the log
    def record(self, method: str, path: str, mode: str, status: int | None) -> None:
        with self.lock:
            self.log.append((time.monotonic(), method, path, mode, status))

    def calls(self, path_part: str = "/instance/list", since: float = 0.0) -> list:
        with self.lock:
            return [e for e in self.log if path_part in e[2] and e[0] >= since]

    def last_good_answer(self, before: float = float("inf")) -> float | None:
        with self.lock:
            good = [
                e[0] for e in self.log if "/instance/list" in e[2] and e[4] == 200 and e[3] == "good" and e[0] < before
            ]
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
                h = host(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 8080, healthy=False, metadata={"pad": pad})
                filler.append(h)
                size += len(json.dumps(h)) + 2
                i += 1
            self._huge = json.dumps(v1_list(self.hosts + filler)).encode()
        return self._huge
