"""Production conditions the lab's 10 ms request spacing never showed: one request per
refresh interval across workers, Envoy starting cold with many workers at once, a
configuration edit under load, and an application that vanishes by no longer sending
heartbeats instead of deregistering."""

from __future__ import annotations

import collections
import json
import os
import time

import yaml

from testbed.envoy import NACOS_CLUSTER, Envoy, wait_every_worker_routes, wait_first_poll
from testbed.higress import plugin_config
from testbed.waiting import wait_until

NACOS_RQ_TOTAL = f"cluster.{NACOS_CLUSTER}.upstream_rq_total"
LDS_UPDATES = "listener_manager.lds.update_success"


def test_one_request_per_interval_across_two_workers_reaches_every_instance(stack):
    """Before: every poll restarted the weighted rotation and every VM began at the first
    instance, so at one request per interval the first instances got everything."""
    names = ("backend-a", "backend-b", "backend-c", "backend-d")
    s = stack(backends=names, global_overrides={"refreshIntervalMs": 200})
    counts = collections.Counter()
    for _ in range(80):
        counts[s.envoy.request("/demo").backend] += 1
        time.sleep(0.2)
    print(f"\n[rotation] 80 requests, one per 200 ms interval, 2 workers: {dict(counts)}")
    # 20 each if perfectly even; every instance gets at least half its share.
    assert set(counts) == set(names), counts
    assert all(count >= 10 for count in counts.values()), counts


def test_cold_starts_at_concurrency_4_poll_once_per_interval(stack, tmp_path):
    """Before: VMs configuring at once could all win the lease (a write to an absent
    shared-data key is unconditional) and poll forever side by side."""
    s = stack(plugin=False)
    cfg = plugin_config()
    window_s, interval_s = 5.0, cfg.get("refreshIntervalMs", 1000) / 1000
    for start in range(3):
        (tmp_path / f"cold-{start}").mkdir()
        envoy = s.add(
            Envoy(
                tmp_path / f"cold-{start}", s.nacos.http_port, [b.port for b in s.backends.values()], cfg, concurrency=4
            )
        )
        envoy.start()
        wait_first_poll(envoy)
        n0 = envoy.stat(NACOS_RQ_TOTAL)
        time.sleep(window_s)
        calls = envoy.stat(NACOS_RQ_TOTAL) - n0
        pollers = [line for line in envoy.log_text().splitlines() if "now polls Nacos for this gateway" in line]
        print(
            f"\n[cold start {start}] {calls} Nacos requests in {window_s:.0f} s at {interval_s * 1000:.0f} ms; "
            f"{len(pollers)} VM(s) took the lease"
        )
        envoy.stop()
        # One poll per interval, a tenth early at most: 5 or 6 in 5 s, never two VMs' worth.
        assert calls <= window_s / interval_s / 0.9 + 1, calls
        assert len(pollers) == 1, pollers


class WatchedEnvoy(Envoy):
    """Envoy whose listener comes from a watched file (LDS), so the plugin's configuration
    can be edited while it runs, as Higress pushes a WasmPlugin edit."""

    def config(self) -> dict:
        config = super().config()
        listener = config["static_resources"].pop("listeners")[0]
        listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        self.lds_dir = self.workdir / f"lds-{self.port}"
        self.lds_dir.mkdir(exist_ok=True)
        self.lds_path = self.lds_dir / "listeners.yaml"
        self._write_listener(listener)
        # Envoy refuses file-based LDS without a node identity.
        config["node"] = {"id": "gateway", "cluster": "gateway"}
        config["dynamic_resources"] = {
            "lds_config": {
                "path_config_source": {"path": str(self.lds_path), "watched_directory": {"path": str(self.lds_dir)}}
            }
        }
        return config

    def _write_listener(self, listener: dict) -> None:
        self.listener = listener
        staged = self.lds_dir / ".listeners.yaml.new"
        staged.write_text(yaml.safe_dump({"resources": [listener]}, sort_keys=False))
        os.replace(staged, self.lds_path)

    def edit_plugin_config(self, plugin_cfg: dict) -> None:
        chain = self.listener["filter_chains"][0]["filters"][0]["typed_config"]
        wasm = next(f for f in chain["http_filters"] if f["name"] == "envoy.filters.http.wasm")
        wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(plugin_cfg)
        self._write_listener(self.listener)


def test_a_configuration_edit_under_load_keeps_serving(stack, tmp_path):
    """Before: an edit made a new root context with no snapshot, so until its first answer
    fail_closed rejected everything and fail_open sent traffic to the stale endpoints."""
    s = stack(backends=("backend-a", "backend-b"), register=("backend-a",), plugin=False)
    cfg = plugin_config({"refreshIntervalMs": 1000})
    workdir = tmp_path / "watched"
    workdir.mkdir()
    envoy = s.add(WatchedEnvoy(workdir, s.nacos.http_port, [b.port for b in s.backends.values()], cfg))
    envoy.start()
    wait_first_poll(envoy)
    wait_every_worker_routes(envoy)
    updates0 = envoy.stat(LDS_UPDATES)
    edited = plugin_config({"refreshIntervalMs": 1000, "onStale": "fail_closed", "maxStaleMs": 5000})
    answers = collections.Counter()
    passed0 = envoy.guard_stat("passed_through")
    t_end = time.monotonic() + 4
    edited_at = None
    while time.monotonic() < t_end:
        if edited_at is None and time.monotonic() > t_end - 3:
            envoy.edit_plugin_config(edited)
            edited_at = time.monotonic()
        r = envoy.request("/demo")
        answers[r.backend or r.status] += 1
        time.sleep(0.005)
    wait_until(lambda: envoy.stat(LDS_UPDATES) > updates0, 5, 0.05, "the edited listener is loaded")
    print(f"\n[config edit] answers around the edit: {dict(answers)}")
    assert set(answers) == {"backend-a"}, answers
    assert envoy.guard_stat("passed_through") == passed0


def test_an_ephemeral_instance_that_stops_beating_gets_no_traffic(stack):
    """Real applications register ephemeral instances and vanish by no longer sending
    heartbeats. r-nacos marks such an instance unhealthy after its heartbeat timeout."""
    s = stack(
        backends=("backend-a", "backend-b"), register=("backend-a",), global_overrides={"refreshIntervalMs": 1000}
    )
    b = s.be("backend-b")
    beat = {"serviceName": "demo", "ip": "127.0.0.1", "port": b.port, "cluster": "DEFAULT", "weight": 1, "metadata": {}}
    params = {
        "serviceName": "demo",
        "groupName": "DEFAULT_GROUP",
        "namespaceId": "public",
        "ip": "127.0.0.1",
        "port": b.port,
        "ephemeral": "true",
        "weight": 1,
    }
    st, text = s.nacos.raw("POST", "/nacos/v1/ns/instance", params)
    assert st == 200, text

    def send_beat():
        st, text = s.nacos.raw(
            "PUT",
            "/nacos/v1/ns/instance/beat",
            {"serviceName": "demo", "namespaceId": "public", "beat": json.dumps(beat)},
        )
        assert st == 200, text

    # Beat for a while and see it take traffic.
    t_beat_end = time.monotonic() + 6
    while time.monotonic() < t_beat_end:
        send_beat()
        for _ in range(10):
            s.envoy.request("/demo")
        time.sleep(0.2)
    assert b.last_hit() is not None, "the ephemeral instance got traffic while it beat"
    last_beat = time.monotonic()
    # Stop beating; keep traffic going until the instance is unhealthy in Nacos and gone from the guard.
    unhealthy_at = None
    t_end = last_beat + 30
    while time.monotonic() < t_end:
        s.envoy.request("/demo")
        if unhealthy_at is None:
            hosts = s.nacos.list()["hosts"]
            if not any(h["port"] == b.port and h.get("healthy", True) for h in hosts):
                unhealthy_at = time.monotonic()
        elif time.monotonic() > unhealthy_at + 3:
            break
        time.sleep(0.02)
    assert unhealthy_at is not None, "r-nacos marked the silent instance unhealthy"
    last_hit = b.last_hit()
    print(
        f"\n[ephemeral] last beat → unhealthy in r-nacos: {unhealthy_at - last_beat:.2f} s; "
        f"last beat → last request reaching it: {last_hit - last_beat:.2f} s"
    )
    # Nothing after r-nacos marks it unhealthy plus one interval (1 s) and the round trip.
    assert last_hit <= unhealthy_at + 1.5, last_hit - unhealthy_at
