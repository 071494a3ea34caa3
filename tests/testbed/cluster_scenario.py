"""A gateway against a three-node r-nacos cluster under load: requests flowing, one
instance churning, faults injected into nodes; and the figures a scenario yields
(detection, requests, 5xx, time without a push link, list calls).

How the gateway reaches the cluster (``via``):

* ``lb``: one TCP balancer address for HTTP and one for gRPC (``TcpRelay`` over the
  nodes), the HTTP and gRPC clusters each one host, as behind a cloud SLB, a Kubernetes
  ClusterIP or a domain;
* ``nodes``: the HTTP cluster lists the three nodes; gRPC (if push) through the balancer;
* ``grpc-nodes``: both clusters list the three nodes, the configuration an operator
  writes first.
"""

from __future__ import annotations

import itertools
import threading
import time

from testbed.backends import Backend
from testbed.cluster import RNacosCluster
from testbed.envoy import NACOS_CLUSTER, NACOS_GRPC_CLUSTER, wait_every_worker_routes, wait_first_poll
from testbed.higress import plugin_config
from testbed.rejections import DOCUMENTED_CODES, label
from testbed.tcp_relay import TcpRelay
from testbed.traffic import Traffic
from testbed.waiting import wait_until

# A usable instance that gets no request for this long while requests flow was taken
# out of the plugin's content (it gets one in two or three requests, ~30 a second).
FLAP_GAP_S = 0.4


def tick_ms(interval_ms: int) -> float:
    """P, the plugin's tick period: clamp(I/20, 10, 50) ms (docs/testing.md)."""
    return min(max(interval_ms / 20, 10), 50)


def bound_with_trouble_ms(interval_ms: int, timeout_ms: int, max_stale_ms: int) -> float:
    """docs/testing.md, contract 1 with trouble: I + T + 2P + I/2 + M + 2P'."""
    p = tick_ms(interval_ms)
    return interval_ms + timeout_ms + 2 * p + interval_ms / 2 + max_stale_ms + 2 * p * 1.1


class ClusterScenario:
    """r-nacos cluster, backends A (stays) and B (churns), the balancers and one gateway,
    all owned by ``bed`` (a ``Stack``)."""

    def __init__(
        self,
        bed,
        via: str = "lb",
        push: bool = False,
        interval_ms: int = 300,
        timeout_ms: int = 500,
        max_stale_ms: int = 3000,
        concurrency: int = 2,
        safety_ms: int = 600_000,
    ):
        self.bed, self.via, self.push = bed, via, push
        self.interval_ms, self.timeout_ms, self.max_stale_ms = interval_ms, timeout_ms, max_stale_ms
        self.cluster = bed.add(RNacosCluster(bed.workdir / "cluster"))
        self.cluster.start()
        self.a = bed.add(Backend("backend-a"))
        self.b = bed.add(Backend("backend-b"))
        bed.backends.update({"backend-a": self.a, "backend-b": self.b})
        for backend in (self.a, self.b):
            self.cluster.register(backend.port, via=1)
        self.http_lb = bed.add(TcpRelay(self.cluster.http_ports()))
        self.grpc_lb = bed.add(TcpRelay(self.cluster.grpc_ports()))
        http_port = self.http_lb.port if via == "lb" else self.cluster.http_ports()
        grpc_port = self.cluster.grpc_ports() if via == "grpc-nodes" else self.grpc_lb.port
        overrides = {
            "refreshIntervalMs": interval_ms,
            "maxStaleMs": max_stale_ms,
            "onStale": "fail_closed",
            "nacos": {"timeoutMs": timeout_ms},
        }
        if push:
            overrides["nacos"]["push"] = {"grpcCluster": NACOS_GRPC_CLUSTER, "safetyIntervalMs": safety_ms}
        self.envoy = bed.gateway(
            plugin_config(overrides),
            nacos_port=http_port,
            nacos_grpc_port=grpc_port,
            backends=[self.a, self.b],
            concurrency=concurrency,
        )
        bed.envoy = self.envoy
        wait_first_poll(self.envoy)
        wait_every_worker_routes(self.envoy, expect={"backend-a", "backend-b"})
        self.deregistrations: list = []  # (t deregistered, t registered again or None)
        self.link_samples: list = []  # (t, push_streams)
        self._stop = threading.Event()
        self._threads: list = []
        self.traffic: Traffic | None = None
        self._writer = itertools.count(1)
        self.marks: list = []  # (t, fault)

    # ---- where the link is
    def link_node(self) -> int | None:
        """The node whose gRPC port carries the gateway's connection through the
        balancer (None: none, or not through the balancer)."""
        active = [port for port, n in self.grpc_lb.active().items() if n]
        ports = self.cluster.grpc_ports()
        return ports.index(active[0]) if len(active) == 1 and active[0] in ports else None

    def streams(self) -> int:
        return self.envoy.guard_stat("push_streams", service=None)

    def wait_link(self, timeout: float = 20) -> None:
        wait_until(lambda: self.streams() == 1, timeout, 0.05, "a push stream")

    # ---- load
    def _write(self, what, port: int) -> float:
        """Register or deregister through the next live node, again until the cluster
        takes it (writes fail while a service's owner or the leader is gone); the time
        it was taken."""

        def taken():
            live = self.cluster.live()
            node = live[next(self._writer) % len(live)]
            try:
                what(self.cluster.nodes[node], port)
            except (OSError, RuntimeError):
                return None
            return time.monotonic()

        return wait_until(taken, 30, 0.1, "the cluster took a write")

    def _churn(self, period: float) -> None:
        while not self._stop.wait(period):
            t = self._write(lambda n, p: n.deregister(p), self.b.port)
            self.deregistrations.append([t, None])
            if self._stop.wait(period):
                break
            self.deregistrations[-1][1] = self._write(lambda n, p: n.register(p), self.b.port)

    def _watch_link(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.link_samples.append((time.monotonic(), self.streams()))
            except (OSError, RuntimeError):
                pass

    def start_load(self, churn_period: float = 1.0) -> None:
        self.t_load = time.monotonic()
        self.calls0 = self.list_calls()
        self.polls0 = self.poll_counts()
        self.traffic = Traffic(self.envoy, interval=0.01).start()
        for target, args in ((self._churn, (churn_period,)), (self._watch_link, ())):
            t = threading.Thread(target=target, args=args, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_load(self) -> dict:
        """Stop the load and return the figures (see ``figures``)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=35)
        self.traffic.stop()
        # B back for whoever comes next
        if self.deregistrations and self.deregistrations[-1][1] is None:
            self.deregistrations[-1][1] = self._write(lambda n, p: n.register(p), self.b.port)
        return self.figures(time.monotonic())

    # ---- figures
    def list_calls(self) -> int:
        return self.envoy.stat(f"cluster.{NACOS_CLUSTER}.upstream_rq_total")

    def poll_counts(self) -> tuple:
        return self.envoy.guard_stat("poll_success"), self.envoy.guard_stat("poll_failure")

    def figures(self, t_end: float) -> dict:
        bound_s = bound_with_trouble_ms(self.interval_ms, self.timeout_ms, self.max_stale_ms) / 1000
        detections, late = [], 0
        hits = list(self.b.hit_times)
        for t_gone, t_back in self.deregistrations:
            window = [h for h in hits if t_gone < h < (t_back or t_end)]
            detections.append((window[-1] - t_gone) if window else 0.0)
            late += sum(1 for h in window if h > t_gone + bound_s)
        records = self.traffic.records
        labels = [label(r[2], "application/json", r[3].encode()) if r[2] == 503 else r[2] for r in records]
        documented = sum(1 for x in labels if x in DOCUMENTED_CODES)
        undocumented = sum(1 for r, x in zip(records, labels, strict=True) if r[2] != 200 and x not in DOCUMENTED_CODES)
        polls = self.poll_counts()
        return {
            "seconds": t_end - self.t_load,
            "requests": len(records),
            "ok": sum(1 for r in records if r[2] == 200),
            "documented_rejections": documented,
            "rejection_codes": sorted({x for x in labels if x in DOCUMENTED_CODES}),
            "undocumented_5xx_or_errors": undocumented,
            "deregistrations": len(self.deregistrations),
            "detection_ms": [round(d * 1000) for d in detections],
            "late_requests": late,
            "bound_ms": round(bound_s * 1000),
            "list_calls": self.list_calls() - self.calls0,
            "poll_success": polls[0] - self.polls0[0],
            "poll_failure": polls[1] - self.polls0[1],
            "no_link_ms": round(self.time_without_link() * 1000) if self.push else None,
            "flaps": self.content_flaps(t_end),
            "rejection_runs": self.rejection_runs(),
        }

    def mark(self, what: str) -> None:
        """Note an injected fault, to place the figures on the timeline."""
        self.marks.append((time.monotonic(), what))

    def rejection_runs(self) -> list:
        """Each run of consecutive rejections while A was registered (all along): A out
        of the plugin's content. (start after the load began in s, length ms, the last
        fault marked before it and how long after it)."""
        runs, current = [], []
        for r in self.traffic.records:
            if r[2] == 503:
                current.append(r[0])
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        out = []
        for run in runs:
            before = [(t, w) for t, w in self.marks if t <= run[0]]
            since = f"{before[-1][1]} +{(run[0] - before[-1][0]) * 1000:.0f} ms" if before else "-"
            out.append((round(run[0] - self.t_load, 1), round((run[-1] - run[0]) * 1000), since))
        return out

    def content_flaps(self, t_end: float, gap_s: float = FLAP_GAP_S) -> int:
        """Times the plugin's content flapped: an instance registered all along (A, or
        B between registrations) got no request for ``gap_s`` while requests flowed and
        then got them again; requests rejected while A was registered (runs less than
        ``gap_s`` apart count once); or B, once gone, came back before it was registered."""
        sent = [r[0] for r in self.traffic.records if r[2] == 200]
        windows = [(self.t_load, self.a.hit_times, t_end)]
        back = [self.t_load] + [t for _, t in self.deregistrations if t is not None]
        gone = [t for t, _ in self.deregistrations] + [t_end]
        windows += [(t0, self.b.hit_times, t1) for t0, t1 in zip(back, gone, strict=False)]
        flaps = 0
        for t0, hit_times, t1 in windows:
            hits = [h for h in hit_times if t0 < h < t1]
            for h0, h1 in itertools.pairwise(hits):
                flowing = sum(1 for t in sent if h0 < t < h1)
                if h1 - h0 > gap_s and flowing >= 5:
                    flaps += 1
        for t_gone, t_back in self.deregistrations:
            hits = [h for h in self.b.hit_times if t_gone < h < (t_back or t_end)]
            flaps += sum(1 for h0, h1 in itertools.pairwise(hits) if h1 - h0 > gap_s)
        runs = [start for start, _, _ in self.rejection_runs()]
        return flaps + sum(1 for k, start in enumerate(runs) if k == 0 or start - runs[k - 1] > gap_s)

    def time_without_link(self) -> float:
        """Total time the sampled ``push_streams`` read 0 (push scenarios)."""
        gap = 0.0
        for (t0, s0), (t1, _) in itertools.pairwise(self.link_samples):
            if s0 == 0:
                gap += t1 - t0
        return gap

    def schedule_calls(self, seconds: float, extra: int) -> float:
        """The most list calls the schedule allows in ``seconds`` for one service: one per
        interval, up to a tenth early (the jitter), plus ``extra`` (polls at once after a
        link loss, a failed poll's retry)."""
        return seconds / (0.9 * self.interval_ms / 1000) + 1 + extra


def report(name: str, figures: dict) -> None:
    """One line per scenario in the test output (the figures docs/testing.md quotes)."""
    d = figures["detection_ms"]
    print(
        f"\n[cluster {name}] {figures['requests']} requests in {figures['seconds']:.1f} s, "
        f"{figures['ok']} answered 200, documented rejections {figures['documented_rejections']} "
        f"{figures['rejection_codes']}, other non-200 {figures['undocumented_5xx_or_errors']}; "
        f"{figures['deregistrations']} deregistrations, detection "
        f"{min(d) if d else '-'}..{max(d) if d else '-'} ms (bound {figures['bound_ms']} ms), "
        f"late requests {figures['late_requests']}; list calls {figures['list_calls']}, "
        f"polls ok/failed {figures['poll_success']}/{figures['poll_failure']}; "
        f"content flaps {figures['flaps']}, rejection runs {figures['rejection_runs']}"
        + (f"; time without a push link {figures['no_link_ms']} ms" if figures["no_link_ms"] is not None else "")
    )
