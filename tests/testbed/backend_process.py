"""A backend in a process of its own, so that killing it drops every connection at
once, as a crashed application does (a ``Backend`` thread in the test process keeps
serving the connections it has). Run ``python -m testbed.backend_process NAME``; it
prints ``port <n>`` and serves until killed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from testbed.backends import Backend
from testbed.processes import Proc
from testbed.waiting import wait_until

TESTS = Path(__file__).resolve().parents[1]


class ProcessBackend:
    """``Backend``'s face for a stack (``port``, ``reset``, ``stop``) over a child process."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        log = Path(workdir) / f"backend-{name}.log"
        env = dict(os.environ, PYTHONPATH=str(TESTS), PYTHONUNBUFFERED="1")
        self.proc = Proc(f"backend-{name}", [sys.executable, "-m", "testbed.backend_process", name], env, log)

        def port():
            for line in self.proc.log_text().splitlines():
                if line.startswith("port "):
                    return int(line.split()[1])
            return None

        wait_until(lambda: port() is not None, 10, 0.02, f"backend process {name} listening")
        self.port = port()

    def reset(self):
        pass

    def kill(self):
        """Kill it at once: its connections close with it."""
        self.proc.stop(timeout=1.0)

    stop = kill


def main() -> None:
    backend = Backend(sys.argv[1], single_write=True)
    print(f"port {backend.port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
