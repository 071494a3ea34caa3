"""pytest fixtures: ``bed``, a ``Stack`` stopped in teardown (its logs printed when the
test failed), and ``stack``, a factory that starts r-nacos, backends and Envoy with the
plugin on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.higress import plugin_config  # noqa: E402
from testbed.paths import envoy_bin, missing_plugin, plugin_wasm, rnacos_bin  # noqa: E402
from testbed.real_gateway import real_gateway_fixture  # noqa: E402
from testbed.stack import Stack  # noqa: E402


def pytest_report_header(config):
    return [f"envoy: {envoy_bin()}", f"r-nacos: {rnacos_bin()}", f"plugin: {plugin_wasm()}"]


def failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


@pytest.fixture
def bed(tmp_path, request):
    """A ``Stack`` on the test's tmp dir; everything added to it stops after the test."""
    s = Stack(tmp_path)
    yield s
    if failed(request):
        s.owner.dump_logs()
    s.owner.stop_all()


@pytest.fixture
def stack(bed):
    """Factory: ``stack(backends=[...], register=[...], mode=..., global_overrides=..., ...)``."""

    if missing_plugin():
        pytest.fail(missing_plugin())

    def make(
        backends=("backend-a",),
        register=None,
        mode="override_host",
        global_overrides=None,
        demo_overrides=None,
        auth=False,
        login_timeout=None,
        weights=None,
        wait_first_snapshot=True,
        plugin=True,
        nacos_env=None,
    ):
        bed.start_registry(backends, register, weights, auth, login_timeout, nacos_env)
        bed.start_gateway(plugin_config(global_overrides, demo_overrides) if plugin else None, mode=mode)
        if plugin and wait_first_snapshot:
            bed.wait_ready(routes=register is None or bool(register))
        return bed

    return make


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def gateway(tmp_path):
    """Factory of real gateways whose backends record what reached them:
    ``gw = gateway(mode, names, retry_policy=None)``; all stopped after the test."""
    make, made = real_gateway_fixture(tmp_path)
    yield make
    for gw in made:
        gw.stop()
