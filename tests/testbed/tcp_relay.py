"""A loopback TCP relay in front of a server, whose ``cut()`` resets every connection
it carries at once: a connection that dies mid-stream, as a network or a proxy does."""

from __future__ import annotations

import socket
import struct
import threading

from testbed.waiting import free_port


class TcpRelay:
    log_name = "tcp-relay"

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.cuts = 0
        self._pairs: list = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Reset (RST, not FIN) every connection the relay carries now."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        self.cuts += 1

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        self.cut()

    def log_text(self) -> str:
        return f"relay :{self.port} -> :{self.target_port}, {self.cuts} cuts\n"
