"""The audit trail's append on PostgreSQL takes its lock and reads the chain head in one
call (`lotgate_audit_chain_head`, installed by the revisions): an append that waited for
the lock chains after the append it waited for, never beside it (a fork)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.suppliers.tables import metadata
from shared import audit_chain, migrations
from shared.audit_verify import verify
from shared.db import make_engine
from shared.tables import AUDIT_TRAIL
from tests.support.databases import Databases
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
trail = metadata.tables[AUDIT_TRAIL]


@pytest.fixture
async def engine(databases: Databases) -> AsyncIterator[AsyncEngine]:
    if databases.kind != "postgresql":
        pytest.skip("SQLite has one writer: appends cannot interleave")
    url = await databases.create("chain_head")
    await migrations.migrate("suppliers", url)
    engine = make_engine(url)
    yield engine
    await engine.dispose()


def entry(record_id: str) -> dict[str, Any]:
    return {"recorded_at": NOW, "principal_subject": "qa.jane", "principal_name": "Jane QA",
            "record_type": "supplier", "record_id": record_id, "action": "create",
            "reason": "", "old_values": None, "new_values": "{}", "request_id": "req-1"}


async def waiting_for_the_lock(conn: AsyncConnection) -> int:
    """How many sessions of this database wait for an advisory lock."""
    return (await conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))).scalar_one()


async def test_an_append_that_waited_for_the_lock_chains_after_the_one_it_waited_for(
        engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await audit_chain.append(conn, metadata, [entry("SUP-0")])

    async with engine.connect() as first, engine.connect() as second, \
            engine.connect() as watcher:
        await first.begin()
        await audit_chain.append(first, metadata, [entry("SUP-1")])  # holds the lock
        await second.begin()
        second_append = asyncio.create_task(
            audit_chain.append(second, metadata, [entry("SUP-2")]))
        await eventually(lambda: waiting_for_the_lock(watcher), lambda n: n == 1)
        await first.commit()
        await second_append
        await second.commit()

    async with engine.connect() as conn:
        rows = (await conn.execute(select(trail).order_by(trail.c.sequence))).all()
        verdict = await verify(conn, metadata, check_records=False)
    assert [(r.sequence, r.record_id) for r in rows] == [
        (1, "SUP-0"), (2, "SUP-1"), (3, "SUP-2")]
    assert rows[2].previous_hash == rows[1].entry_hash
    assert verdict.ok, verdict
