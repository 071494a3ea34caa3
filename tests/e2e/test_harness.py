"""Checks of the harness itself (no plugin needed): the plugin.yaml conversion, and the
baseline failure: without the plugin the gateway keeps routing to a deregistered
instance, because its cluster is stale."""

import collections
import time

import pytest

from harness import Backend, Envoy, RNacos, higress_plugin_config, load_plugin_yaml, plugin_config


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
    wp = {"spec": {"defaultConfig": {"a": 1, "nacos": {"cluster": "x"}},
                   "matchRules": [{"ingress": ["r1"], "config": {"b": 2}},
                                  {"domain": ["*.ex.com"], "config": {"c": 3}, "configDisable": True},
                                  {"service": ["s.dns"], "config": {"d": 4}}]}}
    cfg = higress_plugin_config(wp)
    assert cfg["_rules_"] == [{"b": 2, "_match_route_": ["r1"]}, {"d": 4, "_match_service_": ["s.dns"]}]
    over = plugin_config({"onStale": "fail_closed", "nacos": {"username": "u", "password": "p"}},
                         {"refreshIntervalMs": 200})
    assert over["onStale"] == "fail_closed"
    assert over["nacos"]["cluster"] == "outbound|8848||nacos.dns" and over["nacos"]["username"] == "u"
    demo = [r for r in over["_rules_"] if r.get("_match_route_") == ["default/demo"]][0]
    assert demo["refreshIntervalMs"] == 200 and demo["service"]["name"] == "demo"


@pytest.fixture
def bare(tmp_path):
    things = []
    yield tmp_path, things
    for t in reversed(things):
        t.stop()


def test_baseline_without_plugin_stale_cluster_keeps_routing_to_deregistered(bare):
    tmp, things = bare
    nacos = RNacos(tmp)
    nacos.start()
    things.append(nacos)
    a, b = Backend("backend-a"), Backend("backend-b")
    things += [a, b]
    nacos.register(a.port)
    nacos.register(b.port)
    hosts = nacos.list()["hosts"]
    assert {h["port"] for h in hosts} == {a.port, b.port}
    envoy = Envoy(tmp, nacos.http_port, [a.port, b.port], None)
    envoy.start()
    things.append(envoy)
    nacos.deregister(a.port)
    assert {h["port"] for h in nacos.list()["hosts"]} == {b.port}
    time.sleep(1.5)
    got = collections.Counter(r.body for r in (envoy.request("/demo") for _ in range(20)))
    assert got["backend-a"] > 0, got  # the failure the plugin exists to end
    nacos.deregister(b.port)
    assert nacos.list()["hosts"] == []
