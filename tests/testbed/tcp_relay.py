"""A loopback TCP relay in front of one server or several.

With one target, ``cut()`` resets every connection it carries at once: a connection
that dies mid-stream, as a network or a proxy does. With several, it is a TCP load
balancer as a cloud SLB or a Kubernetes ClusterIP is: each new connection goes to the
next target in turn, skipping one that refuses the connection; a connection stays on
its target until either side closes it. It counts connections per target, so a test
can see where a gateway's connections landed.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections import Counter

from testbed.waiting import free_port


class TcpRelay:
    log_name = "tcp-relay"

    def __init__(self, target_port: int | list):
        self.targets = list(target_port) if isinstance(target_port, list | tuple) else [target_port]
        self.target_port = self.targets[0]
        self.port = free_port()
        self.cuts = 0
        self.opened: Counter = Counter()  # connections made, by target port
        self._pairs: list = []  # _Pair
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect(self) -> tuple:
        """The next target that accepts, round robin; (socket, port) or (None, None)."""
        start = next(self._turn)
        for k in range(len(self.targets)):
            port = self.targets[(start + k) % len(self.targets)]
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=2), port
            except OSError:
                continue
        return None, None

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server, port = self._connect()
            if server is None:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server, port)
            with self._lock:
                self._pairs.append(pair)
                self.opened[port] += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    @staticmethod
    def _pump(pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        pair.open = False
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def active(self) -> Counter:
        """Connections open now, by target port."""
        with self._lock:
            self._pairs = [p for p in self._pairs if p.open]
            return Counter(p.port for p in self._pairs)

    def cut(self, target: int | None = None) -> None:
        """Reset (RST, not FIN) every connection the relay carries now (to ``target``
        only, if given)."""
        with self._lock:
            cut = [p for p in self._pairs if target is None or p.port == target]
            self._pairs = [p for p in self._pairs if p not in cut]
        for pair in cut:
            pair.open = False
            for s in (pair.client, pair.server):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                s.close()
        self.cuts += 1

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        self.cut()

    def log_text(self) -> str:
        return f"relay :{self.port} -> {self.targets}, opened {dict(self.opened)}, {self.cuts} cuts\n"


class _Pair:
    """One relayed connection; ``open`` until either pump sees it end."""

    def __init__(self, client: socket.socket, server: socket.socket, port: int):
        self.client, self.server, self.port = client, server, port
        self.open = True
