"""Plain-text tables for what the tests, the soak and the bench print."""

from __future__ import annotations


def print_table(title: str, header: list, rows: list) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(f"\n{title}")
    print(line.format(*header))
    print(line.format(*["-" * w for w in widths]))
    for r in rows:
        print(line.format(*[str(x) for x in r]))
