"""Request streams against the gateway, recording every answer."""

from __future__ import annotations

import http.client
import random
import threading
import time

from testbed.rejections import label


class Traffic:
    """A background request stream (a new connection per request); ``records`` holds
    ``(t_sent, t_done, status, body)`` of each, status -1 for no answer.

    By default it waits ``interval`` after each answer; with ``fixed_rate`` it sends one
    request every ``interval`` seconds, never bursting to catch up. Use it as a context
    manager, or ``start()``/``stop()``.
    """

    def __init__(
        self, envoy, path: str = "/demo", interval: float = 0.01, headers: dict | None = None, fixed_rate: bool = False
    ):
        self.envoy = envoy
        self.path = path
        self.interval = interval
        self.headers = headers or {}
        self.fixed_rate = fixed_rate
        self.records = []  # (t_sent, t_done, status, body)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        nxt = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = self.envoy.request(self.path, self.headers, timeout=3)
                self.records.append((t0, time.monotonic(), r.status, r.body))
            except Exception as e:  # noqa: BLE001 - every failure is a result
                self.records.append((t0, time.monotonic(), -1, repr(e)))
            if not self.fixed_rate:
                self._stop.wait(self.interval)
                continue
            nxt += self.interval
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = time.monotonic()

    def start(self) -> Traffic:
        self._t.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    def stop(self):
        self._stop.set()
        self._t.join(timeout=10)

    def since(self, t: float) -> list:
        return [r for r in self.records if r[0] >= t]

    @property
    def answered(self) -> int:
        return sum(1 for r in self.records if r[2] != -1)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r[2] == -1)


class RateClient(threading.Thread):
    """Sends GET /demo at a fixed rate; never bursts to catch up after a stall.

    ``keepalive`` clients reuse one connection for a random 20-200 requests, then open a
    new one; the others open a connection per request. ``records`` holds ``(t_sent,
    t_done, status, label, reused_connection)``; label: backend name, rejection code,
    body excerpt or exception.
    """

    def __init__(self, idx: int, port: int, rate: float, keepalive: bool, stop: threading.Event, seed: int):
        super().__init__(name=f"client-{idx}", daemon=True)
        self.port = port
        self.period = 1.0 / rate
        self.keepalive = keepalive
        self.stop_ev = stop
        self.rng = random.Random(seed)
        self.records: list = []

    def run(self):
        conn: http.client.HTTPConnection | None = None
        budget = 0
        next_t = time.monotonic() + self.rng.random() * self.period
        while not self.stop_ev.is_set():
            delay = next_t - time.monotonic()
            if delay > 0 and self.stop_ev.wait(delay):
                break
            next_t += self.period
            now = time.monotonic()
            if next_t < now - self.period:  # fell behind (machine busy): no burst
                next_t = now
            reused = conn is not None
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    budget = self.rng.randint(20, 200) if self.keepalive else 1
                conn.request("GET", "/demo")
                r = conn.getresponse()
                body = r.read()
                t1 = time.monotonic()
                status, what = r.status, label(r.status, r.getheader("content-type") or "", body)
                budget -= 1
                if budget <= 0 or r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is a result
                t1 = time.monotonic()
                status, what = -1, f"{type(e).__name__}: {e}"[:200]
                if conn is not None:
                    conn.close()
                conn = None
            self.records.append((t0, t1, status, what, reused))
        if conn is not None:
            conn.close()
