"""The host tier: the built Wasm modules in a proxy-wasm host on wasmtime (gateway.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scenario import plugin_config  # noqa: E402

ROOT = HERE.parent.parent


def artifact(env: str, default: str) -> str:
    path = os.environ.get(env) or str(ROOT / "build" / default)
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run `make build` first")
    return path


@pytest.fixture
def higress_wasm() -> str:
    """build/plugin.wasm, the artifact a Higress user deploys."""
    return artifact("NIG_HIGRESS_WASM", "plugin.wasm")


@pytest.fixture
def envoy_wasm() -> str:
    """build/plugin-envoy.wasm, the artifact for upstream Envoy."""
    return artifact("NIG_PLUGIN_WASM", "plugin-envoy.wasm")


@pytest.fixture
def config():
    return plugin_config
