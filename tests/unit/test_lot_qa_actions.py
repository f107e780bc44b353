"""QA's actions on a lot as pure rules (domain/qa_actions.py): what each one changes, when
it is a harmless retry, and when QA is refused and why, without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from services.lots.domain import Lot, LotStatus
from services.lots.domain import qa_actions as qa
from shared.errors import FailedPrecondition, InvalidArgument

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
LOT = Lot("LOT-1", "MAT-1", "SUP-1", "SITE-1", "S-1", 10.0, "kg", 2,
          expiry_date=date(2027, 6, 30), retest_date=None, received_at=NOW,
          received_by="warehouse", fingerprint="f", status=LotStatus.QUARANTINE,
          status_version=1, unmet=(), decided_at=NOW)


def lot(status: LotStatus, **changes: object) -> Lot:
    return replace(LOT, status=status, **changes)


def refused(action, *args, **kwargs) -> str:
    with pytest.raises(FailedPrecondition) as refusal:
        action(*args, **kwargs)
    return refusal.value.message


def test_qa_releases_only_a_releasable_lot() -> None:
    assert qa.release(lot(LotStatus.RELEASABLE)).values() == {"qa_released": True}
    for status in set(LotStatus) - {LotStatus.RELEASABLE}:
        message = refused(qa.release, lot(status))
        assert message == (f"lot LOT-1 is {status.value}: only a RELEASABLE lot can be "
                           "released by QA")


@pytest.mark.parametrize("status", [LotStatus.QUARANTINE, LotStatus.RELEASED,
                                    LotStatus.RELEASABLE, LotStatus.ON_HOLD])
def test_qa_holds_any_lot_that_is_not_final(status: LotStatus) -> None:
    assert qa.hold(lot(status), "deviation DEV-7").values() == {
        "qa_hold_reason": "deviation DEV-7"}


@pytest.mark.parametrize("status", [LotStatus.REJECTED, LotStatus.EXPIRED])
def test_a_rejected_or_expired_lot_cannot_be_held_released_from_hold_or_rejected_again(
        status: LotStatus) -> None:
    final = lot(status, qa_hold_reason="old hold")
    assert "cannot be held" in refused(qa.hold, final, "deviation")
    assert "it is not held by QA" in refused(qa.release_hold, final)
    assert "cannot be rejected" in refused(qa.reject, final, "contaminated")
    assert "has no retest date" in refused(qa.set_retest_date, final, date(2027, 1, 1),
                                           today=TODAY)


def test_the_same_hold_again_is_a_retry_and_another_hold_is_refused() -> None:
    held = lot(LotStatus.ON_HOLD, qa_hold_reason="deviation DEV-7")

    assert qa.hold(held, "deviation DEV-7") is None
    assert refused(qa.hold, held, "another reason") == (
        "lot LOT-1 is ON_HOLD: it is held by QA already (deviation DEV-7); release that "
        "hold first")


def test_only_qas_own_hold_can_be_lifted() -> None:
    held_for_oos = lot(LotStatus.ON_HOLD)  # held by an out-of-specification result
    assert "it is not held by QA" in refused(qa.release_hold, held_for_oos)
    assert qa.release_hold(lot(LotStatus.ON_HOLD, qa_hold_reason="DEV-7")).values() == {
        "qa_hold_reason": ""}


def test_the_same_rejection_again_is_a_retry_and_another_one_is_refused() -> None:
    rejected = lot(LotStatus.REJECTED, qa_rejection_reason="contaminated")

    assert qa.reject(rejected, "contaminated") is None
    assert "cannot be rejected" in refused(qa.reject, rejected, "something else")
    assert qa.reject(lot(LotStatus.RELEASED), "recall").values() == {
        "qa_rejection_reason": "recall"}


def test_a_retest_date_lies_after_today_and_not_after_the_expiry_date() -> None:
    assert qa.set_retest_date(lot(LotStatus.QUARANTINE), date(2027, 1, 1),
                              today=TODAY).values() == {"retest_date": date(2027, 1, 1)}
    for day, says in [(TODAY, "must lie after today (2026-11-25)"),
                      (date(2027, 7, 1), "must not lie after the lot's expiry date (2027-06-30)")]:
        with pytest.raises(InvalidArgument) as bad:
            qa.set_retest_date(lot(LotStatus.RELEASED), day, today=TODAY)
        [violation] = bad.value.violations
        assert (violation.field, violation.description) == ("retest_date", says)


def test_a_two_signature_release_needs_two_different_people() -> None:
    releasable = lot(LotStatus.RELEASABLE)

    assert qa.is_first_signature(releasable, "qa-anna", [])
    assert not qa.is_first_signature(releasable, "qa-ben", ["qa-anna"])
    with pytest.raises(FailedPrecondition) as four_eyes:
        qa.is_first_signature(releasable, "qa-anna", ["qa-anna"])
    assert four_eyes.value.type_ == "FOUR_EYES"
    assert "the second signature must come from another person" in four_eyes.value.message
