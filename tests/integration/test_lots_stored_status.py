"""Each lot's status as answered is stored with it (tables.lots.status_reply), so that a
batch read of lots not in memory answers from the rows without parsing them: the stored
answer is the answer, a row changed without it is answered from its columns, a batch of
misses leaves a full status cache alone (one with room holds them), and the lots that
exist when the column arrives get theirs from the migration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots import convert, queries
from services.lots.read_model import StatusCache
from services.lots.tables import lots
from shared import migrations
from shared.db import make_engine
from tests.integration.test_lots import System, running_system
from tests.integration.test_lots_explain import receive_many
from tests.support.databases import Databases
from tests.support.lot_rows import add_lot_rows, lot_rows
from tests.support.services import ref

pytestmark = pytest.mark.integration

# The revision before lots.status_reply.
BEFORE_REPLY = "2026_12_01_0622"


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


async def stored(system: System, lot_id: str) -> bytes | None:
    async with system.lots_service.infra.engine.connect() as conn:
        return (await conn.execute(select(lots.c.status_reply)
                                   .where(lots.c.lot_id == lot_id))).scalar_one()


async def batch_from_the_database(system: System,
                                  lot_ids: list[str]) -> tuple[list[pb.ReleaseStatus], int]:
    """The batch answer read with a cache too small to hold the batch's lots (their
    stored replies answer), and how many entries the cache took."""
    cache = StatusCache(max_entries=1)
    async with system.lots_service.infra.engine.connect() as conn:
        found = await queries.get_statuses(conn, lot_ids=lot_ids, cache=cache)
    return convert.release_statuses(found, lot_ids, datetime.now(UTC)), len(cache)


@pytest.mark.req("WMS-001")
async def test_the_stored_reply_is_what_is_answered_and_misses_stay_out_of_a_full_cache(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = await system.released_lot(supplier_id, material)
    waiting = await receive_many(system, supplier_id, material, 3, chunk=3)
    asked = [released, *waiting]

    answers = [await system.status(lot_id) for lot_id in asked]

    for lot_id, answer in zip(asked, answers, strict=True):
        assert pb.ReleaseStatus.FromString(await stored(system, lot_id) or b"") == answer
    read, held = await batch_from_the_database(system, asked)
    assert read == answers
    assert held == 0
    # With room for them, the lots are held (and answered the same).
    cache = StatusCache()
    async with system.lots_service.infra.engine.connect() as conn:
        found = await queries.get_statuses(conn, lot_ids=asked, cache=cache)
    assert convert.release_statuses(found, asked, datetime.now(UTC)) == answers
    assert len(cache) == len(asked)


@pytest.mark.req("WMS-001")
async def test_a_row_changed_without_its_reply_is_answered_from_its_columns(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = await system.released_lot(supplier_id, material)
    before = await system.status(released)
    # As a writer that does not know the column would leave it: the old reply stays.
    async with system.lots_service.infra.engine.begin() as conn:
        await conn.execute(update(lots).where(lots.c.lot_id == released).values(
            status="ON_HOLD", status_version=lots.c.status_version + 1,
            unmet='[["QA_HOLD","held by QA: deviation","QA"]]'))
    # Written straight into the table, without a reply at all.
    [bare] = lot_rows(1, prefix=ref("RAW"), status="QUARANTINE")
    await add_lot_rows(system.lots_service.infra.engine, [bare])

    [changed, raw], _ = await batch_from_the_database(system, [released, bare["lot_id"]])

    assert (changed.status, changed.version) == (pb.LOT_STATUS_ON_HOLD, before.version + 1)
    assert [(u.code, u.message) for u in changed.unmet] == [
        ("QA_HOLD", "held by QA: deviation")]
    assert (raw.lot_id, raw.status, raw.version) == (
        bare["lot_id"], pb.LOT_STATUS_QUARANTINE, 2)
    assert [u.code for u in raw.unmet] == ["RESULTS_MISSING"]


@pytest.fixture(params=["sqlite", "configured"])
async def older_lots_database(request: pytest.FixtureRequest, databases: Databases,
                              tmp_path: Path) -> str:
    """A lots database at the revision before status_reply (SQLite, and PostgreSQL in CI)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'lots-before-reply.db'}"
    else:
        url = await databases.create("lots_before_reply")
    await migrations.migrate("lots", url, target=BEFORE_REPLY)
    return url


@pytest.mark.req("OPS-001")
async def test_the_lots_of_an_older_database_get_their_reply_from_the_migration(
        older_lots_database: str) -> None:
    engine = make_engine(older_lots_database)
    try:
        await add_lot_rows(engine, lot_rows(3, prefix="OLD-R"))
        await add_lot_rows(engine, lot_rows(2, prefix="OLD-Q", status="QUARANTINE"))
        asked = [f"OLD-{kind}-{i:06d}" for kind, count in (("R", 3), ("Q", 2))
                 for i in range(count)]
        async with engine.connect() as conn:
            built = await queries.status_rows(conn, asked)

        await migrations.migrate("lots", older_lots_database)

        async with engine.connect() as conn:
            rows = {row.lot_id: row for row in await queries.stored_statuses(conn, asked)}
    finally:
        await engine.dispose()
    assert sorted(rows) == sorted(asked)
    for entry in built:
        assert rows[entry.lot_id].reply == convert.status_reply(entry), entry.lot_id
