"""Child processes, and the one owner that stops everything a run started.

``Proc`` is the only code that starts or kills a child process. ``Owner`` holds every
started thing (processes' wrappers, HTTP servers) and stops each one once, in reverse
order, whatever happened: pytest fixtures, the demo, the soak and the bench all use it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import traceback
from pathlib import Path


class Proc:
    """A child process in its own process group, its output appended to ``log_path``;
    ``stop`` kills the whole group."""

    def __init__(self, name: str, argv: list, env: dict, log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = Path(log_path)
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGCONT)  # a paused process cannot take SIGTERM
            except ProcessLookupError:
                pass
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=timeout)
        self._log.close()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole group: SIGKILL (a crash), SIGSTOP / SIGCONT (a
        pause: the sockets stay open and nothing answers)."""
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.p.wait(timeout=5)

    def log_text(self) -> str:
        return log_since(self.log_path, 0)

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid)


def log_size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def log_since(path: Path, offset: int) -> str:
    """The text a log file gained after byte ``offset``."""
    try:
        return Path(path).read_bytes()[offset:].decode(errors="replace")
    except OSError:
        return ""


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in kB (the envoy console script execs the binary, same pid)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Owner:
    """Everything a run started, stopped once in reverse order.

    A thing has ``stop()``; one with ``log_text()`` and ``log_name`` has its log's tail
    printed by ``dump_logs`` (``LOG_TAIL`` characters of it).
    """

    def __init__(self):
        self.things: list = []

    def add(self, thing):
        self.things.append(thing)
        return thing

    def stop(self, thing) -> None:
        """Stop one thing now (and not again at the end)."""
        if thing in self.things:
            self.things.remove(thing)
        _stop(thing)

    def stop_all(self) -> None:
        while self.things:
            _stop(self.things.pop())

    def dump_logs(self) -> None:
        for t in self.things:
            if hasattr(t, "log_text"):
                print(f"----- {t.log_name} log tail -----")
                print(t.log_text()[-getattr(t, "LOG_TAIL", 4000) :])


def _stop(thing) -> None:
    try:
        thing.stop()
    except Exception:  # noqa: BLE001 - best effort at teardown; the others still stop
        traceback.print_exc()
