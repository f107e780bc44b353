"""Run mutmut over one or more parts of Lotgate and print each part's score and survivors.

    python -m tests.mutation.run domain delivery      # make mutation
    python -m tests.mutation.run domain --only 'services.lots.domain.rule.x_decide*'  # a subset

Each part has its own configuration (tests/mutation/<part>.cfg): the pure rules are
mutated against the unit tests, the outbox and inbox against the integration tests of
delivery. mutmut reads its configuration from setup.cfg, so each part's is put there for
its run and removed after; its results are kept in mutants-<part>/ (git-ignored), and
`python -m tests.mutation.report --dir mutants-<part>` prints them again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
# Fewer drawn cases per mutant: the property tests run once for every mutant they reach.
QUICK = {"LOTGATE_ORACLE_CASES_PER_CHUNK": "150", "LOTGATE_ARRIVAL_DRAWN": "200"}


def run(part: str, only: list[str], children: int, fail_under: float) -> int:
    config = Path("setup.cfg")
    if config.exists():
        print("setup.cfg exists; mutmut would read it instead of the part's configuration",
              file=sys.stderr)
        return 2
    shutil.rmtree("mutants", ignore_errors=True)
    shutil.copy(HERE / f"{part}.cfg", config)
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children),
                        *only], env={**os.environ, **QUICK}, check=False,
                       stdout=subprocess.DEVNULL)
    finally:
        config.unlink()
    kept = Path(f"mutants-{part}")
    shutil.rmtree(kept, ignore_errors=True)
    Path("mutants").rename(kept)
    print(f"\n== {part}: mutmut ran {time.monotonic() - started:.0f} s")
    return subprocess.run([sys.executable, "-m", "tests.mutation.report", "--dir", str(kept),
                           "--fail-under", str(fail_under)], check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["domain", "delivery"])
    parser.add_argument("--only", action="append", default=[],
                        help="mutant names (globs) to run, e.g. 'services.lots.domain*'")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--fail-under", type=float, default=0.0,
                        help="exit 1 when a part's score is below this percentage")
    args = parser.parse_args()
    return max(run(part, args.only, args.children, args.fail_under) for part in args.parts)


if __name__ == "__main__":
    sys.exit(main())
