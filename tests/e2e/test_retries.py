"""What a retry does on a guarded route, in both plain-Envoy routing modes.

The plugin decides once, in request headers; the router retries after the filter chain
ran, without asking it again. `a` is registered and answers 503, `b` is deregistered in
Nacos but still in the gateway's stale cluster. docs/routing.md, "Retries", documents the outcome
and the operator's choice; tests/hosttier/test_higress.py shows the Higress case.
"""

import pytest

RETRY_5XX_ONCE = {"retry_on": "5xx", "num_retries": 1}


def failing_a(gateway, mode, retry_policy):
    gw = gateway(mode, ["a", "b"], retry_policy=retry_policy)
    gw.register("a")
    gw.settle()
    gw.backends["a"].fail_status = 503
    return gw


def test_original_dst_retries_the_same_chosen_instance(gateway):
    """The routing header is the destination of every attempt: a retry goes to `a` again."""
    gw = failing_a(gateway, "original_dst", RETRY_5XX_ONCE)
    answers = [gw.request()[0] for _ in range(10)]
    assert answers == [503] * 10
    assert len(gw.backends["a"].seen) == 20  # each request tried twice, both on a
    assert gw.backends["b"].seen == []


def test_override_host_policy_retries_through_the_fallback_balancing(gateway):
    """The override_host policy gives each attempt the next address of the header's list;
    the plugin names one, so the retry falls back to round robin over the stale cluster
    and can reach `b`, which Nacos no longer lists."""
    gw = failing_a(gateway, "override_host", RETRY_5XX_ONCE)
    statuses = [gw.request()[0] for _ in range(10)]
    print(
        f"override_host, retry on 5xx once, 10 requests: a saw {len(gw.backends['a'].seen)}, "
        f"b (deregistered) saw {len(gw.backends['b'].seen)}"
    )
    assert len(gw.backends["a"].seen) >= 10
    assert len(gw.backends["b"].seen) >= 1, "no retry reached the stale instance"
    assert statuses.count(200) == len(gw.backends["b"].seen)  # b answers 200


@pytest.mark.parametrize("mode", ["override_host", "original_dst"])
def test_without_retries_on_the_route_the_stale_instance_is_never_reached(gateway, mode):
    gw = failing_a(gateway, mode, None)
    assert [gw.request()[0] for _ in range(10)] == [503] * 10
    assert len(gw.backends["a"].seen) == 10 and gw.backends["b"].seen == []
