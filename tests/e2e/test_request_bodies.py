"""Requests with bodies on a guarded route, in both plain-Envoy routing modes.

A regression test for the header path: the plugin decides in request headers and must
let the body follow. Resuming and pausing in that callback holds bodies behind a
StopAll (docs/routing.md, "Higress routing"); these requests would then time out.
"""

import pytest

MODES = ["override_host", "original_dst"]


def received(gw, name):
    return [(method, length) for method, _header, length in gw.backends[name].seen]


@pytest.mark.parametrize("mode", MODES)
def test_bodies_reach_the_chosen_instance_whole(gateway, mode):
    gw = gateway(mode, ["a", "b"])
    gw.register("a")
    gw.settle()
    big = [bytes([65 + i % 26]) * 65536 for i in range(16)]  # 1 MiB, streamed in 64 KiB chunks
    for method, body, length in [
        ("POST", b"x" * 1000, 1000),
        ("PUT", b"y" * 10, 10),
        ("POST", iter(big), 1 << 20),
        ("GET", None, 0),
    ]:
        status, text, backend = gw.request(method, body=body, timeout=5)
        assert (status, backend) == (200, "a"), (method, status, text)
        assert received(gw, "a")[-1] == (method, length)
    assert received(gw, "b") == []


@pytest.mark.parametrize("mode", MODES)
def test_a_rerouted_post_keeps_its_body_and_a_rejected_one_is_answered(gateway, mode):
    gw = gateway(mode, ["a", "b"])
    gw.register("a")
    gw.register("b")
    gw.settle()
    gw.deregister("b")
    gw.settle()
    status, _, backend = gw.request("POST", headers={"x-nacos-instance": gw.backends["b"].addr}, body=b"z" * 500)
    assert (status, backend) == (200, "a")
    assert received(gw, "a")[-1] == ("POST", 500)
    gw.deregister("a")
    gw.settle()
    status, text, _ = gw.request("POST", body=iter([b"p" * 1000] * 3))
    assert status == 503 and '"no_healthy_instance"' in text, text
    assert len(gw.backends["a"].seen) == 1 and gw.backends["b"].seen == []
