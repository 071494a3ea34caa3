"""The default build is the Higress artifact.

Higress builds a Rust plugin with `cargo build --target wasm32-wasip1 --release` and
default features (alibaba/higress plugins/wasm-rust/Dockerfile and
.github/workflows/build-and-push-wasm-plugin-image.yaml). Whoever builds this plugin that
way must get the module that routes on Higress, not the upstream-Envoy one, whose
`header` routing sets a header Higress never reads.

`make build` runs exactly that command for build/plugin.wasm (into target/higress, then
wasm-opt). This tier loads what cargo wrote there, before wasm-opt
(NIG_DEFAULT_BUILD_WASM), and checks its imports and its routing.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import wasmtime
from gateway import Gateway, ScriptedNacos
from scenario import plugin_config

ROOT = Path(__file__).resolve().parents[2]
HIGRESS_ONLY = {("env", "proxy_set_upstream_override_host"), ("env", "proxy_get_upstream_hosts")}
A, B, STALE = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"


@pytest.fixture
def default_build() -> str:
    path = os.environ.get("NIG_DEFAULT_BUILD_WASM") or str(
        ROOT / "target/higress/wasm32-wasip1/release/nacos_instance_guard.wasm"
    )
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run `make build` first")
    return path


def imports(path: str) -> set:
    return {(i.module, i.name) for i in wasmtime.Module.from_file(wasmtime.Engine(), path).imports}


def test_default_features_are_the_higress_build():
    features = tomllib.loads((ROOT / "Cargo.toml").read_text())["features"]
    assert "higress" in features["default"], features
    assert "host" in features["higress"], "the Higress build carries the proxy-wasm glue"


def test_make_builds_plugin_wasm_with_the_plain_cargo_command():
    """build/plugin.wasm's recipe passes no feature flag: it is the default build."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^build/plugin\.wasm:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile has a build/plugin.wasm rule"
    cargo = next(line for line in recipe.group(1).splitlines() if "cargo build" in line)
    words = shlex.split(cargo)
    assert words[:3] == ["cargo", "build", "--release"], cargo
    assert not any(w.startswith("--features") or w == "--no-default-features" for w in words), cargo


def test_default_build_imports_the_higress_calls_and_routes_by_override(default_build, envoy_wasm):
    assert imports(default_build) >= HIGRESS_ONLY
    assert not imports(envoy_wasm) & HIGRESS_ONLY, "plugin-envoy.wasm imports neither Higress call"

    nacos = ScriptedNacos()
    nacos.register(A)
    nacos.register(B)
    gw = Gateway(
        default_build,
        plugin_config(),  # plugin.yaml as Higress hands it over; no `routing` set
        mode="higress",
        cluster_hosts={A: "Healthy", B: "Healthy", STALE: "Healthy"},
        nacos=nacos,
    )
    assert all(vm.configured for vm in gw.vms), gw.vms[0].logs
    assert any("(Higress build)" in text for vm in gw.vms for _, text in vm.logs), gw.vms[0].logs
    gw.advance(2500)  # the first poll, published to every VM
    for _ in range(6):
        out = gw.request()
        assert out.status == 200, out
        assert out.override in {A, B}, "the default build names the instance through the override call"
        assert out.upstream == out.override, out
        assert "x-gateway-destination-endpoint" not in out.upstream_headers, "no header routing by default"
    assert gw.stat("routed") == 6
