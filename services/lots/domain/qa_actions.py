"""QA's actions on a lot (release, hold, lifting a hold, rejection, a new retest date) as
pure rules: from the lot as it is, what the action changes, None for a retry of what was
done already, or a refusal (FailedPrecondition; InvalidArgument for a bad retest date).

The handler applies the change and decides the lot again (`lifecycle.transition`), so
the decision record names who did what and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from services.lots.domain.lifecycle import FINAL, retest_date_problem
from services.lots.domain.lot import Lot
from services.lots.domain.rule import LotStatus
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument


@dataclass(frozen=True)
class QaChange:
    """What an action sets on the lot; None: left as it is."""

    qa_released: bool | None = None
    qa_hold_reason: str | None = None
    qa_rejection_reason: str | None = None
    retest_date: date | None = None

    def values(self) -> dict[str, object]:
        """The lot's columns this change sets."""
        return {name: value for name, value in vars(self).items() if value is not None}


def refusal(lot: Lot, why: str) -> FailedPrecondition:
    return FailedPrecondition(f"lot {lot.lot_id} is {lot.status.value}: {why}",
                              subject=f"lots/{lot.lot_id}")


def release(lot: Lot) -> QaChange:
    """QA releases a RELEASABLE lot (one its material's policy leaves to QA)."""
    if lot.status is not LotStatus.RELEASABLE:
        raise refusal(lot, "only a RELEASABLE lot can be released by QA")
    return QaChange(qa_released=True)


def hold(lot: Lot, reason: str) -> QaChange | None:
    """QA holds a lot, whatever its status but REJECTED or EXPIRED; one hold at a time."""
    if lot.status in FINAL:
        raise refusal(lot, "a rejected or expired lot cannot be held")
    if lot.qa_hold_reason:
        if lot.qa_hold_reason == reason:
            return None  # a retry of this hold
        raise refusal(lot, f"it is held by QA already ({lot.qa_hold_reason}); "
                           "release that hold first")
    return QaChange(qa_hold_reason=reason)


def release_hold(lot: Lot) -> QaChange:
    """QA lifts its own hold (not a hold for an out-of-specification result)."""
    if lot.status in FINAL or not lot.qa_hold_reason:
        raise refusal(lot, "it is not held by QA")
    return QaChange(qa_hold_reason="")


def reject(lot: Lot, reason: str) -> QaChange | None:
    """QA rejects a lot that is not final yet (REJECTED is final)."""
    if lot.status is LotStatus.REJECTED and lot.qa_rejection_reason == reason:
        return None  # a retry of this rejection
    if lot.status in FINAL:
        raise refusal(lot, "a rejected or expired lot cannot be rejected")
    return QaChange(qa_rejection_reason=reason)


def set_retest_date(lot: Lot, retest_date: date, *, today: date) -> QaChange:
    """A new retest date: after today, not after the expiry date, for a lot not final."""
    if lot.status in FINAL:
        raise refusal(lot, "a rejected or expired lot has no retest date")
    problem = retest_date_problem(retest_date, expiry_date=lot.expiry_date, today=today)
    if problem:
        raise InvalidArgument([FieldViolation("retest_date", problem)])
    return QaChange(retest_date=retest_date)


def is_first_signature(lot: Lot, signer: str, signed_by: Iterable[str]) -> bool:
    """Whether `signer`'s signature is the first of a two-signature release (`signed_by`:
    who signed this release already); False for the second, from another person. The
    same person twice is refused (four eyes)."""
    given = list(signed_by)
    if signer in given:
        raise FailedPrecondition(
            f"lot {lot.lot_id}: {signer} has signed this release already; the second "
            "signature must come from another person (four eyes)",
            type_="FOUR_EYES", subject=f"lots/{lot.lot_id}")
    return not given
