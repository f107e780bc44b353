"""The lots' qualification lock has two statements, both built once: one key (an event's,
a receipt's) by equality, several keys by a tuple IN in key order. Both answer the same
facts, create the same placeholders, and lock exactly the rows asked for: on PostgreSQL
another transaction can still lock any other key at once (NOWAIT), never a locked one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lots import repository
from services.lots.domain.rule import QualificationFacts
from services.lots.tables import qualifications
from shared import migrations
from shared.db import make_engine
from tests.support.databases import Databases

pytestmark = pytest.mark.integration

UNTIL = datetime(2027, 6, 1, tzinfo=UTC)
STORED = {("SUP-1", "SITE-1", "MAT-1"): QualificationFacts("QUALIFIED", UNTIL, 3),
          ("SUP-1", "SITE-1", "MAT-2"): QualificationFacts("SUSPENDED", None, 2),
          ("SUP-1", "SITE-2", "MAT-1"): QualificationFacts("QUALIFIED", UNTIL, 1),
          ("SUP-2", "SITE-1", "MAT-1"): QualificationFacts("EXPIRED", UNTIL, 5)}
NEW = ("SUP-3", "SITE-1", "MAT-1")
PLACEHOLDER = QualificationFacts("", None, 0)


@pytest.fixture
async def engine(databases: Databases) -> AsyncIterator[AsyncEngine]:
    url = await databases.create("qualification_locks")
    await migrations.migrate("lots", url)
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(insert(qualifications), [
            {"supplier_id": s, "site_id": site, "material_code": m, "status": f.status,
             "valid_until": f.valid_until, "version": f.version}
            for (s, site, m), f in STORED.items()])
    yield engine
    await engine.dispose()


@pytest.mark.parametrize("shared", [False, True])
async def test_one_key_and_several_keys_answer_the_same_facts(engine: AsyncEngine,
                                                              shared: bool) -> None:
    wanted = [*STORED, NEW]
    async with engine.begin() as conn:
        together = await repository.lock_qualifications(conn, keys=wanted, shared=shared)
    async with engine.begin() as conn:
        alone = {}
        for key in wanted:
            alone.update(await repository.lock_qualifications(conn, keys=[key], shared=shared))
    assert together == alone == {**STORED, NEW: PLACEHOLDER}
    assert list(together) == sorted(wanted)


async def test_a_new_key_alone_gets_its_placeholder(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await repository.lock_qualifications(conn, keys=[NEW, NEW]) == {
            NEW: PLACEHOLDER}
        assert await repository.lock_qualifications(conn, keys=[]) == {}
    async with engine.connect() as conn:
        rows = (await conn.execute(select(qualifications.c.supplier_id))).scalars().all()
    assert sorted(rows) == ["SUP-1", "SUP-1", "SUP-1", "SUP-2", "SUP-3"]


@pytest.mark.parametrize("locked", [[("SUP-1", "SITE-1", "MAT-1")],
                                    [("SUP-1", "SITE-1", "MAT-1"), ("SUP-2", "SITE-1", "MAT-1")]])
async def test_the_lock_holds_exactly_the_keys_asked_for(engine: AsyncEngine,
                                                         databases: Databases,
                                                         locked: list[tuple[str, str, str]]
                                                         ) -> None:
    if databases.kind != "postgresql":
        pytest.skip("SQLite locks the whole database")
    async with engine.connect() as holder, engine.connect() as other:
        await holder.begin()
        await repository.lock_qualifications(holder, keys=locked)
        for key in STORED:
            await other.begin()
            try:
                await other.execute(text(
                    "SELECT 1 FROM qualifications WHERE supplier_id = :s AND site_id = :site "
                    "AND material_code = :m FOR UPDATE NOWAIT"),
                    {"s": key[0], "site": key[1], "m": key[2]})
                free = True
            except DBAPIError:
                free = False
            await other.rollback()
            assert free is (key not in locked), key
        await holder.rollback()
