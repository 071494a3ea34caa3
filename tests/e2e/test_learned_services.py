"""One setting guards every Nacos route (``guardNacosRoutes``): the plugin reads each
request's service from its cluster name, as Higress's McpBridge names them
(``outbound|<port>||<service>.<group>.<namespace>.nacos``, ``_`` written ``-``), and
polls only the services that carry traffic. No rule names a service here."""

from __future__ import annotations

import time

from testbed.envoy import HigressNamedEnvoy, route_to, wait_first_poll
from testbed.higress import plugin_config
from testbed.waiting import wait_until

ORDERS = "outbound|8080||orders.DEFAULT-GROUP.public.nacos"
PAY = "outbound|8080||pay.MY-GROUP.public.nacos"
WEB = "outbound|8080||web.dns"


def learning_config(idle_ms: int) -> dict:
    """plugin.yaml's global settings, no service anywhere, guardNacosRoutes on."""
    cfg = plugin_config({"refreshIntervalMs": 500})
    cfg["_rules_"] = [{"_match_route_": ["default/legacy"], "enabled": False}]
    cfg["guardNacosRoutes"] = {"groups": ["MY_GROUP"], "idleMs": idle_ms}
    return cfg


def test_one_setting_guards_every_nacos_route(stack, tmp_path):
    s = stack(backends=("backend-a", "backend-b", "backend-c"), register=(), plugin=False)
    s.nacos.register(s.be("backend-a").port, service="orders")
    s.nacos.register(s.be("backend-b").port, service="pay", group="MY_GROUP")
    routes = [
        route_to("default/orders", "/orders", ORDERS),
        route_to("default/pay", "/pay", PAY),
        route_to("default/web", "/web", WEB),
        route_to("default/legacy", "/legacy", ORDERS),
    ]
    workdir = tmp_path / "learning"
    workdir.mkdir()
    envoy = s.add(
        HigressNamedEnvoy(
            workdir,
            s.nacos.http_port,
            [b.port for b in s.backends.values()],
            learning_config(idle_ms=4000),
            routes=routes,
            clusters=(ORDERS, PAY, WEB),
        )
    )
    envoy.start()
    # Nothing is polled before traffic names a service.
    time.sleep(1.0)
    assert envoy.guard_stat("poll_success", "orders") == 0
    t_first = time.monotonic()
    first = envoy.request("/orders")
    wait_first_poll(envoy, service="orders")
    first_poll_s = time.monotonic() - t_first
    envoy.request("/pay")

    def only(path: str, backend: str) -> bool:
        return all(r.backend == backend for r in envoy.send(12, path))

    wait_until(lambda: only("/orders", "backend-a") and only("/pay", "backend-b"), 10, 0.05, "both learned")
    print(
        f"\n[learned] first request to orders: {first.status} {first.body[:20]!r} (onStale fail_open); "
        f"its first poll done {first_poll_s * 1000:.0f} ms after it"
    )
    assert envoy.guard_stat("learned_services", None) == 2
    # A route to a cluster that is not a Nacos service is left alone: all three backends answer.
    web = {r.backend for r in envoy.send(30, "/web")}
    assert web == {"backend-a", "backend-b", "backend-c"}, web
    # A rule with enabled: false still wins over the learned guard.
    legacy = {r.backend for r in envoy.send(30, "/legacy")}
    assert legacy == {"backend-a", "backend-b", "backend-c"}, legacy

    # Deregistering each one's instance is detected as for a configured service.
    s.nacos.deregister(s.be("backend-a").port, service="orders")
    # Every worker: a batch of new connections all rejected.
    wait_until(lambda: all(r.status == 503 for r in envoy.send(8, "/orders")), 3, 0.05, "orders rejected")
    rejection = envoy.request("/orders")
    assert '"no_healthy_instance"' in rejection.body and '"orders"' in rejection.body, rejection
    assert only("/pay", "backend-b")

    # An idle service stops being polled: no request to pay for idleMs (4 s).
    wait_until(
        lambda: "no request to service pay" in envoy.log_text() and "no request to service orders" in envoy.log_text(),
        12,
        0.2,
        "both idle",
    )
    polls = envoy.guard_stat("poll_success", "pay", "MY_GROUP")
    time.sleep(2.0)
    assert envoy.guard_stat("poll_success", "pay", "MY_GROUP") == polls, "an idle service is not polled"
