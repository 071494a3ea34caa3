"""Section ``sizes``: the artifacts' sizes (the criterion micro-benchmarks run with it)."""

from __future__ import annotations

from gateways import MINIMAL_WASM
from measure import log

from testbed.paths import REPO


def section_sizes(args, res: dict) -> None:
    sizes = {}
    for name in ("build/plugin.wasm", "build/plugin-envoy.wasm"):
        p = REPO / name
        sizes[name] = p.stat().st_size if p.exists() else None
    sizes["bench minimal filter"] = MINIMAL_WASM.stat().st_size if MINIMAL_WASM.exists() else None
    res["sizes"] = sizes
    for k, v in sizes.items():
        log(f"{k}: {v} bytes")
