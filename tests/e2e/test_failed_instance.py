"""An ephemeral instance whose process dies while Nacos still lists it (issue 29).

Nacos marks it unhealthy only once its heartbeats have been missing for about 15 s.
Until then the plugin routed to it, and every request it got failed. Now the first
failure sets it aside for every worker and asks Nacos at once.

Run alone, with its figures printed:
``make build && NIG_ENVOY=... NIG_RNACOS=... NIG_PLUGIN_WASM=$PWD/build/plugin-envoy.wasm
$CACHE/venv/bin/python -m pytest tests/e2e/test_failed_instance.py -v -s``
(the variables the Makefile's e2e target sets).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter

from testbed.backend_process import ProcessBackend
from testbed.higress import plugin_config

WORKERS = 4
CLIENTS = 8
# A failure's debug line, with the Envoy worker thread that saw it.
FAILED_LINE = re.compile(r"\]\[(\d+)\]\[debug\].*the request routed to (\S+) failed \((.*)\)")


class Load:
    """``CLIENTS`` threads, each on its own keep-alive connection (so spread over the
    workers), sending GET /demo back to back; every answer kept as (time, status)."""

    def __init__(self, port: int):
        self.port = port
        self.answers: list = []
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def client(self):
        conn = None
        while self.running:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/demo")
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                conn, status = None, 0
            with self.lock:
                self.answers.append((time.monotonic(), status))
            time.sleep(0.005)

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(5)

    def failed_after(self, t0: float) -> list:
        with self.lock:
            return [t for t, status in self.answers if t >= t0 and status != 200]

    def count_after(self, t0: float) -> int:
        with self.lock:
            return sum(1 for t, _ in self.answers if t >= t0)


def ephemeral(nacos, port: int, name: str):
    params = {
        "serviceName": "demo",
        "groupName": "DEFAULT_GROUP",
        "namespaceId": "public",
        "ip": "127.0.0.1",
        "port": port,
        "ephemeral": "true",
        "weight": 1,
    }
    st, text = nacos.raw("POST", "/nacos/v1/ns/instance", params)
    assert st == 200, text
    beat = {"serviceName": "demo", "ip": "127.0.0.1", "port": port, "cluster": "DEFAULT", "weight": 1, "metadata": {}}
    stop = threading.Event()

    def beating():
        while not stop.is_set():
            nacos.raw(
                "PUT",
                "/nacos/v1/ns/instance/beat",
                {"serviceName": "demo", "namespaceId": "public", "beat": json.dumps(beat)},
            )
            stop.wait(1.0)

    threading.Thread(target=beating, daemon=True, name=f"beat-{name}").start()
    return stop


def run(bed, overrides: dict, watch_s: float) -> dict:
    """Kill the ephemeral instance's process under load and measure what follows."""
    bed.start_registry(("backend-a", "backend-b"))
    dying = bed.add(ProcessBackend("backend-c", bed.workdir))
    bed.backends["backend-c"] = dying
    stop_beats = ephemeral(bed.nacos, dying.port, "backend-c")
    envoy = bed.start_gateway(plugin_config(overrides), concurrency=WORKERS)
    bed.wait_ready()
    bed.wait_only({"backend-a", "backend-b", "backend-c"}, window=1)
    dead = f"127.0.0.1:{dying.port}"
    load = Load(envoy.port)
    try:
        time.sleep(2.0)
        polls0 = envoy.guard_stat("poll_success")
        log0 = envoy.log_size()
        # The process dies; its heartbeats stop with it.
        t_kill = time.monotonic()
        dying.kill()
        stop_beats.set()
        poll_at = None
        unhealthy_at = None
        t_end = t_kill + watch_s
        while time.monotonic() < t_end:
            if poll_at is None and envoy.guard_stat("poll_success") > polls0:
                poll_at = time.monotonic()
            if unhealthy_at is None:
                hosts = bed.nacos.list()["hosts"]
                if not any(h["port"] == dying.port and h.get("healthy", True) for h in hosts):
                    unhealthy_at = time.monotonic()
            time.sleep(0.02)
        load.stop()
        failed = load.failed_after(t_kill)
        lines = [m.groups() for m in FAILED_LINE.finditer(envoy.log_since(log0))]
        return {
            "requests": load.count_after(t_kill),
            "failed": len(failed),
            "first_failure_s": (failed[0] - t_kill) if failed else None,
            "last_failure_s": (failed[-1] - t_kill) if failed else None,
            "poll_after_first_failure_s": (poll_at - failed[0]) if poll_at and failed else None,
            "unhealthy_s": (unhealthy_at - t_kill) if unhealthy_at else None,
            "per_worker": dict(Counter(thread for thread, endpoint, _ in lines if endpoint == dead)),
            "reasons": dict(Counter(reason for _, _, reason in lines)),
            "avoided": envoy.guard_stat("instances_avoided"),
            "instance_failures": envoy.guard_stat("instance_failures"),
        }
    finally:
        load.stop()


def show(label: str, figures: dict) -> None:
    print(
        f"\n[{label}] "
        + ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in figures.items())
    )


def test_a_killed_instance_costs_at_most_one_failed_request_per_worker(bed):
    # Polled once a minute: the first poll went out at start, the next is not due for
    # 54 s at the earliest, so any poll within the 22 s watched is one a failure asked for.
    figures = run(bed, {"refreshIntervalMs": 60000}, watch_s=22)
    show("avoided", figures)
    assert figures["failed"] >= 1, "the dead instance got requests"
    assert figures["failed"] == figures["instance_failures"], figures
    assert all(count <= 1 for count in figures["per_worker"].values()), figures
    assert figures["failed"] <= WORKERS, figures
    assert figures["avoided"] == 1, figures
    assert figures["poll_after_first_failure_s"] is not None, "the failure asked Nacos at once"
    assert figures["unhealthy_s"] is not None, "r-nacos marked it unhealthy meanwhile"
    assert figures["last_failure_s"] < figures["unhealthy_s"], "nothing fails once Nacos knows"


def test_without_avoiding_every_request_to_it_fails_until_nacos_knows(bed):
    # `avoidFailedMs: 0` at the default interval, as the plugin was before: the comparison.
    figures = run(bed, {"refreshIntervalMs": 1000, "avoidFailedMs": 0}, watch_s=22)
    show("not avoided", figures)
    assert figures["avoided"] == 0
    assert figures["failed"] > 10 * WORKERS, figures
