"""Each fault on its own, while a seeded random workload runs; every test ends with the
oracle's judgement: every acknowledged result stored exactly once, every lot's status and
unmet conditions as the acknowledged operations say, no lot released that must not be."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from lotgate.lots.v1 import lots_pb2 as lpb
from tests.faults import scenario
from tests.faults.harness import FaultStack, Plan, Workload
from tests.faults.postgres import PgCluster
from tests.support.waiting import until_lot

pytestmark = pytest.mark.faults


def assert_judged_right(outcome: scenario.Outcome) -> None:
    assert outcome.verdict.ok, outcome.explain()
    indeterminate = [o for o in outcome.recorder.ops if o.outcome == "indeterminate"]
    assert not indeterminate, f"operations never answered: {indeterminate[:5]}"


async def test_without_faults_the_oracle_agrees(pg: PgCluster, stack_dir: Path,
                                                seed: int) -> None:
    """The yardstick: with nothing broken, the system and the oracle agree."""
    outcome = await scenario.run(stack_dir, pg, seed)
    assert_judged_right(outcome)


@pytest.mark.parametrize("service", ["suppliers", "results", "lots"])
async def test_crash_after_commit_before_the_ack(pg: PgCluster, stack_dir: Path, seed: int,
                                                 service: str) -> None:
    """Killed right after a commit: the client (or the broker) never hears of it, retries,
    and gets the one record; the inbox absorbs the redelivery."""
    # Within the commits the workload surely makes (suppliers: 5 per supplier set up).
    count = random.Random(seed).randint(*{"suppliers": (4, 12), "results": (4, 15),
                                          "lots": (6, 18)}[service])
    outcome = await scenario.run(stack_dir, pg, seed,
                                 crash_at={service: f"after_commit_before_ack:{count}"})
    assert outcome.stack.faults[f"crash:{service}"] == 1, outcome.explain()
    assert_judged_right(outcome)


@pytest.mark.parametrize("service", ["suppliers", "results", "lots"])
async def test_crash_after_publish_before_the_outbox_delete(
        pg: PgCluster, stack_dir: Path, seed: int, service: str) -> None:
    """Killed between the broker's ack and the outbox delete: the rows go out again on
    restart, and de-duplication (broker, then inbox) keeps each event counted once."""
    # The suppliers service publishes in few bursts (set-up, then suspensions).
    count = random.Random(seed).randint(1, 2 if service == "suppliers" else 5)
    outcome = await scenario.run(
        stack_dir, pg, seed,
        crash_at={service: f"after_publish_before_outbox_delete:{count}"})
    assert outcome.stack.faults[f"crash:{service}"] == 1, outcome.explain()
    assert_judged_right(outcome)


async def test_crash_inside_a_decision(pg: PgCluster, stack_dir: Path, seed: int) -> None:
    """The lots service dies with a decision made but not committed: nothing of it stays,
    the event is redelivered and decided again."""
    count = random.Random(seed).randint(4, 14)
    outcome = await scenario.run(stack_dir, pg, seed,
                                 crash_at={"lots": f"inside_decision:{count}"})
    assert outcome.stack.faults["crash:lots"] == 1, outcome.explain()
    assert_judged_right(outcome)


@pytest.mark.parametrize("service", ["suppliers", "results", "lots"])
async def test_sigkill_of_a_service_at_random_moments(pg: PgCluster, stack_dir: Path,
                                                      seed: int, service: str) -> None:
    outcome = await scenario.run(
        stack_dir, pg, seed,
        nemesis=scenario.repeatedly(scenario.kill_service(service), 2, gap_s=(0.5, 2.5)))
    assert outcome.stack.faults[f"sigkill:{service}"] == 2
    assert_judged_right(outcome)


async def test_nats_server_killed_repeatedly(pg: PgCluster, stack_dir: Path,
                                             seed: int) -> None:
    outcome = await scenario.run(stack_dir, pg, seed,
                                 nemesis=scenario.repeatedly(scenario.kill_nats, 3))
    assert outcome.stack.faults["sigkill:nats"] == 3
    assert_judged_right(outcome)


async def test_nats_server_stopped_and_continued_repeatedly(pg: PgCluster, stack_dir: Path,
                                                            seed: int) -> None:
    outcome = await scenario.run(stack_dir, pg, seed,
                                 nemesis=scenario.repeatedly(scenario.pause_nats, 3))
    assert outcome.stack.faults["sigstop:nats"] == 3
    assert_judged_right(outcome)


async def test_postgres_stopped_immediately_and_back(pg: PgCluster, stack_dir: Path,
                                                     seed: int) -> None:
    outcome = await scenario.run(stack_dir, pg, seed,
                                 nemesis=scenario.repeatedly(scenario.crash_postgres, 2))
    assert outcome.stack.faults["immediate-stop:postgres"] == 2
    assert_judged_right(outcome)


async def test_every_event_delivered_again_after_the_dedup_window(
        pg: PgCluster, stack_dir: Path, seed: int) -> None:
    outcome = await scenario.run(stack_dir, pg, seed, after=scenario.republish_after_window)
    assert outcome.stack.faults["duplicate-after-window"] > 0
    assert_judged_right(outcome)


async def test_poison_messages_are_parked_and_the_rest_flows(pg: PgCluster, stack_dir: Path,
                                                             seed: int) -> None:
    outcome = await scenario.run(stack_dir, pg, seed, nemesis=scenario.poison)
    assert outcome.stack.faults["poison"] == 6
    assert_judged_right(outcome)


async def test_results_for_lots_nobody_received(pg: PgCluster, stack_dir: Path,
                                                seed: int) -> None:
    outcome = await scenario.run(stack_dir, pg, seed, nemesis=scenario.unknown_lots)
    assert outcome.stack.faults["event-for-unknown-lot"] > 0
    assert_judged_right(outcome)


async def test_supplier_suspended_while_the_last_passing_results_arrive(
        pg: PgCluster, stack_dir: Path, seed: int) -> None:
    """Every lot of one supplier waits for its last passing result; the results and the
    supplier's suspension are sent at once. A lot may end RELEASED only if it was
    released before the suspension counted, and then it is on the review list (as are
    the lots released well before it)."""
    plan = Plan(lots=0, suppliers=1, suspend_p=0.0)

    async def race(stack: FaultStack, workload: Workload, rng: random.Random) -> None:
        supplier = workload.suppliers[0]
        lots = [f"LOT-{workload.tag}-race-{i}" for i in range(8)]
        released = [f"LOT-{workload.tag}-released-{i}" for i in range(3)]
        for lot in lots + released:
            await workload.rec.call("receive", {"lot": lot, "supplier": supplier},
                                    lambda lot=lot: workload.lg.lots.ReceiveLot(
                                        _receipt(lot, workload.material, supplier), timeout=5))
            for test in ("IDENTITY", "PURITY") + (("STERILITY",) if lot in released else ()):
                await workload.post(lot, test, True, f"{lot}-{test}-1", rng)
        for lot in lots:  # wait until only sterility is missing
            await _until_codes(workload, lot, {"STERILITY_MISSING"})
        for lot in released:
            await until_lot(workload.lg.lots, lot, lpb.LOT_STATUS_RELEASED, [])
        await asyncio.gather(
            workload.suspend(supplier),
            *(workload.post(lot, "STERILITY", True, f"{lot}-STERILITY-1", rng)
              for lot in lots))
        stack.faults["suspension-race"] += 1

    outcome = await scenario.run(stack_dir, pg, seed, plan=plan, after=race)
    assert_judged_right(outcome)


def _receipt(lot: str, material: str, supplier: str) -> lpb.ReceiveLotRequest:
    from datetime import date

    from lotgate_tools.client import DEFAULT_SITE
    return lpb.ReceiveLotRequest(
        lot_id=lot, material_code=material, supplier_id=supplier,
        supplier_site_id=DEFAULT_SITE, supplier_lot_number=f"S-{lot}",
        quantity=lpb.Quantity(value=25.0, unit="kg"), container_count=2,
        expiry_date=date(date.today().year + 3, 12, 31).isoformat(), requested_by="wms")


async def _until_codes(workload: Workload, lot: str, codes: set[str]) -> None:
    await until_lot(workload.lg.lots, lot, lpb.LOT_STATUS_QUARANTINE, sorted(codes))


async def test_two_lots_replicas_one_killed_repeatedly(pg: PgCluster, stack_dir: Path,
                                                       seed: int) -> None:
    """Two lots processes share the database and the durable consumers; the one the
    clients do not talk to (which may hold the relay's leader lock) is killed three
    times: its unacked events go to the survivor, its relay lock passes over."""
    outcome = await scenario.run(
        stack_dir, pg, seed, lots_replicas=2,
        nemesis=scenario.repeatedly(scenario.kill_service("lots#2"), 3, gap_s=(0.5, 2.0)))
    assert outcome.stack.faults["sigkill:lots#2"] == 3
    assert_judged_right(outcome)
