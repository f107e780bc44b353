"""Decision replay: every decision the live functions take is recomputed from its stored
inputs with the same pure rule, and agrees; a record that was tampered with does not.

`LiveLot` takes decisions with the step the lots service's decision path takes
(`transition`: the rule, the transition policy, the conditions kept from the previous
decision when the policy overrides the rule, a record only when the status or the
conditions change) and stores the inputs with `decision_record.inputs_to_json`, and keeps
the lot's results as lot_results does (the latest state of each). Replay reads the records
back the way ExplainDecision and ListDecisions do, with those results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots import convert, queries
from services.lots.decision_record import inputs_from_json, inputs_to_json, unmet_to_json
from services.lots.domain import (
    DecisionInputs,
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    TestKind,
    Unmet,
    Verdict,
    replay,
    replay_difference,
    transition,
)
from services.lots.records import DecisionRecord
from tests.unit.test_release_rule import (
    CONFIRMED,
    INVALIDATED,
    LOT,
    NOW,
    QUALIFIED,
    numbered,
    result,
)

SUSPENDED = QualificationFacts("SUSPENDED", NOW + timedelta(days=30), 4)
IDT, PUR, STE = TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY


def explain(record: SimpleNamespace, previous: SimpleNamespace | None,
            results: dict[str, ResultFacts]) -> pb.ExplainedDecision:
    """A stored record explained as ExplainDecision answers it (queries.explain with the
    lot's results, then the API's conversion)."""
    e = queries.explain(_record(record), _record(previous) if previous else None, results)
    return convert.explained_to_proto(e.record, e.stored, e.replayed, e.problems)


def _record(row: SimpleNamespace) -> DecisionRecord:
    """A record as stored (the repository reads a row of `decisions` so)."""
    return DecisionRecord(row.lot_id, row.version,
                          LotStatus(row.previous_status) if row.previous_status else None,
                          LotStatus(row.status), tuple(Unmet(*u) for u in json.loads(row.unmet)),
                          row.inputs, row.cause, row.decided_at)


class LiveLot:
    """One lot decided as the live path decides it; its decision records as stored."""

    def __init__(self, lot: LotFacts = LOT) -> None:
        self.lot = lot
        self.records: list[SimpleNamespace] = []
        self.status: LotStatus | None = None
        self.unmet: tuple[Unmet, ...] = ()
        self.qa = QaFacts()
        # The lot's results as lot_results holds them: each as last announced.
        self.results: dict[str, ResultFacts] = {}

    def decide(self, qualification: QualificationFacts | None,
               results: Iterable[ResultFacts], now: datetime = NOW,
               cause: str = "test", qa: QaFacts | None = None,
               force: bool = False) -> SimpleNamespace | None:
        """`qa`: the policy and QA's facts (None: the lot's own, `self.qa`); `force`: a QA
        action, recorded even when nothing changes. QA's release is dropped as the live
        path drops it (`keeps_qa_release`)."""
        results = tuple(results)
        self.results.update((r.result_id, r) for r in results)
        qa = self.qa if qa is None else qa
        first = not self.records
        current = None if first else self.status
        inputs = DecisionInputs(self.lot, qualification, results, now, qa)
        step = transition(inputs, current, self.unmet, force=force)
        if not step.recorded:
            return None  # nothing changed: nothing recorded
        record = SimpleNamespace(
            lot_id=self.lot.lot_id, version=len(self.records) + 1,
            previous_status=current.value if current else None, status=step.status.value,
            unmet=unmet_to_json(step.unmet), inputs=inputs_to_json(inputs, step.rule),
            cause=cause, decided_at=now, given=(inputs, step.rule))
        self.records.append(record)
        self.status, self.unmet = step.status, step.unmet
        self.qa = replace(qa, released=step.qa_released)
        return record

    def explained(self) -> list[pb.ExplainedDecision]:
        return [explain(r, self.records[i - 1] if i else None, self.results)
                for i, r in enumerate(self.records)]

    def statuses(self) -> list[str]:
        return [r.status for r in self.records]


def _arrive_one_by_one(live: LiveLot, qualification: QualificationFacts | None,
                       results: list[ResultFacts], now: datetime = NOW) -> None:
    live.decide(qualification, [], now)
    for n in range(1, len(results) + 1):
        live.decide(qualification, results[:n], now)


def released_then_supplier_lapse_then_invalidation() -> LiveLot:
    live = LiveLot()
    passing = [result(IDT, sequence=1), result(PUR, sequence=2), result(STE, sequence=3)]
    _arrive_one_by_one(live, QUALIFIED, passing)
    # Suspended after release: the lot stays RELEASED (QA reviews it), with its
    # previous, empty, conditions; nothing changes, so nothing is recorded ...
    assert live.decide(SUSPENDED, passing) is None
    # ... until something about the lot itself pulls it back.
    invalidated = replace(passing[1], state=INVALIDATED, state_reason="wrong dilution")
    live.decide(SUSPENDED, [passing[0], invalidated, passing[2]])
    assert live.statuses() == ["QUARANTINE"] * 3 + ["RELEASED", "QUARANTINE"]
    assert [u.code for u in live.explained()[-1].decision.unmet] == [
        "SUPPLIER_SUSPENDED", "PURITY_RETEST_REQUIRED"]
    return live


def oos_then_confirmation_then_more() -> LiveLot:
    live = LiveLot()
    failure = result(STE, Verdict.FAIL, 3)
    _arrive_one_by_one(live, QUALIFIED, [result(IDT, sequence=1), result(PUR, sequence=2), failure])
    confirmed = replace(failure, state=CONFIRMED, state_reason="no laboratory error")
    live.decide(QUALIFIED, [result(IDT, sequence=1), result(PUR, sequence=2), confirmed])
    # A passing retest of sterility cannot overrule the confirmed failure ...
    assert live.decide(QUALIFIED, [result(IDT, sequence=1), result(PUR, sequence=2), confirmed,
                                   result(STE, sequence=4)]) is None
    # ... while an invalidation of another result adds its condition to the rejection.
    live.decide(QUALIFIED, [result(IDT, sequence=1), result(PUR, sequence=2, state=INVALIDATED),
                            confirmed])
    assert live.statuses()[-3:] == ["ON_HOLD", "REJECTED", "REJECTED"]
    return live


def oos_invalidated_and_retested() -> LiveLot:
    live = LiveLot()
    failure = result(PUR, Verdict.FAIL, 2)
    _arrive_one_by_one(live, QUALIFIED, [result(IDT, sequence=1), failure, result(STE, sequence=3)])
    invalidated = replace(failure, state=INVALIDATED, state_reason="sample diluted twice")
    retest = result(PUR, sequence=4, retest_of=failure.result_id)
    live.decide(QUALIFIED, [result(IDT, sequence=1), invalidated, result(STE, sequence=3)])
    live.decide(QUALIFIED, [result(IDT, sequence=1), invalidated, result(STE, sequence=3), retest])
    assert live.statuses()[-3:] == ["ON_HOLD", "QUARANTINE", "RELEASED"]
    return live


def a_gap_in_the_numbering() -> LiveLot:
    live = LiveLot()
    results = numbered((IDT, 1), (PUR, 2), (PUR, 3), (STE, 4))
    live.decide(QUALIFIED, [results[0], results[2], results[3]])  # number 2 on its way
    live.decide(QUALIFIED, results)
    assert live.statuses() == ["QUARANTINE", "RELEASED"]
    return live


def expiry_of_the_lot_and_of_the_qualification() -> LiveLot:
    live = LiveLot()
    passing = [result(IDT, sequence=1), result(PUR, sequence=2), result(STE, sequence=3)]
    lapsing = QualificationFacts("QUALIFIED", NOW + timedelta(hours=1), 5)
    live.decide(lapsing, passing)
    live.decide(lapsing, passing, NOW + timedelta(hours=2))  # released, then a lapse: sticky
    after_expiry = datetime.combine(LOT.expiry_date + timedelta(days=1), NOW.time(), NOW.tzinfo)
    live.decide(lapsing, passing, after_expiry)
    assert live.statuses() == ["RELEASED", "EXPIRED"]
    assert [u.code for u in live.explained()[-1].decision.unmet] == [
        "QUALIFICATION_EXPIRED", "LOT_EXPIRED"]
    return live


def supplier_standing_changes_before_release() -> LiveLot:
    live = LiveLot()
    passing = [result(IDT, sequence=1), result(PUR, sequence=2), result(STE, sequence=3)]
    for qualification in (None, QualificationFacts("", None, 0),
                          QualificationFacts("PENDING", None, 1), SUSPENDED,
                          QualificationFacts("DISQUALIFIED", None, 5),
                          QualificationFacts("EXPIRED", NOW - timedelta(days=1), 6), QUALIFIED):
        live.decide(qualification, passing)
    assert live.statuses()[-1] == "RELEASED"
    return live


def a_specification_that_requires_an_assay() -> LiveLot:
    live = LiveLot()
    spec = (IDT, PUR, STE, TestKind.ASSAY)
    results = [result(IDT, sequence=1, required=spec), result(PUR, sequence=2, required=spec),
               result(STE, sequence=3, required=spec)]
    live.decide(QUALIFIED, results)
    live.decide(QUALIFIED, [*results, result(TestKind.ASSAY, sequence=4, required=spec)])
    assert live.statuses() == ["QUARANTINE", "RELEASED"]
    return live


PASSING = [result(IDT, sequence=1), result(PUR, sequence=2), result(STE, sequence=3)]
QA_RELEASE = QaFacts(ReleasePolicy.QA_RELEASE)


def qa_release_policy_then_release_then_retest_date() -> LiveLot:
    live = LiveLot(replace(LOT, retest_date=NOW.date() + timedelta(days=10)))
    live.qa = QA_RELEASE
    _arrive_one_by_one(live, QUALIFIED, PASSING)
    assert live.statuses()[-1] == "RELEASABLE"
    live.decide(QUALIFIED, PASSING, cause="QA release", qa=replace(live.qa, released=True),
                force=True)
    # The retest date comes: back to QUARANTINE, and QA's release no longer stands ...
    live.decide(QUALIFIED, PASSING, NOW + timedelta(days=10), cause="retest date reached")
    assert not live.qa.released
    # ... so after a new retest date the lot waits for QA again.
    live.lot = replace(live.lot, retest_date=NOW.date() + timedelta(days=100))
    live.decide(QUALIFIED, PASSING, NOW + timedelta(days=11), force=True)
    assert live.statuses()[-4:] == ["RELEASABLE", "RELEASED", "QUARANTINE", "RELEASABLE"]
    assert [u.code for u in live.explained()[-2].decision.unmet] == ["RETEST_DATE_REACHED"]
    return live


def qa_hold_release_of_the_hold_and_rejection() -> LiveLot:
    live = LiveLot()
    _arrive_one_by_one(live, QUALIFIED, PASSING)
    live.decide(QUALIFIED, PASSING, qa=replace(live.qa, hold_reason="label mix-up"),
                force=True)
    live.decide(QUALIFIED, PASSING, qa=replace(live.qa, hold_reason=""), force=True)
    live.decide(QUALIFIED, PASSING, qa=replace(live.qa, rejection_reason="container damaged"),
                force=True)
    # A policy or a result after the rejection does not move it: REJECTED is final.
    live.decide(QUALIFIED, PASSING[:2], qa=replace(live.qa, policy=ReleasePolicy.QA_RELEASE))
    assert live.statuses()[-4:] == ["ON_HOLD", "RELEASED", "REJECTED", "REJECTED"]
    assert [u.code for u in live.explained()[-4].decision.unmet] == ["QA_HOLD"]
    return live


def a_released_lot_stays_released_when_its_material_goes_to_qa_release() -> LiveLot:
    live = LiveLot()
    _arrive_one_by_one(live, QUALIFIED, PASSING)
    assert live.decide(QUALIFIED, PASSING, qa=QA_RELEASE) is None
    live.decide(SUSPENDED, PASSING, NOW + timedelta(days=400), qa=QA_RELEASE)
    assert live.statuses()[-2:] == ["RELEASED", "EXPIRED"]
    return live


SCENARIOS: list[Callable[[], LiveLot]] = [
    qa_release_policy_then_release_then_retest_date, qa_hold_release_of_the_hold_and_rejection,
    a_released_lot_stays_released_when_its_material_goes_to_qa_release,
    released_then_supplier_lapse_then_invalidation, oos_then_confirmation_then_more,
    oos_invalidated_and_retested, a_gap_in_the_numbering,
    expiry_of_the_lot_and_of_the_qualification, supplier_standing_changes_before_release,
    a_specification_that_requires_an_assay,
]


@pytest.mark.req("DEC-002")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_every_decision_of_the_live_functions_replays_and_agrees(
        scenario: Callable[[], LiveLot]) -> None:
    live = scenario()

    explained = live.explained()

    assert [e.decision.version for e in explained] == list(range(1, len(live.records) + 1))
    for e in explained:
        assert e.replay.agrees, (e.decision.version, e.replay.difference)
        assert e.replay.difference == ""
        assert e.replay.status == e.decision.status
        assert list(e.replay.unmet) == list(e.decision.unmet)


@pytest.mark.req("DEC-002", "REL-010")
def test_a_released_lot_kept_released_for_a_supplier_lapse_replays_with_its_old_conditions(
        ) -> None:
    passing = (result(IDT, sequence=1), result(PUR, sequence=2), result(STE, sequence=3))
    inputs = DecisionInputs(LOT, SUSPENDED, passing, NOW)

    replayed = replay(inputs, LotStatus.RELEASED, ())

    assert (replayed.status, replayed.unmet) == (LotStatus.RELEASED, ())
    assert replayed.rule_status is LotStatus.QUARANTINE
    assert replay_difference(replayed, status=LotStatus.RELEASED, unmet=(),
                             rule_status=LotStatus.QUARANTINE) == ""
    # A lot taken the first time is what the rule says.
    first = replay(inputs, None, ())
    assert first.status is LotStatus.QUARANTINE
    assert [u.code for u in first.unmet] == ["SUPPLIER_SUSPENDED"]


@pytest.mark.req("DEC-002")
def test_a_rejected_lot_replays_with_the_conditions_it_was_rejected_for() -> None:
    previous = (Unmet("PURITY_FAILED", "purity result R fails", "rule"),)
    inputs = DecisionInputs(LOT, QUALIFIED, (result(IDT), ), NOW)

    replayed = replay(inputs, LotStatus.REJECTED, previous)

    assert (replayed.status, replayed.unmet) == (LotStatus.REJECTED, previous)
    assert replayed.rule_status is LotStatus.QUARANTINE


@pytest.mark.req("DEC-001")
def test_the_stored_inputs_hold_every_fact_the_rule_reads() -> None:
    live = released_then_supplier_lapse_then_invalidation()
    record = live.records[-1]

    stored = inputs_from_json(record.lot_id, record.inputs, live.results)

    assert stored.inputs.lot == LOT
    assert stored.inputs.qualification == SUSPENDED
    assert stored.inputs.now == NOW
    invalidated = [r for r in stored.inputs.results if r.state is INVALIDATED]
    assert [(r.result_id, r.state_reason) for r in invalidated] == [
        ("R-PURITY-2", "wrong dilution")]
    assert stored.rule_status is LotStatus.QUARANTINE
    assert stored.required_tests == (IDT, PUR, STE)
    assert set(stored.counted) == {"R-IDENTITY-1", "R-STERILITY-3"}
    shown = live.explained()[-1].decision.inputs
    assert (shown.expiry_date, shown.supplier_id, shown.supplier_site_id,
            shown.material_code) == ("2027-06-30", "SUP-1", "SITE-1", "MAT-1")
    assert shown.qualification.status == "SUSPENDED" and shown.qualification.version == 4
    assert [(r.result_id, r.verdict, r.state, r.spec_version) for r in shown.results] == [
        ("R-IDENTITY-1", "PASS", "VALID", 2), ("R-PURITY-2", "PASS", "INVALIDATED", 2),
        ("R-STERILITY-3", "PASS", "VALID", 2)]
    assert shown.rule_status == pb.LOT_STATUS_QUARANTINE


def _flip_sterility(results: dict[str, ResultFacts]) -> dict[str, ResultFacts]:
    """The lot's results with its sterility result's verdict changed (as if its row in
    lot_results were)."""
    return {result_id: replace(r, verdict=Verdict.FAIL) if r.test is STE else r
            for result_id, r in results.items()}


@pytest.mark.req("DEC-002")
def test_a_flipped_verdict_makes_the_replay_disagree_and_says_what_differs() -> None:
    live = oos_invalidated_and_retested()
    released = live.records[-1]

    explained = explain(released, live.records[-2], _flip_sterility(live.results))

    assert not explained.replay.agrees
    assert explained.replay.status == pb.LOT_STATUS_ON_HOLD
    difference = explained.replay.difference
    assert "status: stored RELEASED, replayed ON_HOLD" in difference
    assert "rule_status: stored RELEASED, replayed ON_HOLD" in difference
    assert "unmet codes: stored [], replayed ['STERILITY_OUT_OF_SPECIFICATION']" in difference


@pytest.mark.req("DEC-002")
def test_a_changed_stored_status_makes_the_replay_disagree() -> None:
    live = oos_then_confirmation_then_more()
    rejected = live.records[-2]
    changed = SimpleNamespace(**{**vars(rejected), "status": "RELEASED"})

    explained = explain(changed, live.records[-3], live.results)

    assert not explained.replay.agrees
    assert "status: stored RELEASED, replayed REJECTED" in explained.replay.difference
    # The next decision does not follow from it either.
    follower = explain(live.records[-1], changed, live.results).replay
    assert not follower.agrees
    assert follower.difference == (f"previous_status: stored REJECTED, decision "
                                   f"{rejected.version} says RELEASED")


@pytest.mark.req("DEC-002")
@pytest.mark.parametrize("what,change,says", [
    ("a condition's message", lambda r: setattr(
        r, "unmet", unmet_to_json([Unmet("IDENTITY_MISSING", "all fine", "21 CFR 211.84(d)(1); "
                                         "ICH Q7 7.30")])),
     "unmet IDENTITY_MISSING: stored [IDENTITY_MISSING: all fine"),
    ("the rule status", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"rs":"QUARANTINE"', '"rs":"RELEASED"')),
     "rule_status: stored RELEASED, replayed QUARANTINE"),
    ("the counted results", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"c":[0,1]', '"c":[0]')),
     "counted results: stored ['R-PURITY-2'], replayed ['R-PURITY-2', 'R-STERILITY-3']"),
    ("a lot fact", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"exp":"2027-06-30"', '"exp":"2026-01-01"')),
     "unmet codes: stored ['IDENTITY_MISSING'], replayed ['IDENTITY_MISSING', 'LOT_EXPIRED']"),
    ("a missing input", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"site":"SITE-1",', '')),
     "inputs cannot be replayed: supplier_site_id is not stored"),
    ("a result it names", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"R-PURITY-2"', '"R-PURITY-9"')),
     "inputs cannot be replayed: result R-PURITY-9 is not stored"),
    ("a result's state then", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"R-PURITY-2"', '["R-PURITY-2","INVALIDATED",""]')),
     "unmet codes: stored ['IDENTITY_MISSING'], replayed ['IDENTITY_MISSING', "
     "'PURITY_RETEST_REQUIRED']"),
    ("a result's entry", lambda r: setattr(r, "inputs", r.inputs.replace(
        '"R-PURITY-2"', '["R-PURITY-2"]')),
     "inputs cannot be replayed: malformed inputs: result ['R-PURITY-2']"),
])
def test_a_tampered_record_makes_the_replay_disagree_and_names_what(
        what: str, change: Callable[[SimpleNamespace], None], says: str) -> None:
    live = LiveLot()
    live.decide(QUALIFIED, [result(PUR, sequence=2), result(STE, sequence=3)])
    record = SimpleNamespace(**vars(live.records[0]))
    assert explain(record, None, live.results).replay.agrees

    change(record)
    explained = explain(record, None, live.results)

    assert not explained.replay.agrees, what
    assert says in explained.replay.difference, explained.replay.difference


@pytest.mark.req("DEC-002")
def test_a_decision_whose_predecessor_is_missing_does_not_agree() -> None:
    live = a_gap_in_the_numbering()

    explained = explain(live.records[1], None, live.results)

    assert not explained.replay.agrees
    assert explained.replay.difference == "decision 1 is missing"
