"""Arrival order over a real nats-server and database: the same events published one at a
time in other orders, some twice, leave the lot where the order they happened leaves it.

Each event is published the way the results and suppliers services' relays publish it,
and the next one only once the lots service's consumer has acknowledged it, and its
consumers everything else (so the arrival order is the publishing order); the lot is
received over gRPC at its place in the order. A copy is published under another message
id, as a relay re-publishes after JetStream's duplicate window, so that it reaches the
consumer and the inbox must absorb it. `LOTGATE_ARRIVAL_ORDERS` sets how many drawn orders
each history is fed in (3 by default, small for CI; `LOTGATE_ARRIVAL_SEED` picks other
orders).

As in the unit test of the same name, a REJECTED lot (final) is compared on its status and
on its conditions other than the supplier's: a qualification change does not decide it
again.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from services.lots.domain import SUPPLIER_CODES
from shared import messaging
from shared.protoconv import to_timestamp
from tests.integration.test_lots import SITE, ResultEvent, System, running_system
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ORDERS = int(os.environ.get("LOTGATE_ARRIVAL_ORDERS", "3"))
SEED = int(os.environ.get("LOTGATE_ARRIVAL_SEED", "17"))
IDT, PUR, STE = rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY, rpb.TEST_KIND_STERILITY
# The lots service's durable consumers, by stream.
CONSUMERS = [(messaging.RESULTS_STREAM.name, "lots-result-recorded"),
             (messaging.RESULTS_STREAM.name, "lots-result-invalidated"),
             (messaging.RESULTS_STREAM.name, "lots-result-confirmed"),
             (messaging.SUPPLIERS_STREAM.name, "lots-qualification-changed")]
QUALIFICATION = {"PENDING": spb.QUALIFICATION_STATUS_PENDING,
                 "QUALIFIED": spb.QUALIFICATION_STATUS_QUALIFIED,
                 "SUSPENDED": spb.QUALIFICATION_STATUS_SUSPENDED}


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


@dataclass
class Lot:
    """One lot's events, for fresh ids: `steps[i]` delivers the i-th thing that happened."""

    system: System
    lot_id: str
    supplier_id: str
    material: str
    # "receive", or the event to publish
    steps: list[str | ResultEvent | supplier_events.QualificationChanged]

    async def receive(self) -> None:
        await self.system.receive(self.supplier_id, self.material, lot_id=self.lot_id)

    def qualification(self, status: str, version: int) -> supplier_events.QualificationChanged:
        now = self.system.now()
        return supplier_events.QualificationChanged(
            event_id=str(uuid.uuid4()), occurred_at=to_timestamp(now),
            qualification=spb.Qualification(
                supplier_id=self.supplier_id, site_id=SITE, material_code=self.material,
                status=QUALIFICATION[status], version=version,
                valid_until=to_timestamp(now + timedelta(days=365)),
                reason=f"{status.lower()} by QA", changed_by="qa.jane",
                changed_at=to_timestamp(now)))


async def _publish(system: System, event: ResultEvent | supplier_events.QualificationChanged,
                   *, copy: bool = False) -> None:
    subject = (messaging.QUALIFICATION_CHANGED
               if isinstance(event, supplier_events.QualificationChanged) else {
                   result_events.ResultRecorded: messaging.RESULT_RECORDED,
                   result_events.ResultInvalidated: messaging.RESULT_INVALIDATED,
                   result_events.ResultConfirmed: messaging.RESULT_CONFIRMED}[type(event)])
    # A copy under another message id passes JetStream's duplicate window: the inbox
    # (keyed by event id) has to absorb it.
    msg_id = f"{event.event_id}/copy" if copy else event.event_id
    ack = await system.js.publish(subject, event.SerializeToString(),
                                  headers={"Nats-Msg-Id": msg_id})
    await _drained(system, subject, ack.seq)


async def _drained(system: System, subject: str, seq: int) -> None:
    """Wait until the lots service has acknowledged the message at stream sequence `seq`
    on `subject` (it acknowledges only after committing, and after the status it decided
    is what reads answer), and every other message of its consumers.

    An empty backlog alone does not say that: the publish is acknowledged before
    nats-server has told the consumers of the new message, so for a moment the consumer
    shows no pending and no unacknowledged message while the event is not even delivered.
    The consumer taking `subject` has to have its acknowledgement floor at `seq`.
    """
    async def progress() -> list[tuple[str, str, int, int, int]]:
        infos = [await system.js.consumer_info(stream, durable) for stream, durable in CONSUMERS]
        return [(i.name, i.config.filter_subject or "", i.ack_floor.stream_seq or 0,
                 i.num_pending or 0, i.num_ack_pending or 0) for i in infos]

    def done(rows: list[tuple[str, str, int, int, int]]) -> bool:
        takers = [floor for _, filtered, floor, _, _ in rows if filtered == subject]
        assert takers, f"no consumer of the lots service takes {subject}: {rows}"
        return (all(floor >= seq for floor in takers)
                and all(p == 0 and a == 0 for _, _, _, p, a in rows))

    await eventually(progress, done, within=30)


def _invalidated_retest_and_suspension(lot: Lot) -> None:
    """Approved, suspended and reinstated; a purity failure invalidated and retested."""
    s, m, lid = lot.system, lot.material, lot.lot_id
    identity = s.result_event(lid, m, IDT)
    failure = s.result_event(lid, m, PUR, rpb.VERDICT_FAIL)
    invalidated = s.invalidation(failure)
    retest = s.result_event(lid, m, PUR, retest_of=failure.result.result_id)
    sterility = s.result_event(lid, m, STE)
    lot.steps = [lot.qualification("PENDING", 1),
                 lot.qualification("QUALIFIED", 2),
                 "receive", identity, failure, invalidated,
                 lot.qualification("SUSPENDED", 3), retest,
                 sterility, lot.qualification("QUALIFIED", 4)]


def _confirmed_failure_before_the_approval(lot: Lot) -> None:
    """A sterility failure QA confirmed; the site approved along the way."""
    s, m, lid = lot.system, lot.material, lot.lot_id
    identity = s.result_event(lid, m, IDT)
    failure = s.result_event(lid, m, STE, rpb.VERDICT_FAIL)
    confirmed = s.confirmation(failure)
    purity = s.result_event(lid, m, PUR)
    lot.steps = [lot.qualification("PENDING", 1),
                 lot.qualification("QUALIFIED", 2),
                 "receive", identity, failure, confirmed,
                 purity]


def _failure_under_investigation(lot: Lot) -> None:
    """A sterility failure QA has not decided on yet; the site approved along the way."""
    s, m, lid = lot.system, lot.material, lot.lot_id
    identity = s.result_event(lid, m, IDT)
    failure = s.result_event(lid, m, STE, rpb.VERDICT_FAIL)
    purity = s.result_event(lid, m, PUR)
    lot.steps = [lot.qualification("PENDING", 1), "receive", identity, failure, purity,
                 lot.qualification("QUALIFIED", 2)]


HISTORIES = {"invalidated retest and suspension": _invalidated_retest_and_suspension,
             "confirmed failure": _confirmed_failure_before_the_approval,
             "failure under investigation": _failure_under_investigation}


Arrangement = Callable[[int], tuple[list[int], list[int]]]


def _as_it_happened(n: int) -> tuple[list[int], list[int]]:
    return list(range(n)), []


async def _fed(system: System, history: str, arrange: Arrangement) -> pb.ReleaseStatus:
    """A fresh lot fed its history's events in the order `arrange` gives for the number of
    steps, the events at its second list published once more right after themselves."""
    lot = Lot(system, ref("LOT"), ref("SUP"), ref("MAT"), [])
    HISTORIES[history](lot)
    order, copies = arrange(len(lot.steps))
    for i in order:
        step = lot.steps[i]
        if step == "receive":
            await lot.receive()
            continue
        assert not isinstance(step, str)
        await _publish(system, step)
        if i in copies:
            await _publish(system, step, copy=True)
    return await system.status(lot.lot_id)


def _compared(status: pb.ReleaseStatus) -> tuple[int, list[str]]:
    codes = [u.code for u in status.unmet]
    if status.status in (pb.LOT_STATUS_REJECTED, pb.LOT_STATUS_EXPIRED):
        codes = [c for c in codes if c not in SUPPLIER_CODES]
    return status.status, codes


@pytest.mark.parametrize("history,expected", [
    ("invalidated retest and suspension", (pb.LOT_STATUS_RELEASED, [])),
    ("confirmed failure", (pb.LOT_STATUS_REJECTED, ["STERILITY_FAILED"])),
    ("failure under investigation", (pb.LOT_STATUS_ON_HOLD, ["STERILITY_OUT_OF_SPECIFICATION"])),
])
async def test_the_same_events_in_other_orders_and_twice_leave_the_lot_in_the_same_state(
        system: System, history: str, expected: tuple[int, list[str]]) -> None:
    in_order = _compared(await _fed(system, history, _as_it_happened))
    assert in_order == expected

    rng = random.Random(f"{SEED}/{history}")
    for _ in range(ORDERS):
        drawn = Drawn(rng)

        ended = _compared(await _fed(system, history, drawn))

        assert ended == in_order, (f"order {drawn.order} with copies of {drawn.copies} ends "
                                   f"in {ended}, in order: {in_order}")


class Drawn:
    """An arrangement drawn from `rng`, kept to be named when it fails."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.order: list[int] = []
        self.copies: list[int] = []

    def __call__(self, n: int) -> tuple[list[int], list[int]]:
        self.order, self.copies = self.rng.sample(range(n), n), self.rng.sample(range(n), 2)
        return self.order, self.copies
