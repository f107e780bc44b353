"""Arrival order: the lots projection fed the same events one at a time, in every order and
with duplicates, ends in the same state as when they arrive in the order they happened.

`decide` sorts its input, so permuting its argument shows only that a decision depends on
the set of results. Here each event is applied on its own and the lot decided after it
with `transition`, the step the lots service's handler takes, so the transition policy,
the conditions kept between decisions and the lot's receipt in the middle of the stream
all take part. The projection's merge rules are the ones the lots service documents:
a recorded result already known is left as it is, QA's invalidation or confirmation wins
over the recording whichever arrives first and a result leaves VALID once, the highest
qualification version wins, and a qualification change decides the lots in
`DECIDED_ON_QUALIFICATION` again.

One dependence on order is known and kept: a lot that is REJECTED (final) is not decided
again by a qualification change, so the supplier condition it lists is the one known when
it was last decided. Its status and its other conditions do not depend on order; for such
lots only those are compared.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import pytest

from services.lots.domain import (
    DECIDED_ON_QUALIFICATION,
    FINAL,
    SUPPLIER_CODES,
    DecisionInputs,
    LotFacts,
    LotStatus,
    QualificationFacts,
    ResultFacts,
    ResultState,
    TestKind,
    Unmet,
    Verdict,
    transition,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LOT = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=date(2027, 6, 30))
IDT, PUR, STE, ASY = TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY, TestKind.ASSAY
VALID, INVALIDATED, CONFIRMED = ResultState.VALID, ResultState.INVALIDATED, ResultState.CONFIRMED

# Orders of the whole history with its duplicates drawn per history (fewer under mutation
# testing, where this runs once per mutant).
DRAWN = int(os.environ.get("LOTGATE_ARRIVAL_DRAWN", "3000"))

Event = tuple[str, object]
NOTHING_KNOWN = QualificationFacts("", None, 0)  # what the projection holds before any
RECEIVE: Event = ("receive", None)


@dataclass
class Projection:
    """One lot as the lots service holds it, fed one event at a time."""

    received: bool = False
    results: dict[str, ResultFacts] = field(default_factory=dict)
    qualification: QualificationFacts = NOTHING_KNOWN
    status: LotStatus | None = None
    unmet: tuple[Unmet, ...] = ()
    decisions: int = 0

    def apply(self, event: Event) -> None:
        kind, payload = event
        if kind == "receive":
            if not self.received:
                self.received = True
                self._decide()
        elif kind == "recorded":
            assert isinstance(payload, ResultFacts)
            self.results.setdefault(payload.result_id, payload)
            self._decide()
        elif kind == "state":
            assert isinstance(payload, ResultFacts)
            held = self.results.get(payload.result_id)
            if held is None or held.state is VALID:
                self.results[payload.result_id] = payload
            self._decide()
        elif kind == "qualification":
            assert isinstance(payload, QualificationFacts)
            if payload.version > self.qualification.version:
                self.qualification = payload
                if self.status in DECIDED_ON_QUALIFICATION:
                    self._decide()
        else:
            raise AssertionError(kind)

    def _decide(self) -> None:
        if not self.received:
            return  # results for a lot not received yet wait in the projection
        inputs = DecisionInputs(LOT, self.qualification, tuple(self.results.values()), NOW)
        step = transition(inputs, self.status, self.unmet)
        if step.recorded:
            self.status, self.unmet = step.status, step.unmet
            self.decisions += 1

    def state(self) -> tuple[LotStatus | None, tuple[str, ...]]:
        """What is compared: the status and the condition codes (for a final lot, those
        not about the supplier: see the module's docstring)."""
        codes = tuple(u.code for u in self.unmet)
        if self.status in FINAL:
            codes = tuple(c for c in codes if c not in SUPPLIER_CODES)
        return self.status, codes


def fed(events: list[Event]) -> Projection:
    projection = Projection()
    for event in events:
        projection.apply(event)
    return projection


class History:
    """Events of one lot in the order they happened: results numbered 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.count = 0

    def result(self, test: TestKind, verdict: Verdict = Verdict.PASS, *, retest_of: str = "",
               required: tuple[TestKind, ...] = (IDT, PUR, STE)) -> ResultFacts:
        self.count += 1
        recorded = ResultFacts(f"R{self.count}", test, verdict, sequence=self.count,
                               spec_version=1, number=self.count, retest_of=retest_of,
                               required_tests=required)
        self.events.append(("recorded", recorded))
        return recorded

    def qa(self, recorded: ResultFacts, state: ResultState) -> None:
        self.events.append(("state", replace(recorded, state=state, state_reason="by QA")))

    def qualification(self, status: str, version: int, *, days: int = 365) -> None:
        self.events.append(("qualification",
                            QualificationFacts(status, NOW + timedelta(days=days), version)))

    def receive(self) -> None:
        self.events.append(RECEIVE)


def _invalidated_and_retested() -> History:
    h = History()
    h.qualification("PENDING", 1)
    h.qualification("QUALIFIED", 2)
    h.receive()
    h.result(IDT)
    failure = h.result(PUR, Verdict.FAIL)
    h.qa(failure, INVALIDATED)
    h.result(PUR, retest_of=failure.result_id)
    h.result(STE)
    return h


def _confirmed_failure() -> History:
    h = History()
    h.qualification("PENDING", 1)
    h.qualification("QUALIFIED", 2)
    h.receive()
    h.result(IDT)
    failure = h.result(STE, Verdict.FAIL)
    h.qa(failure, CONFIRMED)
    h.result(PUR)
    return h


def _suspended_and_reinstated() -> History:
    h = History()
    h.qualification("PENDING", 1)
    h.qualification("QUALIFIED", 2)
    h.receive()
    h.result(IDT)
    h.result(PUR)
    h.qualification("SUSPENDED", 3)
    h.result(STE)
    h.qualification("QUALIFIED", 4)
    return h


def _assay_required_by_a_new_specification() -> History:
    h = History()
    h.qualification("QUALIFIED", 1)
    h.receive()
    spec = (IDT, PUR, STE, ASY)
    h.result(IDT)
    h.result(PUR, required=spec)
    h.result(STE)
    h.result(ASY, required=spec)
    return h


def _out_of_specification_under_investigation() -> History:
    h = History()
    h.qualification("QUALIFIED", 1)
    h.receive()
    h.result(IDT)
    h.result(PUR)
    h.result(STE, Verdict.FAIL)
    h.result(STE)  # a passing retest does not overrule the failure that still counts
    return h


def _disqualified_before_any_approval() -> History:
    h = History()
    h.qualification("PENDING", 1)
    h.receive()
    h.result(IDT)
    h.result(PUR)
    h.result(STE)
    h.qualification("DISQUALIFIED", 2)
    return h


HISTORIES = {f.__name__.strip("_"): f for f in (
    _invalidated_and_retested, _confirmed_failure, _suspended_and_reinstated,
    _assay_required_by_a_new_specification, _out_of_specification_under_investigation,
    _disqualified_before_any_approval)}


def _with_duplicates(events: list[Event], rng: random.Random) -> list[Event]:
    """`events` with two of them delivered twice (a redelivery, a relay's re-publish)."""
    return events + rng.sample(events, 2)


@pytest.mark.parametrize("name", HISTORIES)
def test_every_arrival_order_with_duplicates_ends_as_the_order_things_happened(
        name: str) -> None:
    events = HISTORIES[name]().events
    in_order = fed(events).state()
    rng = random.Random(name)
    with_copies = _with_duplicates(events, rng)
    # Every order of the events (9! = 362,880 would be too many: every order of the first
    # 7 with the rest placed twice at drawn positions among them), plus DRAWN drawn orders
    # of the whole with the duplicates.
    orders: list[list[Event]] = []
    if len(events) <= 7:
        orders += [list(order) for order in itertools.permutations(events)]
    else:
        head, tail = events[:7], events[7:]
        for order in itertools.permutations(head):
            for _ in range(2):
                mixed = list(order)
                for event in tail:
                    mixed.insert(rng.randrange(len(mixed) + 1), event)
                orders.append(mixed)
    for _ in range(DRAWN):
        orders.append(rng.sample(with_copies, len(with_copies)))

    ends = [(order, fed(order).state()) for order in orders]
    differing = [(order, end) for order, end in ends if end != in_order]

    assert in_order[0] is not None
    assert not differing, (f"{len(differing)} of {len(orders)} orders end elsewhere than "
                           f"{in_order}; first: {differing[0][1]} after "
                           + ", ".join(_named(event) for event in differing[0][0]))


def _named(event: Event) -> str:
    kind, payload = event
    if isinstance(payload, ResultFacts):
        return f"{kind} {payload.result_id} {payload.state.value}"
    if isinstance(payload, QualificationFacts):
        return f"{kind} v{payload.version} {payload.status}"
    return kind


def test_the_histories_end_in_different_states() -> None:
    """The histories are not all alike: they end in statuses a user tells apart."""
    ends = {name: fed(make().events).state() for name, make in HISTORIES.items()}

    assert ends == {
        "invalidated_and_retested": (LotStatus.RELEASED, ()),
        "confirmed_failure": (LotStatus.REJECTED, ("STERILITY_FAILED",)),
        "suspended_and_reinstated": (LotStatus.RELEASED, ()),
        "assay_required_by_a_new_specification": (LotStatus.RELEASED, ()),
        "out_of_specification_under_investigation": (
            LotStatus.ON_HOLD, ("STERILITY_OUT_OF_SPECIFICATION",)),
        "disqualified_before_any_approval": (LotStatus.QUARANTINE, ("SUPPLIER_DISQUALIFIED",)),
    }


def test_a_rejected_lot_keeps_the_supplier_condition_known_when_it_was_last_decided() -> None:
    """The known dependence on order, shown so that a change to it is noticed: the
    confirmation before the approval leaves SUPPLIER_NOT_QUALIFIED on the rejected lot."""
    h = _confirmed_failure()
    qualified = h.events[1]
    late_approval = [e for e in h.events if e is not qualified] + [qualified]

    assert fed(h.events).unmet[0].code == "STERILITY_FAILED"
    assert [u.code for u in fed(late_approval).unmet] == [
        "SUPPLIER_NOT_QUALIFIED", "STERILITY_FAILED"]
