"""Does a variant's CPU per request over the minimal filter's depend on how fast the
machine was in that round? Reads the per-round table of the overhead section
("Gateway CPU per request, every round") from a results file written by
`bench/run.py` (default `bench/results.md`, every full run in it), and prints per
variant the correlation of the ratio with the minimal filter's own CPU per request
(high: the machine was slow) and the median ratio over the faster and the slower half
of the rounds.

    python3 bench/probes/speed_and_ratio.py [results.md]
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

TABLE = "### Gateway CPU per request, every round"


def rounds(text: str) -> dict:
    """variant -> [(the minimal filter's us/request, the variant's over it)]."""
    out = defaultdict(list)
    inside = False
    for line in text.splitlines():
        if line.startswith("### "):
            inside = line.strip() == TABLE
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not inside or len(cells) < 14 or not cells[0].isdigit():
            continue
        variant, own, beside = cells[2], float(cells[5]), cells[13]
        if not beside[:1].isdigit():  # the minimal filter itself
            continue
        minimal = float(beside.split(",")[0])
        out[variant].append((minimal, own / minimal))
    return out


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "results.md")
    for variant, pairs in rounds(path.read_text()).items():
        if len(pairs) < 6:
            continue
        speed = [m for m, _ in pairs]
        ratio = [r for _, r in pairs]
        middle = statistics.median(speed)
        fast = statistics.median([r for m, r in pairs if m <= middle])
        slow = statistics.median([r for m, r in pairs if m > middle])
        print(
            f"{variant}: {len(pairs)} rounds, the minimal filter at {min(speed):.0f}-{max(speed):.0f} us/request; "
            f"correlation {statistics.correlation(speed, ratio):+.2f}; "
            f"median ratio {fast:.3f} in the faster half, {slow:.3f} in the slower"
        )


if __name__ == "__main__":
    main()
