"""The soak: the randomised workload, round after round, while random faults strike, for
SOAK_SECONDS (120); then one judgement of everything acknowledged, as a table.

    make soak                       # or: SOAK_SECONDS=600 LOTGATE_FAULT_SEED=7 make soak

Exits non-zero when an acknowledged operation was lost, a lot was released wrongly, a
result was stored twice or a lot's status disagrees with the oracle.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from lotgate_tools.stack import SERVICES
from tests.faults import scenario
from tests.faults.harness import FaultStack, Plan, Recorder, Workload, check, connected, summary
from tests.faults.postgres import PgCluster

CRASH_POINTS = {"suppliers": ["after_commit_before_ack", "after_publish_before_outbox_delete"],
                "results": ["after_commit_before_ack", "after_publish_before_outbox_delete"],
                "lots": ["after_commit_before_ack", "after_publish_before_outbox_delete",
                         "inside_decision"]}


async def random_faults(stack: FaultStack, workload: Workload | None, rng: random.Random,
                        until: float) -> None:
    """One random fault after another, with the system left alone for a while between."""
    menu = [scenario.kill_nats, scenario.pause_nats, scenario.crash_postgres,
            *(scenario.kill_service(name) for name in SERVICES)]
    while time.monotonic() < until - 10:
        await asyncio.sleep(rng.uniform(2.0, 6.0))  # quiet time between faults
        fault = rng.choice(menu)
        await fault(stack, rng)


async def soak(seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lotgate-soak-"))
    pg = PgCluster(workdir / "pg")
    await pg.setup()
    # Each service dies once at a crash point chosen at random, on top of the faults.
    crash_at = {name: f"{rng.choice(points)}:{rng.randint(5, 40)}"
                for name, points in CRASH_POINTS.items()}
    stack = FaultStack(workdir / "stack", pg, crash_at=crash_at)
    await stack.start()
    recorder = Recorder()
    try:
        async with connected(stack) as lg:
            until = time.monotonic() + seconds
            nemesis = asyncio.create_task(random_faults(stack, None, rng, until))
            round_ = 0
            while time.monotonic() < until:
                workload = Workload(lg, seed * 1000 + round_, Plan(lots=8), recorder)
                await workload.setup()
                poisoned = rng.random() < 0.3
                await workload.run(extra=(
                    (lambda w=workload: scenario.poison(stack, w, rng)) if poisoned else None))
                round_ += 1
            await nemesis
            verdict = await check(lg, recorder.ops, quiesce_s=180)
    finally:
        await stack.stop()
        await pg.stop()
    print(summary(recorder.ops, stack.faults, verdict, seed, time.monotonic() - started))
    if not verdict.ok:
        print(verdict.describe())
        print(stack.logs_tail())
        return 1
    return 0


def main() -> None:
    seconds = float(os.environ.get("SOAK_SECONDS") or 120)
    seed = int(os.environ.get("LOTGATE_FAULT_SEED") or random.randrange(1, 10**6))
    print(f"soak: {seconds:.0f} s, seed {seed} (replay with LOTGATE_FAULT_SEED={seed})",
          flush=True)
    sys.exit(asyncio.run(soak(seconds, seed)))


if __name__ == "__main__":
    main()
