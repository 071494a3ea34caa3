"""spec.yaml's schemas agree with the plugin's parser, case by case.

The corpus (config_corpus.json) states for each configuration the verdict of the real
parser; src/pure/config/corpus_tests.rs holds the parser to it, natively and under wasm.
Here every case goes through spec.yaml's schemas the way the console and the Higress
controller split a configuration: the global fields through `configSchema`, each rule's
own fields through `routeConfigSchema`, and the `_match_*_` keys (which the controller
writes from a WasmPlugin's matchRules) through CONTROLLER_RULES below. The schema must
give the parser's verdict, except where the corpus marks a known difference.

Draft 4 is the validator: OpenAPI 3.0's Schema Object uses the JSON Schema Wright draft
00 validation keywords, which are draft 4's; in particular an `integer` there is not
`2000.0`, as in the parser.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CORPUS = json.loads((ROOT / "tests/packaging/config_corpus.json").read_text())
SPEC = yaml.safe_load((ROOT / "spec.yaml").read_text())
CONFIG_SCHEMA = SPEC["spec"]["configSchema"]["openAPIV3Schema"]
ROUTE_SCHEMA = SPEC["spec"]["routeConfigSchema"]["openAPIV3Schema"]
MATCH_KEYS = ["_match_route_", "_match_domain_", "_match_service_", "_match_route_prefix_"]

# What the Higress controller hands the plugin for matchRules: a list of objects, each
# with at least one non-empty list of non-empty names (ingress, domain, service).
_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1, "pattern": r"\S"}}
CONTROLLER_RULES = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {key: _NAMES for key in MATCH_KEYS},
        "anyOf": [{"required": [key], "properties": {key: {"minItems": 1}}} for key in MATCH_KEYS],
    },
}

Validator = jsonschema.Draft4Validator


def schema_errors(config) -> list:
    """Every schema error for a whole plugin configuration (global plus _rules_)."""
    if not isinstance(config, dict):
        return [e.message for e in Validator(CONFIG_SCHEMA).iter_errors(config)]
    config = dict(config)
    rules = config.pop("_rules_", None)
    errors = [f"global: {e.message}" for e in Validator(CONFIG_SCHEMA).iter_errors(config)]
    if rules is None:
        return errors
    rule_errors = [f"_rules_: {e.message}" for e in Validator(CONTROLLER_RULES).iter_errors(rules)]
    if rule_errors:
        return errors + rule_errors
    for index, rule in enumerate(rules):
        own = {k: v for k, v in rule.items() if k not in MATCH_KEYS}
        errors += [f"_rules_[{index}]: {e.message}" for e in Validator(ROUTE_SCHEMA).iter_errors(own)]
    return errors


def case_config(case):
    if "raw" in case:
        return json.loads(case["raw"]) if case["raw"].strip() else {}
    return case["config"]


def test_the_schemas_are_valid_draft4_schemas():
    Validator.check_schema(CONFIG_SCHEMA)
    Validator.check_schema(ROUTE_SCHEMA)


@pytest.mark.parametrize("case", CORPUS["cases"], ids=[c["name"] for c in CORPUS["cases"]])
def test_the_schema_gives_the_parsers_verdict(case):
    expected = case.get("schema_valid", case["valid"])
    if "known_difference" in case:
        assert case["schema_valid"] != case["valid"], "a known difference must differ"
        assert len(case["known_difference"]) > 40, "a known difference says why"
    else:
        assert "schema_valid" not in case, "a different verdict needs its reason (known_difference)"
    errors = schema_errors(case_config(case))
    assert (not errors) == expected, f"schema says {errors or 'valid'}; corpus says valid={expected}"


def test_the_corpus_covers_every_field_and_both_verdicts():
    """Each schema field appears in some valid case and some invalid one."""
    valid, invalid = set(), set()
    for case in CORPUS["cases"]:
        text = json.dumps(case_config(case))
        for field in _fields(ROUTE_SCHEMA):
            if f'"{field.split(".")[-1]}"' in text:
                (valid if case["valid"] else invalid).add(field)
    fields = set(_fields(ROUTE_SCHEMA))
    assert fields - valid == set()
    # `enabled`, `password` and the enums' good values have no invalid case of their own
    # beyond these; every other field has at least one.
    assert fields - invalid <= {"nacos.password", "service"}, fields - invalid


def _fields(schema, prefix=""):
    for name, sub in schema.get("properties", {}).items():
        yield prefix + name
        yield from _fields(sub, prefix + name + ".")


def test_every_field_has_type_title_and_description_and_the_parsers_default():
    defaults = CORPUS["defaults"]  # checked against the parser by corpus_tests.rs
    seen = {}
    for field in _fields(ROUTE_SCHEMA):
        sub = ROUTE_SCHEMA
        for part in field.split("."):
            sub = sub["properties"][part]
        assert {"type", "title", "description"} <= set(sub), field
        if "default" in sub:
            seen[field] = sub["default"]
    assert seen == defaults


def test_the_global_and_rule_forms_have_the_same_fields_as_the_parser():
    """`Settings` in src/pure/config/raw.rs: the fields a global config and a rule may set."""
    raw = next(ROOT.glob("src/**/config/raw.rs")).read_text()
    fields = re.search(r"pub struct Settings \{(.*?)\}", raw, re.S).group(1)
    settings = [_camel(name) for name in re.findall(r"pub (\w+):", fields)]
    assert settings == list(ROUTE_SCHEMA["properties"])
    # The global form adds what only the global configuration may set (AUTO_KEY).
    source = next(ROOT.glob("src/**/config/mod.rs")).read_text()
    auto = re.search(r'const AUTO_KEY: &str = "(\w+)";', source).group(1)
    assert settings + [auto] == list(CONFIG_SCHEMA["properties"])


def _camel(snake: str) -> str:
    first, *rest = snake.split("_")
    return first + "".join(word.capitalize() for word in rest)


def test_plugin_yaml_validates_against_the_schema():
    plugin = yaml.safe_load((ROOT / "plugin.yaml").read_text())
    spec = plugin["spec"]
    errors = [e.message for e in Validator(CONFIG_SCHEMA).iter_errors(spec["defaultConfig"])]
    assert not errors, errors
    assert spec["matchRules"], "plugin.yaml has rules"
    for rule in spec["matchRules"]:
        errors = [e.message for e in Validator(ROUTE_SCHEMA).iter_errors(rule["config"])]
        assert not errors, (rule, errors)
    # The examples shown in the console validate too.
    assert not list(Validator(CONFIG_SCHEMA).iter_errors(CONFIG_SCHEMA["example"]))
    assert not list(Validator(ROUTE_SCHEMA).iter_errors(ROUTE_SCHEMA["example"]))


def test_spec_yaml_has_the_console_metadata():
    info = SPEC["info"]
    assert {"category", "name", "title", "description", "version", "contact", "gatewayMinVersion"} <= set(info)
    assert info["name"] == plugin_name() == "nacos-instance-guard"
    plugin = yaml.safe_load((ROOT / "plugin.yaml").read_text())["spec"]
    # Official specs write `phase: default`; the console maps it to the WasmPlugin's
    # UNSPECIFIED_PHASE (higress-console PluginPhase.fromName).
    assert {"default": "UNSPECIFIED_PHASE"}[SPEC["spec"]["phase"]] == plugin["phase"]
    assert SPEC["spec"]["priority"] == plugin["priority"]
    # Categories the console's own specs use (higress-console backend/sdk/src/main/resources/plugins).
    assert info["category"] in {"auth", "security", "traffic", "transform", "ai", "o11y", "custom"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["gatewayMinVersion"]), info["gatewayMinVersion"]


def test_spec_yaml_is_what_the_generator_writes():
    """spec.yaml is generated from packaging/spec_source.yaml (packaging/gen_spec.py)."""
    check = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "gen_spec.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_spec_yaml_is_flat_and_uses_no_keyword_the_console_ignores():
    """No anchors, aliases or merge keys (the console's Jackson reads `<<` as a key), and
    no anyOf/allOf/oneOf/not (the console ignores them; no official spec uses them)."""
    text = (ROOT / "spec.yaml").read_text()
    for event in yaml.parse(text):
        assert not isinstance(event, yaml.AliasEvent), event
        assert getattr(event, "anchor", None) is None, event
    banned = {"<<", "anyOf", "allOf", "oneOf", "not", "dependencies"}

    def walk(node, path):
        if isinstance(node, dict):
            assert not banned & set(node), (path, banned & set(node))
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(SPEC, "spec.yaml")


def test_info_and_every_property_have_titles_and_descriptions_in_both_languages():
    def i18n(node, where):
        for key in ("x-title-i18n", "x-description-i18n"):
            assert set(node.get(key, {})) == {"zh-CN", "en-US"}, (where, key)
            assert all(node[key].values()), (where, key)
        assert node["x-title-i18n"]["en-US"] == node["title"], where
        assert node["x-description-i18n"]["en-US"] == node["description"], where

    i18n(SPEC["info"], "info")
    for schema in (CONFIG_SCHEMA, ROUTE_SCHEMA):
        for field in _fields(schema):
            sub = schema
            for part in field.split("."):
                sub = sub["properties"][part]
            i18n(sub, field)


def test_global_only_fields_are_scoped_global():
    """A field the rule form lacks is global only, and says so (`x-scope: GLOBAL`)."""
    global_only = set(CONFIG_SCHEMA["properties"]) - set(ROUTE_SCHEMA["properties"])
    assert global_only == {"guardNacosRoutes"}
    for name, sub in CONFIG_SCHEMA["properties"].items():
        assert (sub.get("x-scope") == "GLOBAL") == (name in global_only), name


def plugin_name() -> str:
    return yaml.safe_load((ROOT / "plugin.yaml").read_text())["metadata"]["name"]


def test_version_has_one_source():
    """VERSION is the version; Cargo.toml, spec.yaml and plugin.yaml's image tag follow it
    (the image tag `make image` writes is checked in test_image.py)."""
    version = (ROOT / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    cargo = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert cargo == version, "Cargo.toml's package version"
    assert SPEC["info"]["version"] == version, "spec.yaml info.version"
    url = yaml.safe_load((ROOT / "plugin.yaml").read_text())["spec"]["url"]
    assert url.endswith(f":{version}"), f"plugin.yaml spec.url {url}"
