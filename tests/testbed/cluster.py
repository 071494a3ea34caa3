"""A three-node r-nacos Raft cluster on loopback, as operators run Nacos, and the faults
a node meets: stop, kill, pause (SIGSTOP), restart with or without its data.

r-nacos 0.8.8 forms a cluster from environment variables (``src/common/mod.rs`` in
nacos-group/r-nacos): each node has ``RNACOS_RAFT_NODE_ID`` and
``RNACOS_RAFT_NODE_ADDR`` (its gRPC address, which carries Raft too); the first starts
with ``RNACOS_RAFT_AUTO_INIT=true``, the others with ``RNACOS_RAFT_JOIN_ADDR`` set to a
member's address. ``GET /nacos/v1/raft/metrics`` on any node names the leader and the
members.

Seen here: the cluster forms in about a second; a persistent instance registered on one
node is listed by the others within milliseconds; a node killed with the leader role is
replaced within about 3 s; a node restarted without its data rejoins through a live
member and lists ``hosts: []`` for its first ~0.3 s before it has caught up. r-nacos
takes ``RNACOS_RAFT_AUTO_INIT`` as true on node id 1 when it is unset, so an empty node
1 restarted without ``=false`` founds a one-node cluster of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from testbed.rnacos import RNacos
from testbed.waiting import wait_until

RAFT_METRICS = "/nacos/v1/raft/metrics"
# A fresh node 1 panics now and then in raftapply.rs (DESIGN.md); RNacos.start retries
# that, and a cluster that still does not form is started afresh this many times.
FORM_ATTEMPTS = 4


class RNacosCluster:
    """``size`` r-nacos nodes forming one Raft cluster; ``nodes[i]`` is an ``RNacos``
    (its ``http_port``/``grpc_port``). Node indexes are 0-based; Raft ids are index + 1."""

    log_name = "r-nacos cluster"

    def __init__(self, workdir: Path, size: int = 3, extra_env: dict | None = None, auth: bool = False):
        self.workdir = Path(workdir)
        self.size = size
        self.auth = auth
        self.extra_env = dict(extra_env or {})
        self.nodes: list[RNacos] = []
        self.paused: set = set()
        self.generation = 0

    # ---- forming
    def _node(self, index: int) -> RNacos:
        node = RNacos(self.workdir / f"g{self.generation}-node{index + 1}", auth=self.auth, extra_env=self.extra_env)
        node.log_name = f"r-nacos node {index + 1}"
        return node

    def _raft_env(self, index: int, join: int | None) -> dict:
        node = self.nodes[index]
        env = {"RNACOS_RAFT_NODE_ID": str(index + 1), "RNACOS_RAFT_NODE_ADDR": f"127.0.0.1:{node.grpc_port}"}
        if join is None:
            env["RNACOS_RAFT_AUTO_INIT"] = "true"
        else:
            env["RNACOS_RAFT_JOIN_ADDR"] = f"127.0.0.1:{self.nodes[join].grpc_port}"
        return env

    def start(self) -> RNacosCluster:
        """Start every node (node 1 initialises, the others join it) and wait until the
        cluster has a leader that every node names and every node answers lists."""
        for attempt in range(FORM_ATTEMPTS):
            self.nodes = [self._node(i) for i in range(self.size)]
            try:
                for i, node in enumerate(self.nodes):
                    node.extra_env.update(self._raft_env(i, None if i == 0 else 0))
                    node.start()
                    if i == 0:
                        wait_until(lambda: self.leader() == 0, 15, 0.05, "node 1 leads alone")
                self.wait_formed()
                return self
            except (TimeoutError, RuntimeError):
                self.stop()
                if attempt == FORM_ATTEMPTS - 1:
                    raise
                self.generation += 1
        return self

    def metrics(self, index: int) -> dict | None:
        """The node's Raft view, or None when it does not answer."""
        try:
            st, text = self.nodes[index].raw("GET", RAFT_METRICS, timeout=1.0)
        except (OSError, RuntimeError):  # no answer, or (with auth) no login
            return None
        return json.loads(text) if st == 200 else None

    def leader(self, among=None) -> int | None:
        """The index of the leader every answering node of ``among`` (default: all live)
        names, or None while they disagree or none is named."""
        views = [self.metrics(i) for i in (self.live() if among is None else among)]
        named = {v.get("current_leader") for v in views if v}
        if len(named) != 1 or None in named or not all(views):
            return None
        leader = named.pop() - 1
        return leader if leader in self.live() else None

    def live(self) -> list:
        """The nodes running and not paused."""
        return [i for i, n in enumerate(self.nodes) if n.proc is not None and i not in self.paused]

    def wait_formed(self, timeout: float = 20) -> int:
        """Every live node answers, names the same live leader and counts every member;
        returns the leader's index."""

        def formed():
            leader = self.leader()
            if leader is None:
                return None
            members = [set(self.metrics(i)["membership_config"]["members"]) for i in self.live()]
            full = all(len(m) == self.size for m in members)
            return (leader + 1) if full else None  # +1: index 0 is a valid leader

        return wait_until(formed, timeout, 0.05, "a Raft leader all nodes name") - 1

    # ---- faults
    def stop_node(self, index: int) -> None:
        self.nodes[index].stop()

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill()

    def pause_node(self, index: int) -> None:
        self.nodes[index].pause()
        self.paused.add(index)

    def resume_node(self, index: int) -> None:
        self.nodes[index].resume()
        self.paused.discard(index)

    def start_node(self, index: int, keep_data: bool = True) -> None:
        """Start a stopped node on its ports again; without its data it joins through a
        live member, as a node replaced by an empty one does."""
        node = self.nodes[index]
        if not keep_data:
            node.wipe_data()
            # join through the leader: a join sent to a follower that itself joined
            # empty was seen to leave the node outside the cluster
            leader = self.leader()
            others = [i for i in self.live() if i != index]
            node.extra_env.update(self._raft_env(index, leader if leader is not None else others[0]))
            # r-nacos defaults AUTO_INIT to true on node id 1: an empty node 1 would
            # found a one-node cluster of its own and answer empty lists (seen here).
            node.extra_env["RNACOS_RAFT_AUTO_INIT"] = "false"
        node.start()

    def restart_node(self, index: int, keep_data: bool = True, down_s: float = 0.0) -> None:
        self.stop_node(index)
        time.sleep(down_s)
        self.start_node(index, keep_data)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.stop()
        self.paused.clear()

    def log_text(self) -> str:
        return "".join(f"--- node {i + 1}\n{n.log_text()[-1500:]}" for i, n in enumerate(self.nodes))

    # ---- the registry, through one node and read back through every other
    def register(self, port: int, via: int = 0, **instance) -> None:
        self.nodes[via].register(port, **instance)
        self.wait_listed(port, True, instance.get("service", "demo"))

    def deregister(self, port: int, via: int = 0, **where) -> None:
        self.nodes[via].deregister(port, **where)
        self.wait_listed(port, False, where.get("service", "demo"))

    def wait_listed(self, port: int, listed: bool, service: str = "demo", timeout: float = 10) -> None:
        """Every live node lists (or no longer lists) the instance on ``port``."""

        def agreed():
            for i in self.live():
                ports = {h["port"] for h in self.nodes[i].list(service)["hosts"]}
                if (port in ports) != listed:
                    return False
            return True

        wait_until(agreed, timeout, 0.02, f"every node {'lists' if listed else 'dropped'} :{port} in {service}")

    def server_metrics(self, index: int) -> dict:
        """r-nacos's own Prometheus figures (``/nacos/metrics``), by name; gauges are
        refreshed every ``RNACOS_METRICS_COLLECT_INTERVAL_SECOND`` (15 s by default)."""
        st, text = self.nodes[index].raw("GET", "/nacos/metrics", token=False)
        out = {}
        for line in text.splitlines() if st == 200 else ():
            name, _, value = line.partition(" ")
            if line and not line.startswith("#") and "{" not in name:
                out[name] = float(value)
        return out

    def http_ports(self) -> list:
        return [n.http_port for n in self.nodes]

    def grpc_ports(self) -> list:
        return [n.grpc_port for n in self.nodes]
