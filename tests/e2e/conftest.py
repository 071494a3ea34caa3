"""pytest fixtures: a ``stack`` factory that starts r-nacos, backends and Envoy with the
plugin, and stops all of them in teardown, also when the test fails."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Backend,
    Envoy,
    RNacos,
    envoy_bin,
    plugin_config,
    plugin_wasm,
    rnacos_bin,
    wait_until,
)


def pytest_report_header(config):
    return [f"envoy: {envoy_bin()}", f"r-nacos: {rnacos_bin()}", f"plugin: {plugin_wasm()}"]


class Traffic:
    """Background request stream against the gateway; records every answer."""

    def __init__(self, envoy: Envoy, path: str = "/demo", interval: float = 0.01, headers: Optional[dict] = None):
        self.envoy = envoy
        self.path = path
        self.interval = interval
        self.headers = headers or {}
        self.records = []  # (t_sent, t_done, status, body)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = self.envoy.request(self.path, self.headers, timeout=3)
                self.records.append((t0, time.monotonic(), r.status, r.body))
            except Exception as e:  # noqa: BLE001
                self.records.append((t0, time.monotonic(), -1, repr(e)))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self.stop()

    def stop(self):
        self._stop.set()
        self._t.join(timeout=10)

    def since(self, t: float):
        return [r for r in self.records if r[0] >= t]


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.nacos: Optional[RNacos] = None
        self.envoy: Optional[Envoy] = None
        self.backends: dict = {}
        self.extra_envoys: list = []

    # -- helpers used by the tests
    def be(self, name: str) -> Backend:
        return self.backends[name]

    def names(self, responses):
        return [r.body if r.status == 200 else r.status for r in responses]

    def send(self, n: int, path: str = "/demo", headers: Optional[dict] = None):
        return [self.envoy.request(path, headers) for _ in range(n)]

    def wait_polls(self, n: int = 2, timeout: float = 10.0, service: str = "demo"):
        """Wait until ``n`` more successful polls completed: with n>=2 at least one poll
        started after this call, so the plugin's snapshot reflects Nacos as of now."""
        base = self.envoy.guard_stat("poll_success", service)
        wait_until(lambda: self.envoy.guard_stat("poll_success", service) >= base + n, timeout, 0.05,
                   f"{n} more poll_success for {service}")

    def wait_only(self, allowed: set, timeout: float = 10.0, window: int = 10, path: str = "/demo",
                  headers: Optional[dict] = None):
        """Send requests until ``window`` consecutive answers all come from ``allowed``
        (backend names, or int status codes for non-200 answers)."""
        def ok():
            got = self.names(self.send(window, path, headers))
            return all(g in allowed for g in got)
        wait_until(ok, timeout, 0.05, f"only {sorted(map(str, allowed))} answering {path}")

    def dump_logs(self):
        for e in [self.envoy, *self.extra_envoys]:
            if e is not None:
                print(f"----- envoy log ({e.config_path.name}) tail -----")
                print(e.log_text()[-6000:])
        if self.nacos and self.nacos.proc:
            print("----- r-nacos log tail -----")
            print(self.nacos.proc.log_text()[-2000:])


@pytest.fixture
def stack(tmp_path, request):
    """Factory: ``stack(backends=[...], register=[...], mode=..., global_overrides=..., ...)``."""
    wasm = plugin_wasm()
    if not os.path.exists(wasm):
        pytest.fail(f"plugin artifact {wasm} missing: run `make build` first")
    s = Stack(tmp_path)

    def make(backends=("backend-a",), register=None, mode="override_host", global_overrides=None,
             demo_overrides=None, auth=False, login_timeout=None, weights=None, wait_first_snapshot=True,
             plugin=True, nacos_env=None):
        s.nacos = RNacos(tmp_path, auth=auth, login_timeout=login_timeout, extra_env=nacos_env)
        s.nacos.start()
        for name in backends:
            s.backends[name] = Backend(name)
        weights = weights or {}
        for name in (backends if register is None else register):
            s.nacos.register(s.backends[name].port, weight=weights.get(name, 1))
        cfg = plugin_config(global_overrides, demo_overrides) if plugin else None
        s.envoy = Envoy(tmp_path, s.nacos.http_port, [b.port for b in s.backends.values()], cfg, mode=mode)
        s.envoy.start()
        if plugin and wait_first_snapshot:
            s.wait_polls(1, timeout=15)
            if register is None or register:
                s.envoy.wait_all_workers_route(timeout=10)
            for b in s.backends.values():
                b.reset()
        return s

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        s.dump_logs()
    for e in [s.envoy, *s.extra_envoys]:
        if e is not None:
            e.stop()
    if s.nacos is not None and s.nacos.proc is not None:
        s.nacos.proc.stop()
    for b in s.backends.values():
        b.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
