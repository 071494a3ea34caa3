"""Scenario 8: the plugin's metrics in Envoy's /stats/prometheus match what happened.

Stat names before Prometheus conversion:
``wasmcustom.nacos_guard.service.<namespace>.<group>.<svc>.<name>``
and ``wasmcustom.nacos_guard.<name>``; the bootstrap's stats tags (``STATS_TAGS``)
move ``<namespace>``, ``<group>`` and ``<svc>`` into the labels ``nacos_namespace``,
``nacos_group`` and ``nacos_service``, and Prometheus output strips ``wasmcustom.``.
"""

from testbed.envoy import settle_request_counters
from testbed.prometheus import guard_metric, parse_prometheus

SVC_COUNTERS = [
    "routed",
    "rerouted",
    "rejected",
    "passed_through",
    "poll_success",
    "poll_failure",
    "instance_failures",
    "instances_avoided",
]


def snapshot(envoy):
    settle_request_counters()
    prom = parse_prometheus(envoy.prometheus())
    vals = {k: guard_metric(prom, k) for k in SVC_COUNTERS + ["usable_instances"]}
    return prom, vals


def test_scenario8_prometheus_metrics(stack):
    s = stack(backends=["backend-a", "backend-b", "backend-c"], register=["backend-a", "backend-b"])
    a, b, c = s.be("backend-a"), s.be("backend-b"), s.be("backend-c")
    s.wait_polls(1)

    prom, v0 = snapshot(s.envoy)
    text = s.envoy.prometheus()
    for k in SVC_COUNTERS + ["usable_instances"]:
        assert v0[k] is not None, (
            f'nacos_guard_service_{k}{{nacos_service="demo"}} missing from /stats/prometheus:\n'
            + "\n".join(line for line in text.splitlines() if "nacos" in line)
        )
    assert v0["usable_instances"] == 2
    # each part of the service is its own label
    routed = [dict(labels) for (name, labels) in prom if name == "nacos_guard_service_routed"]
    assert routed == [{"nacos_namespace": "public", "nacos_group": "DEFAULT_GROUP", "nacos_service": "demo"}], routed
    # the untagged JSON stat names carry the service segment
    js = s.envoy.stats()
    assert "wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.demo.routed" in js, [k for k in js if "nacos" in k]
    assert js["wasmcustom.nacos_guard.service.public.DEFAULT_GROUP.demo.routed"] == v0["routed"]
    # the type lines: counters and a gauge
    assert "# TYPE nacos_guard_service_routed counter" in text
    assert "# TYPE nacos_guard_service_usable_instances gauge" in text

    # 20 plain requests: routed +20
    assert set(s.names(s.send(20))) == {"backend-a", "backend-b"}
    # 5 pinned to the stale instance C: routed +5, rerouted +5
    assert c.hits == 0 and set(s.names(s.send(5, headers={"x-nacos-instance": c.addr}))) <= {"backend-a", "backend-b"}
    # 4 pinned to B: routed +4
    assert s.names(s.send(4, headers={"x-nacos-instance": b.addr})) == ["backend-b"] * 4
    # 7 on the enabled:false route: nothing counted
    s.send(7, path="/legacy")
    _, v1 = snapshot(s.envoy)
    assert v1["routed"] - v0["routed"] == 29, (v0, v1)
    assert v1["rerouted"] - v0["rerouted"] == 5, (v0, v1)
    assert v1["rejected"] == v0["rejected"] == 0
    assert v1["passed_through"] == v0["passed_through"]
    assert v1["poll_success"] >= 1 and v1["poll_failure"] == 0

    # deregister both: gauge drops to 0, every request counts as rejected
    s.nacos.deregister(a.port)
    s.nacos.deregister(b.port)
    s.wait_polls(2)
    _, v2 = snapshot(s.envoy)
    assert v2["usable_instances"] == 0
    resps = s.send(6)
    assert [r.status for r in resps] == [503] * 6
    _, v3 = snapshot(s.envoy)
    assert v3["rejected"] - v2["rejected"] == 6
    assert v3["routed"] == v2["routed"]
    assert v3["poll_success"] > v1["poll_success"]
    assert v3["poll_failure"] == 0
    # every routed request was answered: no instance failed, none avoided
    assert v3["instance_failures"] == v3["instances_avoided"] == 0
    print(
        "\n[scenario8] prometheus lines:\n"
        + "\n".join(
            line for line in s.envoy.prometheus().splitlines() if "nacos_guard" in line and not line.startswith("#")
        )
    )
