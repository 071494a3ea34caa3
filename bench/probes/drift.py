#!/usr/bin/env python3
"""How steady this machine's speed is: a spin loop pinned to CPU 0 counts the work it
does per CPU-second, in each half second. The spread of those counts is what any
figure taken from CPU time in one window and compared with another window carries.

Run: python3 bench/probes/drift.py   (20 windows, about 10 s)
Two copies at once on the same CPU (``--pair``) show the other side: the ratio of their
counts window by window, which is what measuring variants at the same time relies on.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing import Process, Queue


def spin(windows: int, out: Queue | None = None) -> list:
    """Work per CPU-second in each half second of wall time (the loop pinned to CPU 0)."""
    os.sched_setaffinity(0, {0})
    rates = []
    for _ in range(windows):
        w0, c0, n = time.monotonic(), time.process_time(), 0
        while time.monotonic() - w0 < 0.5:
            for _ in range(2000):
                n += 1
        rates.append(n / max(time.process_time() - c0, 1e-9))
    if out is not None:
        out.put(rates)
    return rates


def main() -> None:
    windows = 20
    if "--pair" in sys.argv:
        q: Queue = Queue()
        procs = [Process(target=spin, args=(windows, q)) for _ in range(2)]
        for p in procs:
            p.start()
        a, b = q.get(), q.get()
        for p in procs:
            p.join()
        ratios = [x / y for x, y in zip(a, b, strict=True)]
        print(f"two loops at once on CPU 0, ratio per window: {min(ratios):.3f}-{max(ratios):.3f}")
        return
    rates = spin(windows)
    lo, hi = min(rates), max(rates)
    span = f"{lo / 1e6:.1f}-{hi / 1e6:.1f} million (max/min {hi / lo:.2f})"
    print(f"loop iterations per CPU-second, {windows} half-second windows: {span}")


if __name__ == "__main__":
    main()
