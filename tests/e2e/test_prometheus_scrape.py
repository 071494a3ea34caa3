"""The alert rules select series the plugin really emits.

A real Prometheus (Debian's package) scrapes the test Envoy's /stats/prometheus, with
the plugin loaded and the stats tag docs/observability.md documents, and loads
deploy/prometheus/nacos-instance-guard.rules.yaml. Through Prometheus's HTTP query API
every metric name in every rule's expression must select series, the per-service
ones carrying `nacos_service`, so a renamed metric or label fails here. promtool's unit
test (make packaging-test) proves what the rules do with such series.

Uses only the `stack` fixture, its `send`, and the Envoy's admin port, configuration
file and log.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from testbed.prometheus import Prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "nacos-instance-guard.rules.yaml"


def documented_stats_tags() -> list:
    """The stats_tags entries docs/observability.md's "Metrics" section tells operators to add."""
    doc = (ROOT / "docs" / "observability.md").read_text()
    metrics = doc[doc.index("## Metrics\n") :]
    metrics = metrics[: metrics.index("\n## ", 1)]
    tags = [
        {"tag_name": name, "regex": regex}
        for name, regex in re.findall(r"- tag_name: (\S+)\n\s+regex: '([^']+)'", metrics)
    ]
    assert any(tag["tag_name"] == "nacos_service" for tag in tags), tags
    return tags


@pytest.fixture
def prometheus_for(bed):
    def start(envoy_admin_port: int) -> Prometheus:
        return bed.add(Prometheus(bed.workdir, envoy_admin_port, [RULES]))

    return start


def test_every_rule_selects_series_the_plugin_emits(stack, prometheus_for):
    s = stack(backends=["backend-a"])
    envoy_config = yaml.safe_load(s.envoy.config_path.read_text())  # what Envoy runs with
    tags = envoy_config["stats_config"]["stats_tags"]
    assert "nacos_service" in [t["tag_name"] for t in tags], tags
    assert all(t in documented_stats_tags() for t in tags), (
        "the test Envoy uses the stats tags docs/observability.md documents"
    )
    s.send(5)  # some traffic, so routed moves as well
    version = (ROOT / "VERSION").read_text().strip()
    assert f"nacos-instance-guard {version} (upstream Envoy build)" in s.envoy.log_text(), (
        "the plugin logs its version and build when configured"
    )

    prom = prometheus_for(s.envoy.admin_port)
    prom.wait("a good scrape of Envoy", lambda: [r for r in prom.api("query", query='up{job="envoy"} == 1')["result"]])

    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = {}
    for rule in rules:
        found = sorted(set(re.findall(r"\bnacos_guard_\w+", rule["expr"])))
        assert found, rule["alert"]
        names[rule["alert"]] = found

    for alert, metrics in names.items():
        for metric in metrics:
            series = prom.wait(f"{metric} ({alert})", lambda m=metric: prom.api("series", **{"match[]": m}))
            if metric.startswith("nacos_guard_service_"):
                assert {x.get("nacos_service") for x in series} == {"demo"}, (alert, metric, series)
            else:
                assert all("nacos_service" not in x for x in series), (alert, metric, series)
            print(f"[prometheus] {alert}: {metric} -> {len(series)} series {series[0]}")

    # Values came through: the poll counter moved and the gauge shows the one instance.
    assert (
        float(
            prom.api("query", query='nacos_guard_service_poll_success{nacos_service="demo"}')["result"][0]["value"][1]
        )
        >= 1
    )
    assert (
        prom.api("query", query='nacos_guard_service_usable_instances{nacos_service="demo"}')["result"][0]["value"][1]
        == "1"
    )
    # The login rule's join finds the gateway's services on the real labels.
    joined = prom.api(
        "query",
        query="nacos_guard_login_failure * on (job, instance) group_right () "
        "(nacos_guard_service_poll_success * 0 + 1)",
    )["result"]
    assert [r["metric"].get("nacos_service") for r in joined] == ["demo"], joined

    # Prometheus loaded every rule and evaluates each without error on this data.
    def evaluated():
        loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return loaded if len(loaded) == len(rules) and all(r["health"] == "ok" for r in loaded) else None

    loaded = prom.wait("every rule evaluated", evaluated)
    assert sorted(r["name"] for r in loaded) == sorted(names)
