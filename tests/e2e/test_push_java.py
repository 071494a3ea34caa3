"""Push in real Envoy against the Java-semantics gRPC server
(``tests/testbed/java_grpc_nacos.py``, checked with the official client in
``test_java_semantics.py``), one test per defect of issue 26 that a server can show.

HTTP polls go to r-nacos, the push link to the Java-semantics server; both list the same
instances at the start, and a change made only on the Java-semantics server can reach
the plugin only by push (the safety poll is 600 s), while a poll would still see r-nacos's
unchanged list. That tells a push from a poll in every test.
"""

from __future__ import annotations

import time

from test_production import WatchedEnvoy
from test_push import PUSH, PUSH_BOUND_S, last_hit_after, wait_pushed

from testbed.higress import plugin_config, with_rules
from testbed.java_grpc_nacos import JavaGrpcNacos, JavaRules
from testbed.traffic import Traffic
from testbed.waiting import wait_until

HELD_ELSEWHERE = "where another configuration of this gateway holds a stream"
CANCELLED_HERE = "where a stream of this gateway was closed"
DRAIN_S = 3


class DrainingEnvoy(WatchedEnvoy):
    """Edited like Higress edits a WasmPlugin, and drains a replaced filter chain in
    ``DRAIN_S`` (Envoy's default is 600 s, Istio's drainDuration 45 s): the replaced
    configuration's root context lives until then."""

    def argv(self) -> list:
        return [*super().argv(), "--drain-time-s", str(DRAIN_S)]


def start(bed, clusters: dict, cfg: dict, rules: JavaRules | None = None, envoy_cls=None, **envoy) -> JavaGrpcNacos:
    """r-nacos, the backends ``clusters`` names (name -> Nacos cluster) registered in
    service ``demo`` of both servers, and the gateway with push to the Java-semantics one."""
    nacos = bed.start_registry(list(clusters), register=[])
    java = bed.add(JavaGrpcNacos(rules or JavaRules()))
    for name, cluster in clusters.items():
        port = bed.be(name).port
        nacos.register(port, cluster=cluster)
        java.register(port, cluster=cluster)
    if envoy_cls is None:
        bed.start_gateway(cfg, nacos_grpc_port=java.port, **envoy)
    else:
        ports = [b.port for b in bed.backends.values()]
        bed.envoy = bed.add(envoy_cls(bed.workdir, nacos.http_port, ports, cfg, nacos_grpc_port=java.port, **envoy))
        bed.envoy.start()
    return java


def events(java: JavaGrpcNacos, kind: str) -> list:
    return [e for e in java.events if e[0] == kind]


def test_two_guards_of_one_service_with_different_clusters_both_hear_pushes(bed):
    """Defect 1: Java keeps one subscriber per (connection, service); a subscription per
    guard's clusters would replace the other guard's, which then hears no change."""
    cfg = plugin_config(PUSH, {"service": {"name": "demo", "clusters": ["blue"]}})
    rules = [r for r in cfg["_rules_"] if "default/legacy" not in r.get("_match_route_", [])]
    green = {"_match_route_": ["default/legacy"], "service": {"name": "demo", "clusters": ["green"]}}
    cfg = with_rules(cfg, [*rules, green])
    names = {"backend-a": "blue", "backend-b": "blue", "backend-c": "green", "backend-d": "green"}
    java = start(bed, names, cfg)
    envoy = bed.envoy
    wait_pushed(envoy)
    for path, expect in (("/demo", {"backend-a", "backend-b"}), ("/legacy", {"backend-c", "backend-d"})):
        wait_until(
            lambda path=path, expect=expect: {r.body for r in envoy.send(8, path)} == expect,
            10,
            0.1,
            f"{path} routes {expect}",
        )
    polls = envoy.guard_stat("poll_success")
    a, c = bed.be("backend-a"), bed.be("backend-c")
    with Traffic(envoy, "/demo") as blue, Traffic(envoy, "/legacy") as green_traffic:
        time.sleep(0.3)
        java.deregister(a.port)
        java.deregister(c.port)
        t0 = time.monotonic()
        time.sleep(PUSH_BOUND_S + 0.5)
        lags = last_hit_after(a, t0), last_hit_after(c, t0)
    print(f"\n[two guards, Java semantics] blue A gone after {lags[0] * 1000:.0f} ms, green C {lags[1] * 1000:.0f} ms")
    assert max(lags) <= PUSH_BOUND_S
    assert {r[3] for r in blue.since(t0 + PUSH_BOUND_S)} == {"backend-b"}
    assert {r[3] for r in green_traffic.since(t0 + PUSH_BOUND_S)} == {"backend-d"}
    assert envoy.guard_stat("poll_success") == polls, "a poll, not a push, saw the change"
    subscribed = [body for body in java.sent("SubscribeServiceRequest") if body["serviceName"] == "demo"]
    assert [body["clusters"] for body in subscribed] == [""], "one subscription, no cluster filter"


def test_connect_reset_is_answered_and_the_link_comes_back(bed):
    """Defect 8: Java waits 3 s for the answer to ConnectResetRequest, then closes the
    connection; the plugin answers, reconnects, and is pushed again."""
    java = start(bed, {"backend-a": "DEFAULT", "backend-b": "DEFAULT"}, plugin_config(PUSH))
    envoy, a = bed.envoy, bed.be("backend-a")
    wait_pushed(envoy)
    reconnects = envoy.guard_stat("push_reconnects", service=None)
    assert java.reset(wait_s=3.0) == [True], "ConnectResetRequest answered within 3 s"
    wait_until(lambda: envoy.guard_stat("push_reconnects", service=None) > reconnects, 10, 0.05, "reconnected")
    wait_pushed(envoy)
    polls = envoy.guard_stat("poll_success")
    with Traffic(envoy) as tr:
        time.sleep(0.3)
        java.deregister(a.port)
        t0 = time.monotonic()
        time.sleep(PUSH_BOUND_S + 0.5)
        lag = last_hit_after(a, t0)
    print(f"\n[after ConnectResetRequest] A gone after {lag * 1000:.0f} ms")
    assert lag <= PUSH_BOUND_S
    assert {r[3] for r in tr.since(t0 + PUSH_BOUND_S)} == {"backend-b"}
    assert envoy.guard_stat("poll_success") == polls
    assert len({peer for peer, kind, _ in java.received if kind == "ConnectionSetupRequest"}) == 1, (
        "Envoy kept the HTTP/2 connection; the server forgot it, so the new stream registered"
    )


def test_a_permanent_403_backs_off_and_is_said_once(bed):
    """Defect 4: a subscription refused for lack of permission (Java: resultCode 500,
    errorCode 403) is retried with backoff (1, 2, 4 … s), warned once per streak,
    counted, and the service stays polled."""
    java = start(bed, {"backend-a": "DEFAULT"}, plugin_config(PUSH), JavaRules(access_token="no-such-login"))
    envoy = bed.envoy
    bed.wait_ready()
    wait_until(lambda: java.sent("SubscribeServiceRequest"), 10, 0.05, "a subscription")
    t0 = time.monotonic()
    polls = envoy.guard_stat("poll_success")
    time.sleep(8)
    attempts = len(java.sent("SubscribeServiceRequest"))
    warnings = [line for line in envoy.log_text().splitlines() if "subscribing service demo over" in line]
    failures = envoy.guard_stat("push_failures", service=None)
    polled = envoy.guard_stat("poll_success") - polls
    print(f"\n[permanent 403] {attempts} subscriptions in {time.monotonic() - t0:.1f} s, {len(warnings)} warning(s)")
    # at 1, 2, 4, 8 s backoff: the first, then 1, 3 and 7 s later; once a second would be 9
    assert 2 <= attempts <= 5, attempts
    assert len(warnings) == 1, warnings
    assert failures >= attempts
    assert polled >= 5, "the refused service stays polled at refreshIntervalMs"


def test_an_oversized_push_is_answered_counted_and_polled_at_once(bed):
    """Defect 6: a push over 4 MiB is acknowledged from its head (Java would push it again
    every few seconds otherwise), counted, and its service polled at once."""
    java = start(bed, {"backend-a": "DEFAULT", "backend-b": "DEFAULT"}, plugin_config(PUSH))
    envoy = bed.envoy
    wait_pushed(envoy)
    failures, polls = envoy.guard_stat("push_failures", service=None), envoy.guard_stat("poll_success")
    pushes = len(events(java, "push"))
    java.pad_next_push = 5 * 1024 * 1024
    java.register(bed.be("backend-a").port)  # a change: pushed with 5 MiB of metadata
    wait_until(lambda: envoy.guard_stat("push_failures", service=None) > failures, 5, 0.05, "the push counted")
    wait_until(lambda: envoy.guard_stat("poll_success") > polls, 3, 0.05, "a poll at once")
    oversized = events(java, "push")[pushes][2]
    time.sleep(4)  # the server re-pushes what is not acknowledged within 3 s
    assert oversized in [ack["requestId"] for ack in java.sent("NotifySubscriberResponse")]
    assert not events(java, "repush"), java.events
    assert {r.body for r in envoy.send(10)} == {"backend-a", "backend-b"}


def test_an_idle_link_is_kept_by_its_health_checks(bed):
    """Defect 3: Java sends ClientDetectionRequest to a connection idle for 20 s, and
    ServerCheckRequest does not count as activity; the plugin's HealthCheckRequest every
    5 s does. 25 s without a change: no detection is sent, the link stays, and a change
    after it arrives by push. (Java's own 20 s; not shortened.)"""
    java = start(bed, {"backend-a": "DEFAULT", "backend-b": "DEFAULT"}, plugin_config(PUSH))
    envoy, a = bed.envoy, bed.be("backend-a")
    wait_pushed(envoy)
    reconnects = envoy.guard_stat("push_reconnects", service=None)
    time.sleep(25)
    health_checks = len(java.sent("HealthCheckRequest"))
    print(f"\n[25 s idle] {health_checks} health checks, {len(events(java, 'detection'))} detections")
    assert health_checks >= 4
    assert not events(java, "detection"), java.events
    assert not events(java, "dropped"), java.events
    polls = envoy.guard_stat("poll_success")
    java.deregister(a.port)
    t0 = time.monotonic()
    bed.wait_only({"backend-b"}, timeout=PUSH_BOUND_S + 1)
    assert time.monotonic() - t0 <= PUSH_BOUND_S + 1
    assert envoy.guard_stat("poll_success") == polls
    assert envoy.guard_stat("push_reconnects", service=None) == reconnects


def test_a_stream_reopened_on_the_same_connection_is_not_trusted_until_the_server_heals(bed):
    """Defect 2: a probe unanswered in time makes the plugin cancel its stream; Envoy keeps
    the HTTP/2 connection and opens the next stream on it, where Java keeps the first
    (now dead) stream. The plugin does not trust the new stream and keeps polling; the
    next change is pushed to the dead stream, the push fails, the server closes the
    connection, and the link on the next connection is pushed to."""
    java = start(bed, {"backend-a": "DEFAULT", "backend-b": "DEFAULT"}, plugin_config(PUSH))
    envoy = bed.envoy
    bed.wait_ready()
    wait_pushed(envoy)
    java.stall_next_health_check_s = 3.0  # nacos.timeoutMs is 2000
    wait_until(lambda: len(events(java, "setup")) == 2, 20, 0.05, "the stream opened again")
    first, second = events(java, "setup")
    assert first[1] == second[1] and second[2] == "first stream kept", java.events
    wait_until(lambda: CANCELLED_HERE in envoy.log_text(), 5, 0.05, "the new link distrusted")
    polls = envoy.guard_stat("poll_success")
    time.sleep(3)
    assert envoy.guard_stat("poll_success") >= polls + 2, "an unconfirmed link's services stay polled"
    heal_and_push_again(bed, java, first[1])


def heal_and_push_again(bed, java: JavaGrpcNacos, first_connection: str) -> None:
    """A change pushed to the connection's dead first stream fails, the server closes the
    connection, and the link on the next one is pushed to: A's deregistration, which
    only a push can bring (r-nacos, which the polls read, still lists A), then A back."""
    a = bed.be("backend-a")
    setups = len(events(java, "setup"))
    java.deregister(a.port)
    wait_until(lambda: events(java, "dropped"), 5, 0.05, "the failed push closing the connection")
    wait_until(lambda: len(events(java, "setup")) > setups, 15, 0.05, "a link on the next connection")
    last = events(java, "setup")[-1]
    assert last[1] != first_connection and last[2] == "registered", java.events
    bed.wait_only({"backend-b"}, timeout=10)
    java.register(a.port)
    wait_until(lambda: "backend-a" in {r.body for r in bed.envoy.send(10)}, 10, 0.1, "A pushed back")


def test_a_configuration_edit_under_push_closes_the_old_link(bed):
    """Defect 7 (and 2 where it arises), in real Envoy: after an edit the replaced
    configuration's root context lives until Envoy has drained it, then closes its link.
    The new configuration's lease goes to whichever thread ticks first (one worker and
    the main thread here): on the old link's connection, the new link is not trusted
    and its services are polled until the server heals; on its own connection it is
    pushed to at once. Either way a change after the edit reaches the gateway."""
    java = start(bed, {"backend-a": "DEFAULT", "backend-b": "DEFAULT"}, plugin_config(PUSH), envoy_cls=DrainingEnvoy)
    envoy = bed.envoy
    bed.wait_ready()
    wait_pushed(envoy)
    envoy.edit_plugin_config(plugin_config(PUSH, {"refreshIntervalMs": 500}))
    edited = time.monotonic()
    wait_until(lambda: len(events(java, "setup")) == 2, 15, 0.05, "the new configuration's stream")
    first, second = events(java, "setup")
    shared = first[1] == second[1]
    if shared:
        assert second[2] == "first stream kept", java.events
        wait_until(lambda: HELD_ELSEWHERE in envoy.log_text(), 5, 0.05, "the new link distrusted")
        polls = envoy.guard_stat("poll_success")
        time.sleep(2)
        assert envoy.guard_stat("poll_success") >= polls + 3, "an unconfirmed link's services stay polled"
    # the replaced root context goes after the drain, and closes its link
    wait_until(lambda: events(java, "stream ended"), DRAIN_S + 10, 0.05, "the old link closed")
    closed_after = time.monotonic() - edited
    ended = events(java, "stream ended")
    print(
        f"\n[configuration edit] {'one connection' if shared else 'two connections'}; "
        f"old link closed {closed_after:.1f} s after the edit (drain {DRAIN_S} s)"
    )
    assert DRAIN_S - 1 <= closed_after <= DRAIN_S + 10
    assert [e[1] for e in ended] == [first[1]], "the old configuration's stream, and only it"
    if shared:
        heal_and_push_again(bed, java, first[1])
    else:
        a = bed.be("backend-a")
        java.deregister(a.port)
        bed.wait_only({"backend-b"}, timeout=PUSH_BOUND_S + 1)
