"""Free loopback ports and the one wait loop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

_HANDED_OUT: set = set()
_PORT_LOCK = threading.Lock()


def free_port() -> int:
    """A free loopback port never handed out before by this process (the kernel may
    give the same ephemeral port twice in a row once the probe socket is closed)."""
    with _PORT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Fatal(Exception):
    """Raised inside a wait_until predicate to stop waiting at once (e.g. process died)."""


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - we report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


def wait_port_closed(port: int, what: str = "port closed") -> None:
    wait_until(lambda: not port_open(port), 10, 0.05, what)
