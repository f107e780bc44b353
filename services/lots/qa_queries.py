"""Reads of what QA works with in the lots service: lot reviews, with their verified
signatures, and release policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.lots import qa_repository
from services.lots.decision_record import REVIEW, review_content
from services.lots.domain.reviews import ReviewState
from services.lots.domain.rule import ReleasePolicy
from services.lots.records import Policy, Review, review_from_row
from services.lots.tables import lot_reviews
from shared import esign


@dataclass(frozen=True)
class SignedReview:
    review: Review
    signatures: list[Any]


async def signed_reviews(conn: AsyncConnection, reviews: Sequence[Review]) -> list[SignedReview]:
    """Reviews with their verified signatures."""
    found = await esign.signatures_of(conn, record_type=REVIEW, contents={
        r.review_id: review_content(r.review_id, r.lot_id, r.state, r.conclusion, r.closed_by)
        for r in reviews})
    return [SignedReview(r, found[r.review_id]) for r in reviews]


async def list_lot_reviews(conn: AsyncConnection, *, state: ReviewState | None,
                           supplier_id: str, material_code: str, after: int,
                           limit: int) -> tuple[list[SignedReview], int]:
    """A page of reviews, oldest first, and the position of its last one (0 when empty)."""
    found = await review_page(conn, state=state, supplier_id=supplier_id,
                              material_code=material_code, after=after, limit=limit)
    return await signed_reviews(conn, found), (found[-1].sequence if found else 0)


async def get_release_policy(conn: AsyncConnection, *, material_code: str) -> Policy:
    """A material's policy; AUTOMATIC (set by nobody) when never set."""
    found = await qa_repository.get_policy(conn, material_code=material_code)
    return found or Policy(material_code, ReleasePolicy.AUTOMATIC, "", "", None)


async def review_page(conn: AsyncConnection, *, state: ReviewState | None, supplier_id: str,
                      material_code: str, after: int, limit: int) -> list[Review]:
    """A page of reviews, oldest first, after the sequence `after`; empty filters match all."""
    query = select(lot_reviews).where(lot_reviews.c.sequence > after)
    if state:  # written into the SQL, as a lot page's status is
        query = query.where(lot_reviews.c.state == literal(state.value, literal_execute=True))
    if supplier_id:
        query = query.where(lot_reviews.c.supplier_id == supplier_id)
    if material_code:
        query = query.where(lot_reviews.c.material_code == material_code)
    return [review_from_row(r) for r in await conn.execute(
        query.order_by(lot_reviews.c.sequence).limit(limit))]
