"""Reviews QA owes on released lots whose supplier site lost its approval after release."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from shared.errors import FailedPrecondition

# Qualification statuses that withdraw an approval: the released lots of that supplier
# site and material are not pulled back, but QA must review each of them.
WITHDRAWN = frozenset({"SUSPENDED", "DISQUALIFIED", "EXPIRED"})


def needs_review(qualification_status: str) -> bool:
    """Whether a change to this status opens a review of the released lots it concerns."""
    return qualification_status in WITHDRAWN


class ReviewState(StrEnum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


def review_id_of(lot_id: str, qualification_version: int) -> str:
    return f"{lot_id}/{qualification_version}"


def must_close(review_id_: str, state: ReviewState, conclusion: str | None,
               closed_by: str | None, *, new_conclusion: str, requested_by: str) -> bool:
    """Whether closing the review changes it: True for an OPEN review.

    False for a retry of the close that closed it (same conclusion, same person): the
    caller returns the review unchanged. Any other close of a CLOSED review is refused.
    """
    if state is ReviewState.OPEN:
        return True
    if conclusion == new_conclusion and closed_by == requested_by:
        return False
    raise FailedPrecondition(
        f"review {review_id_} is CLOSED (by {closed_by}); a closed review cannot be closed "
        "again with another conclusion", subject=f"lot_reviews/{review_id_}")


def review_reason(status: str, reason: str, valid_until: datetime | None) -> str:
    """Why a review is opened: the suppliers service's reason, else the lapse or the
    status that withdrew the approval."""
    if reason:
        return reason
    return f"valid until {valid_until.isoformat()}" if valid_until else status.lower()
