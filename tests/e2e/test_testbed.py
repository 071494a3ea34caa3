"""Checks of the testbed itself (no plugin needed): the plugin.yaml conversion, and the
baseline failure: without the plugin the gateway keeps routing to a deregistered
instance, because its cluster is stale."""

import collections
import time

from testbed.backends import Backend
from testbed.higress import higress_plugin_config, load_plugin_yaml, plugin_config
from testbed.rnacos import RNacos


def test_plugin_yaml_converted_like_higress():
    cfg = higress_plugin_config(load_plugin_yaml())
    assert cfg["nacos"]["cluster"] == "outbound|8848||nacos.dns"
    rules = cfg["_rules_"]
    demo = [r for r in rules if r.get("_match_route_") == ["default/demo"]]
    legacy = [r for r in rules if r.get("_match_route_") == ["default/legacy"]]
    assert len(demo) == 1 and demo[0]["service"]["name"] == "demo"
    assert len(legacy) == 1 and legacy[0]["enabled"] is False
    assert all("configDisable" not in r and "config" not in r for r in rules)


def test_config_disable_rule_dropped_and_overrides():
    wp = {
        "spec": {
            "defaultConfig": {"a": 1, "nacos": {"cluster": "x"}},
            "matchRules": [
                {"ingress": ["r1"], "config": {"b": 2}},
                {"domain": ["*.ex.com"], "config": {"c": 3}, "configDisable": True},
                {"service": ["s.dns"], "config": {"d": 4}},
            ],
        }
    }
    cfg = higress_plugin_config(wp)
    assert cfg["_rules_"] == [{"b": 2, "_match_route_": ["r1"]}, {"d": 4, "_match_service_": ["s.dns"]}]
    over = plugin_config(
        {"onStale": "fail_closed", "nacos": {"username": "u", "password": "p"}}, {"refreshIntervalMs": 200}
    )
    assert over["onStale"] == "fail_closed"
    assert over["nacos"]["cluster"] == "outbound|8848||nacos.dns" and over["nacos"]["username"] == "u"
    demo = [r for r in over["_rules_"] if r.get("_match_route_") == ["default/demo"]][0]
    assert demo["refreshIntervalMs"] == 200 and demo["service"]["name"] == "demo"


def test_baseline_without_plugin_stale_cluster_keeps_routing_to_deregistered(bed):
    nacos = bed.add(RNacos(bed.workdir))
    nacos.start()
    a, b = bed.add(Backend("backend-a")), bed.add(Backend("backend-b"))
    nacos.register(a.port)
    nacos.register(b.port)
    hosts = nacos.list()["hosts"]
    assert {h["port"] for h in hosts} == {a.port, b.port}
    envoy = bed.gateway(None, nacos.http_port, [a, b])
    nacos.deregister(a.port)
    assert {h["port"] for h in nacos.list()["hosts"]} == {b.port}
    time.sleep(1.5)
    got = collections.Counter(r.body for r in (envoy.request("/demo") for _ in range(20)))
    assert got["backend-a"] > 0, got  # the failure the plugin exists to end
    nacos.deregister(b.port)
    assert nacos.list()["hosts"] == []
