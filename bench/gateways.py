"""What the bench starts, all held by one ``Owner`` (``OWNER``): r-nacos, the gateway
Envoy (the testbed's, pinned and without wasm debug logging), the minimal filter, and a
second Envoy as a fast backend.

CPU pinning (taskset lists): the gateway on one CPU, wrk and the fast backend on the
other, so that the three do not take turns on the same CPU. Set from ``--pin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from testbed.envoy import NACOS_CLUSTER, DirectResponseEnvoy, Envoy, wait_every_worker_routes
from testbed.paths import REPO
from testbed.processes import Owner
from testbed.rnacos import RNacos

HERE = REPO / "bench"
MINIMAL_DIR = HERE / "minimal-filter"
MINIMAL_TARGET_DIR = REPO / "target" / "minimal-filter"
# What the plugin asks Envoy on a routed header-mode request, as minimal-filter
# operations: the route name, the pin header, the protected header its route does not
# set (the set replaces the other).
PLUGIN_HOST_CALLS = "prop=xds.route_name,get=x-nacos-instance,get=x-envoy-original-dst-host"
MINIMAL_WASM = MINIMAL_TARGET_DIR / "wasm32-wasip1" / "release" / "minimal_filter.wasm"
NACOS_STAT = f"cluster.{NACOS_CLUSTER}"
PIN = {"gateway": None, "load": None}
GATEWAY_CPU, LOAD_CPU = "0", "1"
OWNER = Owner()


def pin(role: str) -> list:
    """The command prefix that pins a process of ``role`` to its CPUs (none if not asked)."""
    cpus = PIN.get(role)
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


def start_nacos(workdir: Path) -> RNacos:
    nacos = OWNER.add(RNacos(workdir))
    nacos.start()
    return nacos


def gateway(
    workdir: Path, nacos_port: int, backend_ports, plugin_cfg, concurrency: int = 1, minimal_ops=None, **envoy
) -> Envoy:
    """A started gateway Envoy, owned by ``OWNER``. With ``minimal_ops`` it runs the
    minimal filter with those operations instead of the plugin."""
    if minimal_ops is not None:
        envoy.update(wasm_path=str(MINIMAL_WASM), filter_name="minimal-filter", filter_configuration=minimal_ops)
    e = OWNER.add(
        Envoy(
            workdir,
            nacos_port,
            backend_ports,
            plugin_cfg,
            concurrency=concurrency,
            wasm_debug=False,
            argv_prefix=pin("gateway"),
            **envoy,
        )
    )
    e.start(timeout=60.0)
    return e


def fast_backend(workdir: Path, count: int) -> DirectResponseEnvoy:
    """A second Envoy answering ``200 backend-<i>`` on ``count`` ports: a backend far
    faster than the gateway under test."""
    backend = OWNER.add(DirectResponseEnvoy(workdir, count, argv_prefix=pin("load")))
    backend.start()
    return backend


def wait_first_snapshot(envoy: Envoy, path: str, service: str, timeout: float = 30.0) -> None:
    """The poller has an answer and every worker VM adopted it: a batch of requests over
    fresh connections is routed in full."""
    wait_every_worker_routes(envoy, path, service, probes=4 * envoy.concurrency + 4, timeout=timeout, interval=0.1)


def ensure_minimal_filter() -> None:
    """Build (or find up to date) the minimal filter; cargo does nothing when it is."""
    subprocess.run(
        [
            "cargo",
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
            str(MINIMAL_DIR / "Cargo.toml"),
            "--target-dir",
            str(MINIMAL_TARGET_DIR),
        ],
        check=True,
    )


class Pinned:
    """Pins the gateways to CPU 0 and everything else this run starts (and this
    script) to CPU 1, for the duration of a ``with``; nothing on a single CPU."""

    def __enter__(self):
        self.saved_pin = dict(PIN)
        self.saved_affinity = os.sched_getaffinity(0)
        self.on = shutil.which("taskset") is not None and {int(GATEWAY_CPU), int(LOAD_CPU)} <= self.saved_affinity
        if self.on:
            PIN.update(gateway=GATEWAY_CPU, load=LOAD_CPU)
            # Children inherit it: r-nacos runs on the load CPU too.
            os.sched_setaffinity(0, {int(LOAD_CPU)})
        return self

    def __exit__(self, *exc):
        PIN.clear()
        PIN.update(self.saved_pin)
        os.sched_setaffinity(0, self.saved_affinity)
        return False
