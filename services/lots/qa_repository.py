"""SQL of what QA works with in the lots service: the reviews of released lots and the
release policies (SQLAlchemy Core on the unit of work's connection; reads for the API in
qa_queries.py). SQL only, as repository.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.lots.records import Policy, Review, policy_from_row, review_from_row
from services.lots.tables import lot_reviews, release_policies, release_policy_history
from shared.db import insert_ignoring_duplicates, one_of

# -- reviews ---------------------------------------------------------------------------

async def review_ids_present(conn: AsyncConnection, *, review_ids: Iterable[str]) -> set[str]:
    """Which of these reviews exist already."""
    wanted = sorted(set(review_ids))
    if not wanted:
        return set()
    return {r.review_id for r in await conn.execute(_REVIEWS_PRESENT, {"ids": wanted})}


_REVIEWS_PRESENT = select(lot_reviews.c.review_id).where(one_of(lot_reviews.c.review_id, "ids"))


async def add_reviews(conn: AsyncConnection, reviews: Sequence[Review]) -> None:
    """Open reviews, in the given order; a review that exists already is left as it is."""
    if reviews:
        await conn.execute(insert_ignoring_duplicates(lot_reviews, conn.dialect.name), [
            {name: value for name, value in vars(review).items() if name != "sequence"}
            for review in reviews])


async def get_review(conn: AsyncConnection, *, review_id: str,
                     for_update: bool = False) -> Review | None:
    query = select(lot_reviews).where(lot_reviews.c.review_id == review_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return None if row is None else review_from_row(row)


async def close_review(conn: AsyncConnection, *, review_id: str, conclusion: str,
                       closed_by: str, closed_at: datetime) -> None:
    """Close an OPEN review (locked by the caller)."""
    await conn.execute(update(lot_reviews).where(
        lot_reviews.c.review_id == review_id, lot_reviews.c.state == "OPEN"
    ).values(state="CLOSED", conclusion=conclusion, closed_by=closed_by, closed_at=closed_at))


# -- release policies ------------------------------------------------------------------

async def get_policy(conn: AsyncConnection, *, material_code: str,
                     for_update: bool = False) -> Policy | None:
    query = select(release_policies).where(release_policies.c.material_code == material_code)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return None if row is None else policy_from_row(row)


def _policy_values(policy: Policy) -> dict[str, Any]:
    return {"material_code": policy.material_code, "policy": policy.policy.value,
            "reason": policy.reason, "set_by": policy.set_by, "set_at": policy.set_at,
            "two_signatures": policy.two_signatures}


async def add_policy(conn: AsyncConnection, policy: Policy) -> bool:
    """Store a material's first policy (without history: `set_policy` follows); False
    when a concurrent first setter stored one (this waits for that setter's commit)."""
    added = await conn.execute(insert_ignoring_duplicates(release_policies, conn.dialect.name),
                               _policy_values(policy))
    return added.rowcount == 1


async def set_policy(conn: AsyncConnection, policy: Policy) -> None:
    """Store a material's policy in its row (`add_policy` made it) and append it to the
    history."""
    values = _policy_values(policy)
    await conn.execute(update(release_policies)
                       .where(release_policies.c.material_code == policy.material_code)
                       .values(**values))
    await conn.execute(insert(release_policy_history).values(**values))
