"""The plugin's configuration: ``plugin.yaml`` (a Higress WasmPlugin) converted the way
the Higress controller converts it, then the overrides a test asks for."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import yaml

from testbed.paths import PLUGIN_YAML


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def higress_plugin_config(wasm_plugin: dict) -> dict:
    """Convert a WasmPlugin resource the way the Higress controller does.

    spec.defaultConfig -> global fields; each matchRule -> one ``_rules_`` entry with
    ``_match_route_`` (from ``ingress``), ``_match_domain_`` (``domain``),
    ``_match_service_`` (``service``) plus the rule's ``config`` keys; a rule with
    ``configDisable: true`` is dropped.
    """
    spec = wasm_plugin["spec"]
    out = copy.deepcopy(spec.get("defaultConfig") or {})
    rules = []
    for mr in spec.get("matchRules") or []:
        if mr.get("configDisable"):
            continue
        rule = copy.deepcopy(mr.get("config") or {})
        for key, match in (("ingress", "_match_route_"), ("domain", "_match_domain_"), ("service", "_match_service_")):
            if mr.get(key):
                rule[match] = list(mr[key])
        rules.append(rule)
    if rules:
        out["_rules_"] = rules
    return out


def load_plugin_yaml() -> dict:
    with open(PLUGIN_YAML) as f:
        return yaml.safe_load(f)


def plugin_config(
    global_overrides: dict | None = None, demo_overrides: dict | None = None, remove_global: Iterable[str] = ()
) -> dict:
    """plugin.yaml converted as Higress does, then test overrides applied.

    ``global_overrides`` deep-merge into the global (defaultConfig) fields, e.g.
    ``{"onStale": "fail_closed", "maxStaleMs": 3000, "nacos": {"username": "admin"}}``;
    ``demo_overrides`` deep-merge into the rule that matches route ``default/demo``.
    """
    cfg = higress_plugin_config(load_plugin_yaml())
    for k in remove_global:
        cfg.pop(k, None)
    if global_overrides:
        cfg = deep_merge({k: v for k, v in cfg.items() if k != "_rules_"}, global_overrides) | (
            {"_rules_": cfg["_rules_"]} if "_rules_" in cfg else {}
        )
    if demo_overrides:
        for r in cfg.get("_rules_", []):
            if "default/demo" in r.get("_match_route_", []):
                r.update(deep_merge(r, demo_overrides))
    return cfg


def with_rules(cfg: dict, rules: list) -> dict:
    """``cfg``'s global fields with ``rules`` as its ``_rules_``."""
    out = {k: v for k, v in cfg.items() if k != "_rules_"}
    out["_rules_"] = rules
    return out
