"""Real Envoy 1.40 + r-nacos for the request-body, retry and host-tier cross-check tests.

Backends here record what reached them (routing header, body length) and can be told to
fail, which the testbed's backends cannot; the rest comes from tests/testbed (RNacos,
Envoy with its routes, plugin_config, wait_until).
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from testbed.envoy import DEFAULT_ROUTES, ROUTING_HEADER, Envoy
from testbed.higress import plugin_config
from testbed.rnacos import RNacos
from testbed.waiting import wait_until


class EchoBackend:
    """Answers `200 <name>` (or `status` when told to fail); records each request's
    routing header and body length."""

    def __init__(self, name: str):
        self.name = name
        self.fail_status: int | None = None
        self.seen: list = []  # (method, routing header or None, body length)
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _answer(self):
                body = self._body()
                backend.seen.append((self.command, self.headers.get(ROUTING_HEADER), len(body)))
                status = backend.fail_status or 200
                text = backend.name.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class RealGateway:
    """r-nacos, named EchoBackends (all in the stale cluster) and Envoy with the plugin."""

    def __init__(
        self,
        tmp: Path,
        mode: str,
        names: Iterable[str],
        retry_policy: dict | None = None,
        plugin_cfg: dict | None = None,
    ):
        self.backends = {name: EchoBackend(name) for name in names}
        self.nacos = RNacos(tmp)
        self.envoy: Envoy | None = None
        try:
            self._start(tmp, mode, retry_policy, plugin_cfg)
        except BaseException:
            self.stop()
            raise

    def _start(self, tmp, mode, retry_policy, plugin_cfg):
        self.nacos.start()
        routes = (
            [dict(r, route=dict(r["route"], retry_policy=retry_policy)) for r in DEFAULT_ROUTES]
            if retry_policy
            else None
        )
        self.envoy = Envoy(
            tmp,
            self.nacos.http_port,
            [b.port for b in self.backends.values()],
            plugin_cfg or plugin_config(),
            mode=mode,
            routes=routes,
        )
        self.envoy.start()

    def register(self, name: str):
        self.nacos.register(self.backends[name].port)

    def deregister(self, name: str):
        self.nacos.deregister(self.backends[name].port)

    def settle(self):
        """Three more good polls (so at least two started after the change), then time for
        the other worker to adopt the published snapshot on its 50 ms tick."""
        base = self.envoy.guard_stat("poll_success")
        wait_until(lambda: self.envoy.guard_stat("poll_success") >= base + 3, 10, 0.05, "three more polls")
        time.sleep(0.3)

    def request(self, method="GET", path="/demo", headers=None, body=None, timeout=5.0):
        """(status, body text, backend name or None). `body` may be bytes or an iterable
        of chunks (sent chunked, as a streamed upload)."""
        c = http.client.HTTPConnection("127.0.0.1", self.envoy.port, timeout=timeout)
        try:
            chunked = body is not None and not isinstance(body, bytes)
            c.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            r = c.getresponse()
            text = r.read().decode(errors="replace")
            return r.status, text, text if r.status == 200 and text in self.backends else None
        finally:
            c.close()

    def stop(self):
        if self.envoy is not None:
            self.envoy.stop()
        if self.nacos.proc is not None:
            self.nacos.proc.stop()
        for b in self.backends.values():
            b.stop()


def real_gateway_fixture(tmp_path):
    """Factory for a test: ``gw = make(mode, names, retry_policy=None)``; all stopped after."""
    made = []

    def make(mode, names, **kwargs):
        gw = RealGateway(tmp_path / f"gw{len(made)}", mode, names, **kwargs)
        made.append(gw)
        return gw

    return make, made
