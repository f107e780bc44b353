"""The pure rules of lot reviews: which qualification changes open one, how one is closed."""

from __future__ import annotations

import pytest

from services.lots.domain import ReviewState, must_close, needs_review, review_id_of
from shared.errors import FailedPrecondition


@pytest.mark.req("REL-010")
@pytest.mark.parametrize("status,opens", [
    ("SUSPENDED", True), ("DISQUALIFIED", True), ("EXPIRED", True),
    ("QUALIFIED", False), ("PENDING", False), ("", False),
])
def test_only_a_withdrawn_or_lapsed_approval_opens_reviews(status: str, opens: bool) -> None:
    assert needs_review(status) is opens


@pytest.mark.req("REL-010")
def test_a_review_is_named_after_the_lot_and_the_qualification_version() -> None:
    assert review_id_of("LOT-7", 12) == "LOT-7/12"


@pytest.mark.req("REV-001")
def test_an_open_review_is_closed() -> None:
    assert must_close("LOT-7/12", ReviewState.OPEN, None, None,
                      new_conclusion="no impact", requested_by="qa.jane") is True


@pytest.mark.req("REV-001")
def test_the_same_close_again_is_a_retry_that_changes_nothing() -> None:
    assert must_close("LOT-7/12", ReviewState.CLOSED, "no impact", "qa.jane",
                      new_conclusion="no impact", requested_by="qa.jane") is False


@pytest.mark.req("REV-001")
@pytest.mark.parametrize("conclusion,by", [("lot recalled", "qa.jane"), ("no impact", "qa.tom")])
def test_a_closed_review_cannot_be_closed_again_otherwise(conclusion: str, by: str) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        must_close("LOT-7/12", ReviewState.CLOSED, "no impact", "qa.jane",
                   new_conclusion=conclusion, requested_by=by)

    assert "CLOSED" in refused.value.message
    assert refused.value.subject == "lot_reviews/LOT-7/12"
