"""A registry, backends and gateways, all held by one ``Owner``: what a test, the demo
and the soak start."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from testbed.backends import Backend
from testbed.envoy import Envoy, names, wait_every_worker_routes, wait_first_poll
from testbed.processes import Owner
from testbed.rnacos import RNacos
from testbed.waiting import wait_until


class Stack:
    """r-nacos (or any registry with a ``port``/``http_port``), named backends and a
    gateway Envoy; ``add`` owns anything else. ``owner.stop_all()`` stops everything."""

    def __init__(self, workdir: Path, owner: Owner | None = None):
        self.workdir = Path(workdir)
        self.owner = owner or Owner()
        self.nacos = None
        self.envoy: Envoy | None = None
        self.backends: dict = {}

    def add(self, thing):
        return self.owner.add(thing)

    def start_registry(
        self,
        backends: Iterable[str] = ("backend-a",),
        register=None,
        weights: dict | None = None,
        auth: bool = False,
        login_timeout: int | None = None,
        nacos_env: dict | None = None,
    ) -> RNacos:
        """r-nacos and the backends; ``register``: the names to register in service
        ``demo`` (default: every backend), or ``{service: [names]}``."""
        self.nacos = self.add(RNacos(self.workdir, auth=auth, login_timeout=login_timeout, extra_env=nacos_env))
        self.nacos.start()
        for name in backends:
            self.backends[name] = self.add(Backend(name))
        services = register if isinstance(register, dict) else {"demo": backends if register is None else register}
        weights = weights or {}
        for service, members in services.items():
            for name in members:
                self.nacos.register(self.backends[name].port, service=service, weight=weights.get(name, 1))
        return self.nacos

    def gateway(
        self, plugin_cfg: dict | None, nacos_port: int | None = None, backends: Iterable[Backend] | None = None, **envoy
    ) -> Envoy:
        """Start and own an Envoy in front of ``backends`` (default: all of this stack's)
        with the Nacos cluster on ``nacos_port`` (default: this stack's registry)."""
        if nacos_port is None:
            nacos_port = getattr(self.nacos, "http_port", None) or self.nacos.port
            envoy.setdefault("nacos_grpc_port", getattr(self.nacos, "grpc_port", None))
        backends = self.backends.values() if backends is None else backends
        e = self.add(Envoy(self.workdir, nacos_port, [b.port for b in backends], plugin_cfg, **envoy))
        e.start()
        return e

    def routing_gateway(self, plugin_cfg: dict, expect: set, **gateway) -> Envoy:
        """``gateway(...)``, then wait for its first poll and until every worker routes,
        to exactly the backends ``expect``."""
        e = self.gateway(plugin_cfg, **gateway)
        wait_first_poll(e)
        wait_every_worker_routes(e, expect=expect)
        return e

    def start_gateway(self, plugin_cfg: dict | None, **envoy) -> Envoy:
        """This stack's gateway (``self.envoy``)."""
        self.envoy = self.gateway(plugin_cfg, **envoy)
        return self.envoy

    def wait_ready(self, routes: bool = True, timeout: float = 10) -> None:
        """The first poll is in and, if ``routes``, every worker routes by it; the
        backends' counters start from zero."""
        self.wait_polls(1, timeout=15)
        if routes:
            wait_every_worker_routes(self.envoy, timeout=timeout)
        for b in self.backends.values():
            b.reset()

    # -- helpers used by the tests
    def be(self, name: str) -> Backend:
        return self.backends[name]

    @staticmethod
    def names(responses) -> list:
        return names(responses)

    def send(self, n: int, path: str = "/demo", headers: dict | None = None) -> list:
        return self.envoy.send(n, path, headers)

    def wait_polls(self, n: int = 2, timeout: float = 10.0, service: str = "demo") -> None:
        """Wait until ``n`` more successful polls completed: with n>=2 at least one poll
        started after this call, so the plugin's snapshot reflects Nacos as of now."""
        base = self.envoy.guard_stat("poll_success", service)
        wait_until(
            lambda: self.envoy.guard_stat("poll_success", service) >= base + n,
            timeout,
            0.05,
            f"{n} more poll_success for {service}",
        )

    def wait_only(
        self, allowed: set, timeout: float = 10.0, window: int = 10, path: str = "/demo", headers: dict | None = None
    ) -> None:
        """Send requests until ``window`` consecutive answers all come from ``allowed``
        (backend names, or int status codes for non-200 answers)."""

        def ok():
            got = names(self.send(window, path, headers))
            return all(g in allowed for g in got)

        wait_until(ok, timeout, 0.05, f"only {sorted(map(str, allowed))} answering {path}")
