"""Where the repository, the tools and the plugin artifact are (``NIG_*`` overrides)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGIN_YAML = REPO / "plugin.yaml"
CACHE = Path(os.environ.get("NIG_CACHE", str(Path.home() / ".cache" / "nacos-instance-guard")))


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


def missing_plugin() -> str | None:
    """The message to print when the plugin artifact is not built, else None."""
    wasm = plugin_wasm()
    return None if os.path.exists(wasm) else f"plugin artifact {wasm} missing: run `make build` first"
