"""The step the lots service takes for every decision (`transition`): whether it is
recorded, which conditions the lot carries, and whether QA's release still stands."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.lots.domain import (
    NO_QA,
    DecisionInputs,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    Unmet,
    transition,
)
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
