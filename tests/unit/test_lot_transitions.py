"""The one transition every decision takes, the live path's and the replay's
(`lifecycle.transition`): whether it is recorded, which conditions the lot carries, and
whether QA's release still stands; and `decide_lots`, the pure beat of the decision path
between loading a batch of lots and saving their decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from services.lots.domain import (
    FINAL,
    NO_QA,
    USABLE,
    DecisionInputs,
    Lot,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    Unmet,
    moved_by_time,
    transition,
)
from services.lots.domain.lifecycle import decide_lots
from tests.unit.test_release_rule import ALL_PASS, LOT, NOW, QUALIFIED

RELEASED_BY_QA = QaFacts(ReleasePolicy.QA_RELEASE, released=True)
SUSPENDED = QualificationFacts("SUSPENDED", NOW + timedelta(days=30), 4)


def inputs(qualification=QUALIFIED, results=tuple(ALL_PASS), qa=NO_QA) -> DecisionInputs:
    return DecisionInputs(LOT, qualification, tuple(results), NOW, qa)


def test_a_lots_first_decision_is_recorded_even_when_it_changes_nothing() -> None:
    step = transition(inputs(), None, ())

    assert (step.status, step.unmet, step.recorded) == (LotStatus.RELEASED, (), True)


def test_the_same_decision_again_is_not_recorded_unless_qa_acted() -> None:
    again = transition(inputs(), LotStatus.RELEASED, ())
    forced = transition(inputs(), LotStatus.RELEASED, (), force=True)

    assert not again.recorded
    assert forced.recorded and forced.status is LotStatus.RELEASED


@pytest.mark.parametrize("previous_status,previous_unmet", [
    (LotStatus.QUARANTINE, ()),  # the status changes
    (LotStatus.RELEASED, (Unmet("IDENTITY_MISSING", "no identity result yet", "r"),)),
])
def test_a_change_of_status_or_of_conditions_alone_is_recorded(
        previous_status: LotStatus, previous_unmet: tuple[Unmet, ...]) -> None:
    assert transition(inputs(), previous_status, previous_unmet).recorded


def test_a_lot_kept_released_for_a_supplier_lapse_keeps_its_conditions_and_is_not_recorded(
        ) -> None:
    step = transition(inputs(SUSPENDED), LotStatus.RELEASED, ())

    assert step.rule.status is LotStatus.QUARANTINE
    assert (step.status, step.unmet, step.recorded) == (LotStatus.RELEASED, (), False)


def test_qa_release_stands_while_the_lot_stays_released_and_falls_when_it_leaves() -> None:
    kept = transition(inputs(qa=RELEASED_BY_QA), LotStatus.RELEASED, ())
    left = transition(inputs(results=ALL_PASS[:2], qa=RELEASED_BY_QA), LotStatus.RELEASED,
                         ())
    never = transition(inputs(qa=QaFacts(ReleasePolicy.QA_RELEASE)), None, ())

    assert (kept.status, kept.qa_released) == (LotStatus.RELEASED, True)
    assert (left.status, left.qa_released) == (LotStatus.QUARANTINE, False)
    assert (never.status, never.qa_released) == (LotStatus.RELEASABLE, False)


# -- decide_lots: a batch, as the handlers decide it -----------------------------------

RECEIVED = Lot("LOT-1", "MAT-1", "SUP-1", "SITE-1", "S-1", 10.0, "kg", 2,
               expiry_date=LOT.expiry_date, retest_date=None, received_at=NOW,
               received_by="warehouse", fingerprint="f", status=LotStatus.QUARANTINE,
               status_version=0, unmet=(), decided_at=NOW)
KEY = RECEIVED.key


def test_a_received_lot_whose_results_are_all_in_is_released_at_its_first_decision() -> None:
    [decided] = decide_lots([RECEIVED], {KEY: QUALIFIED}, {"LOT-1": ALL_PASS}, {}, NOW,
                            first=True)

    assert (decided.step.status, decided.version, decided.previous_status) == (
        LotStatus.RELEASED, 1, None)


def test_only_lots_whose_status_or_reasons_change_are_recorded() -> None:
    waiting = replace(RECEIVED, lot_id="LOT-2", status_version=3,
                      unmet=decide_lots([replace(RECEIVED, lot_id="LOT-2")], {KEY: QUALIFIED},
                                        {}, {}, NOW, first=True)[0].step.unmet)
    released = replace(RECEIVED, status=LotStatus.RELEASED, status_version=2)

    decided = decide_lots([released, waiting], {KEY: QUALIFIED},
                          {"LOT-1": ALL_PASS}, {}, NOW)

    assert decided == []  # nothing new for either: nothing recorded, nothing announced
    [held] = decide_lots([waiting], {KEY: QUALIFIED}, {}, {}, NOW, force=True)
    assert (held.version, held.previous_status) == (4, LotStatus.QUARANTINE)


def test_a_qa_release_policy_makes_a_lot_that_meets_every_condition_wait_for_qa() -> None:
    [decided] = decide_lots([RECEIVED], {KEY: QUALIFIED}, {"LOT-1": ALL_PASS},
                            {"MAT-1": ReleasePolicy.QA_RELEASE}, NOW, first=True)

    assert decided.step.status is LotStatus.RELEASABLE
    assert [u.code for u in decided.step.unmet] == ["QA_RELEASE_REQUIRED"]
    assert decided.inputs.qa.policy is ReleasePolicy.QA_RELEASE


def test_a_suspension_after_release_keeps_the_lot_released_without_a_record() -> None:
    released = replace(RECEIVED, status=LotStatus.RELEASED, status_version=1)

    assert decide_lots([released], {KEY: SUSPENDED}, {"LOT-1": ALL_PASS}, {}, NOW) == []


@pytest.mark.parametrize("final", sorted(FINAL))
def test_a_rejected_or_expired_lot_never_moves_again(final: LotStatus) -> None:
    lot = replace(RECEIVED, status=final, status_version=5,
                  unmet=(Unmet("QA_REJECTED", "rejected by QA: x", "rule"),))

    [forced] = decide_lots([lot], {KEY: QUALIFIED}, {"LOT-1": ALL_PASS}, {}, NOW, force=True)

    assert forced.step.status is final
    assert forced.step.unmet == lot.unmet


def test_time_moves_only_usable_lots_on_read() -> None:
    expired_day = NOW.replace(year=2027, month=7, day=1)
    for status in LotStatus:
        moved = moved_by_time(status, date(2027, 6, 30), None, expired_day)
        assert (moved is not None) is (status in USABLE)
    moved = moved_by_time(LotStatus.RELEASED, date(2027, 6, 30), date(2026, 11, 25), NOW)
    assert moved is not None and moved[0] is LotStatus.QUARANTINE
