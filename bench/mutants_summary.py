"""Summarise a cargo-mutants run as Markdown: per file, caught, missed, timeouts
and unviable mutants, and each missed one with the reason it is left, read from
mutants/explained.txt (`<mutant as cargo-mutants names it>\t<reason>`).

Usage: mutants_summary.py <cargo-mutants output dir>/mutants.out [more dirs...], oldest
first: a later run's outcome of a mutant replaces an earlier one's.
"""

import sys
from collections import defaultdict
from pathlib import Path

OUTCOMES = ("caught", "missed", "timeout", "unviable")
EXPLAINED = Path(__file__).resolve().parents[1] / "mutants" / "explained.txt"
GOAL_FOLDERS = ("src/pure/registry/", "src/pure/routing/", "src/pure/sharing/", "src/pure/polling/", "src/engine/")


def identity(mutant: str) -> str:
    """A mutant without its line and column, which move as the code around it
    changes. Mutants that read the same (one operator twice in a function) share it."""
    file = mutant.split(":", 1)[0]
    return f"{file}: {mutant.split(': ', 1)[-1]}"


def read_outcomes(dirs: list[Path]) -> dict[str, list[str]]:
    """Each mutant's outcome in the latest run that tested it: a later run's
    outcomes of an identity replace all of an earlier run's."""
    latest: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    for run, directory in enumerate(dirs):
        for outcome in OUTCOMES:
            path = directory / f"{outcome}.txt"
            lines = path.read_text().splitlines() if path.exists() else []
            for line in filter(str.strip, lines):
                key = identity(line)
                if key not in latest or latest[key][0] != run:
                    latest[key] = (run, [])
                latest[key][1].append((outcome, line))
    found = {outcome: [] for outcome in OUTCOMES}
    for _, outcomes in latest.values():
        for outcome, line in outcomes:
            found[outcome].append(line)
    return found


def read_explained() -> dict[str, str]:
    if not EXPLAINED.exists():
        return {}
    pairs = (line.split("\t", 1) for line in EXPLAINED.read_text().splitlines() if "\t" in line)
    return {identity(mutant.strip()): reason.strip() for mutant, reason in pairs}


def per_file(found: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
    for outcome, mutants in found.items():
        for mutant in mutants:
            table[mutant.split(":", 1)[0]][outcome] += 1
    return dict(sorted(table.items()))


def caught_share(counts: dict[str, int]) -> str:
    viable = counts["caught"] + counts["missed"] + counts["timeout"]
    return f"{100 * (counts['caught'] + counts['timeout']) / viable:.1f} %" if viable else "–"


def main() -> None:
    dirs = [Path(arg) for arg in sys.argv[1:]]
    found = read_outcomes(dirs)
    explained = read_explained()
    table = per_file(found)
    total = {outcome: len(found[outcome]) for outcome in OUTCOMES}
    print("# Mutation testing\n")
    print("Written by `make mutants` (cargo-mutants over the unit tests and a seed budget of the")
    print("simulator; a timeout counts as caught, as cargo-mutants does). Runs summed here:")
    print(", ".join(f"`{d.parent.name}`" for d in dirs) + ".")
    tested = sum(len(mutants) for mutants in found.values())
    print(f"{tested} mutants tested; shards (`MUTANTS_SHARD=k/n`) cover part of the list, and")
    print("`make mutants` with no shard tests every mutant of these folders (hours on two cores).\n")
    print("| file | caught | missed | timeouts | unviable | caught of viable |")
    print("|---|---|---|---|---|---|")
    for file, counts in table.items():
        print(f"| `{file}` | {' | '.join(str(counts[o]) for o in OUTCOMES)} | {caught_share(counts)} |")
    print(f"| **all** | {' | '.join(str(total[o]) for o in OUTCOMES)} | {caught_share(total)} |\n")
    goal = dict.fromkeys(OUTCOMES, 0)
    for file, counts in table.items():
        if file.startswith(GOAL_FOLDERS):
            for outcome in OUTCOMES:
                goal[outcome] += counts[outcome]
    print(f"In the goal's folders ({', '.join(GOAL_FOLDERS)}): {caught_share(goal)} of viable mutants caught.\n")
    print("## Missed, and why each is left\n")
    for mutant in found["missed"]:
        print(f"- `{mutant}`: {explained.get(identity(mutant), '**not explained yet**')}")


if __name__ == "__main__":
    main()
