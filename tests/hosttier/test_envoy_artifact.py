"""The upstream-Envoy artifact in the host tier, in both plain-Envoy routing modes.

tests/e2e/test_host_tier_crosscheck.py runs the same scenario against real Envoy 1.40 and
r-nacos and asserts the same transcript, which is what makes this double trustworthy.
"""

import pytest
import scenario
import wasmtime
from gateway import Gateway, Vm

ADDRESSES = {"a": "10.0.0.1:8080", "b": "10.0.0.2:8080", "c": "10.0.0.3:8080"}


def expected(mode):
    routed = {"status": 200, "backend": "a", "upstream_saw_routing_header": True}
    rejected = {"status": 503, "backend": None, "code": "no_healthy_instance"}
    return [
        ("GET, a and b registered: backends", ["a", "b"]),
        ("pinned to a", ["a", "a", "a"]),
        ("forged routing header to c: c reached", False),
        ("POST 1000 bytes, pinned to a", dict(routed, upstream_body_len=1000)),
        (
            "legacy route, forged header: status, header reached upstream",
            *((200, False) if mode == "override_host" else (503, None)),
        ),
        ("b deregistered: backends", ["a"]),
        ("pinned to deregistered b", [dict(routed, upstream_body_len=0)] * 2),
        ("nothing registered", [rejected] * 3),
        ("POST, nothing registered", rejected),
        ("counter deltas", {"routed": 24, "rerouted": 2, "rejected": 4, "passed_through": 0}),
    ]


@pytest.mark.parametrize("mode", ["override_host", "original_dst"])
def test_scenario_in_the_tier(envoy_wasm, mode):
    assert scenario.run(scenario.TierDriver(envoy_wasm, mode, ADDRESSES), mode) == expected(mode)


def test_envoy_artifact_has_no_higress_imports_and_refuses_higress_routing(envoy_wasm, higress_wasm):
    engine = wasmtime.Engine()

    def imports(path):
        return {(i.module, i.name) for i in wasmtime.Module.from_file(engine, path).imports}

    higress_only = {("env", "proxy_set_upstream_override_host"), ("env", "proxy_get_upstream_hosts")}
    assert not imports(envoy_wasm) & higress_only
    assert imports(higress_wasm) >= higress_only
    gw = Gateway(envoy_wasm, scenario.plugin_config({"routing": "higress"}), mode="override_host")
    assert not any(vm.configured for vm in gw.vms)
    assert any("higress" in text for vm in gw.vms for _, text in vm.logs), gw.vms[0].logs


def test_every_import_of_both_artifacts_is_implemented(envoy_wasm, higress_wasm):
    """The tier refuses a module with an import it lacks (Vm.__init__); list them here."""
    engine = wasmtime.Engine()
    for path in (envoy_wasm, higress_wasm):
        names = sorted(f"{i.module}.{i.name}" for i in wasmtime.Module.from_file(engine, path).imports)
        print(path, len(names), "imports:", ", ".join(names))
        assert all(hasattr(Vm, name.replace(".", "__")) for name in names)
        assert "proxy_abi_version_0_2_1" in {e.name for e in wasmtime.Module.from_file(engine, path).exports}
