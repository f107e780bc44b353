"""Summarize a mutmut run: the score per mutated module and every surviving mutant.

`make mutation` runs it after each `mutmut run` (see tests/mutation/run.py). It reads
mutmut's own records (<dir>/**/*.py.meta). The score is killed / (killed + survived):
mutants no test reaches are listed apart (they are a gap in the tests, not a surviving
change), and timeouts count as killed (the mutant broke the code badly enough to hang it).

    python -m tests.mutation.report [--dir mutants-domain] [--diff] [--fail-under PERCENT]

`--diff` prints each surviving mutant's diff (`mutmut show`); `--fail-under` exits 1 when
the overall score is lower.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def records(mutants: Path) -> dict[str, dict[str, str]]:
    """Per mutated module (dotted), each mutant's status."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        found[module] = {key: status_by_exit_code[code] for key, code in codes.items()}
    return found


def score(statuses: Counter[str]) -> float:
    killed = statuses["killed"] + statuses["timeout"]
    judged = killed + statuses["survived"]
    return 100.0 * killed / judged if judged else 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("mutants"))
    parser.add_argument("--diff", action="store_true", help="print each survivor's diff")
    parser.add_argument("--fail-under", type=float, default=0.0)
    args = parser.parse_args()
    found = {module: statuses for module, statuses in records(args.dir).items()
             if any(s != "not checked" for s in statuses.values())}
    if not found:
        print(f"no mutmut results under {args.dir}/: run `make mutation` first",
              file=sys.stderr)
        return 2
    total: Counter[str] = Counter()
    survivors: list[str] = []
    print(f"{'module':40} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} "
          f"{'other':>6} {'score':>7}")
    for module, statuses in found.items():
        counts = Counter(statuses.values())
        total.update(counts)
        killed = counts["killed"] + counts["timeout"]
        other = len(statuses) - killed - counts["survived"] - counts["no tests"]
        print(f"{module:40} {len(statuses):8} {killed:7} {counts['survived']:9} "
              f"{counts['no tests']:9} {other:6} {score(counts):6.1f}%")
        survivors += sorted(k for k, s in statuses.items() if s == "survived")
    killed = total["killed"] + total["timeout"]
    other = sum(total.values()) - killed - total["survived"] - total["no tests"]
    print(f"{'all':40} {sum(total.values()):8} {killed:7} {total['survived']:9} "
          f"{total['no tests']:9} {other:6} {score(total):6.1f}%")
    print(f"\nsurviving mutants ({len(survivors)}):")
    for name in survivors:
        print(f"  {name}")
        if args.diff:
            shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name],
                                   capture_output=True, text=True, check=False,
                                   cwd=args.dir.parent)
            print("    " + shown.stdout.strip().replace("\n", "\n    "))
    return 1 if score(total) < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
