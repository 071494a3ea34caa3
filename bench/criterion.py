"""The criterion micro-benchmarks of the hot pure functions
(``cargo bench --no-default-features --bench hot_paths``), run with section ``sizes``
unless ``--skip-criterion``."""

from __future__ import annotations

import re
import subprocess

from measure import log

from testbed.paths import REPO


def section_criterion(args, res: dict) -> None:
    log("criterion micro-benchmarks (cargo bench --no-default-features --bench hot_paths) ...")
    cmd = [
        "cargo",
        "bench",
        "--no-default-features",
        "--bench",
        "hot_paths",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        str(args.criterion_seconds),
        "--noplot",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError("cargo bench failed:\n" + out.stderr[-3000:])
    benches = []
    name = None
    for line in out.stdout.splitlines():
        m = re.match(r"^(\S.*?)?\s+time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
        if m:
            benches.append((m.group(1) or name or "?", m.group(3)))
            name = None
        elif line and not line[0].isspace() and not line.startswith(("Benchmarking", "Found", "Gnuplot")):
            name = line.strip()
    res["criterion"] = benches
    for n, t in benches:
        log(f"  {n}: {t}")
