"""The commit-time flush of the audit trail on a real database: one unit of work changing
many records of several types writes exactly the entries of the records that changed,
each with its own old and new values, in the order they were noted; the statements it
runs do not grow with the number of records; and on PostgreSQL a commit of one event and
one entry writes both in one statement, the event still handed to the relay."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.results.v1 import events_pb2
from shared import audit, messaging
from shared.audit_verify import verify
from shared.clock import ManualClock
from shared.db import make_engine
from shared.outbox import AGGREGATE_HEADER, OutboxRelay
from shared.tables import AUDIT_TRAIL, make_tables
from shared.uow import UnitOfWork, UnitOfWorkFactory
from tests.support.faults import FaultyEngine
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

metadata = MetaData()
tables = make_tables(metadata)
batches = Table("batches", metadata,
                Column("batch_id", String(40), primary_key=True),
                Column("status", String(20), nullable=False),
                Column("quantity", Integer, nullable=False))
# A composite key with a number in it, as specifications (material, version) have.
slots = Table("slots", metadata,
              Column("area", String(20), primary_key=True),
              Column("shelf", Integer, primary_key=True),
              Column("content", String(40), nullable=False))
audit.register(metadata, "batch", batches)
audit.register(metadata, "slot", slots)
trail = metadata.tables[AUDIT_TRAIL]


@dataclass
class Db:
    engine: AsyncEngine
    uow: UnitOfWorkFactory


@pytest.fixture
async def db(databases) -> AsyncIterator[Db]:
    engine = make_engine(await databases.create("audit_flush"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    clock = ManualClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    try:
        yield Db(engine, UnitOfWorkFactory(engine, tables.outbox, clock))
    finally:
        await engine.dispose()


def batch(batch_id: str, status: str = "OPEN", quantity: int = 1) -> dict[str, Any]:
    return {"batch_id": batch_id, "status": status, "quantity": quantity}


def slot(area: str, shelf: int, content: str) -> dict[str, Any]:
    return {"area": area, "shelf": shelf, "content": content}


async def entries(db: Db, after: int = 0) -> list[Any]:
    async with db.engine.connect() as conn:
        return list(await conn.execute(
            select(trail).where(trail.c.sequence > after).order_by(trail.c.sequence)))


def values(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text is not None else None


async def test_one_flush_of_several_records_and_types_writes_each_change_with_its_values(
        db: Db) -> None:
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch(f"B{i}") for i in range(1, 5)])
        await uow.conn.execute(insert(slots), [slot("A", 1, "drums"), slot("A", 2, "bags"),
                                               slot("B", 1, "totes")])
        for i in range(1, 5):
            audit.record(uow, "batch", f"B{i}", action="create")
        for area, shelf in (("A", 1), ("A", 2), ("B", 1)):
            audit.record(uow, "slot", area, shelf, action="create")
        audit.record_values(uow, "signer", "qa.jane", {"enrolled": True}, action="enrol")
        await uow.commit()
    created = await entries(db)
    assert [(e.record_type, e.record_id, e.old_values) for e in created] == [
        ("batch", "B1", None), ("batch", "B2", None), ("batch", "B3", None),
        ("batch", "B4", None), ("slot", "A/1", None), ("slot", "A/2", None),
        ("slot", "B/1", None), ("signer", "qa.jane", None)]

    async with db.uow() as uow:
        conn = uow.conn
        await conn.execute(update(batches).where(batches.c.batch_id == "B3")
                           .values(status="RELEASED"))
        audit.record(uow, "batch", "B3", action="release", reason="reviewed")
        await conn.execute(update(slots).where(slots.c.area == "A", slots.c.shelf == 2)
                           .values(content="sacks"))
        audit.record(uow, "slot", "A", 2, action="refill")
        await conn.execute(update(batches).where(batches.c.batch_id == "B1")
                           .values(quantity=7))
        audit.record(uow, "batch", "B1", action="count")
        audit.record(uow, "batch", "B2", action="touch")  # noted, not changed
        await conn.execute(insert(batches), [batch("B9")])
        audit.record(uow, "batch", "B9", action="create")
        await conn.execute(delete(batches).where(batches.c.batch_id == "B9"))  # gone again
        audit.record_values(uow, "signer", "qa.jane", {"enrolled": False}, action="reset")
        audit.record(uow, "slot", "B", 1, action="look")  # noted, not changed
        await conn.execute(insert(slots), [slot("C", 7, "pallets")])
        audit.record(uow, "slot", "C", 7, action="create")
        await conn.execute(update(batches).where(batches.c.batch_id == "B3")
                           .values(quantity=3))
        audit.record(uow, "batch", "B3", action="again")  # the first note's action holds
        await uow.commit()

    changed = await entries(db, after=len(created))
    assert [(e.record_type, e.record_id, e.action, values(e.old_values), values(e.new_values))
            for e in changed] == [
        ("batch", "B3", "release", batch("B3"), batch("B3", "RELEASED", 3)),
        ("slot", "A/2", "refill", slot("A", 2, "bags"), slot("A", 2, "sacks")),
        ("batch", "B1", "count", batch("B1"), batch("B1", quantity=7)),
        ("signer", "qa.jane", "reset", {"enrolled": True}, {"enrolled": False}),
        ("slot", "C/7", "create", None, slot("C", 7, "pallets"))]
    assert changed[0].reason == "reviewed"
    assert [e.sequence for e in changed] == list(range(9, 14))
    async with db.engine.connect() as conn:
        verdict = await verify(conn, metadata)
    assert verdict.ok, verdict.detail
    assert (verdict.entries_checked, verdict.records_checked) == (13, 8)


async def _update_and_note(uow: UnitOfWork, count: int, quantity: int) -> None:
    await uow.conn.execute(update(batches).values(quantity=quantity))
    for i in range(count):
        audit.record(uow, "batch", f"B{i:04d}", action=f"count {quantity}")


async def _statements_of_commit(db: Db, count: int, quantity: int,
                                event_id: str | None = None) -> list[str]:
    """The statements (whitespace folded) the commit of a unit of work that changed
    `count` batches runs; with `event_id`, it also emitted one event of B0000."""
    seen: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    async with db.uow() as uow:
        await _update_and_note(uow, count, quantity)
        if event_id is not None:
            uow.emit("flush.batch", "B0000", events_pb2.ResultRecorded(event_id=event_id))
        event.listen(db.engine.sync_engine, "before_cursor_execute", counted)
        try:
            await uow.commit()
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", counted)
    return seen


@pytest.mark.parametrize("count", [3, 60])
async def test_the_flush_runs_the_same_statements_for_few_records_as_for_many(
        db: Db, count: int) -> None:
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch(f"B{i:04d}") for i in range(count)])
        await _update_and_note(uow, count, 1)
        await uow.commit()

    statements = await _statements_of_commit(db, count, 2)

    # The rows with their last entries; the append (the head, read under the lock on
    # PostgreSQL in the same call; the insert).
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 1 + 1, statements
    assert len(statements) == len(reads) + 1, statements
    written = await entries(db, after=count)
    assert len(written) == count
    assert all(values(e.old_values)["quantity"] == 1 and values(e.new_values)["quantity"] == 2
               for e in written)


async def test_changed_records_of_a_type_are_read_with_their_last_entries_in_one_statement(
        db: Db) -> None:
    """A flush of records of one type with a one-column key reads their rows and their
    last entries together, once; one with a composite key reads them one after the other;
    the entries are the same either way."""
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch("B1"), batch("B2")])
        await uow.conn.execute(insert(slots), [slot("A", 1, "drums")])
        for batch_id in ("B1", "B2"):
            audit.record(uow, "batch", batch_id, action="create", created=True)
        audit.record(uow, "slot", "A", 1, action="create", created=True)
        await uow.commit()

    seen: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    async def reads_of_commit(change: Any, *note: Any) -> list[str]:
        seen.clear()
        async with db.uow() as uow:
            await uow.conn.execute(change)
            audit.record(uow, *note, action="change")
            event.listen(db.engine.sync_engine, "before_cursor_execute", counted)
            try:
                await uow.commit()
            finally:
                event.remove(db.engine.sync_engine, "before_cursor_execute", counted)
        # The reads before the append's own (its lock and the chain's head).
        return [s for s in seen if s.startswith("SELECT") and "entry_hash" not in s
                and "pg_advisory_xact_lock" not in s]

    batch_reads = await reads_of_commit(
        update(batches).where(batches.c.batch_id == "B2").values(status="HELD"), "batch", "B2")
    assert len(batch_reads) == 1, batch_reads
    assert "FROM batches LEFT OUTER JOIN" in batch_reads[0], batch_reads
    slot_reads = await reads_of_commit(
        update(slots).values(content="bags"), "slot", "A", 1)
    assert [("FROM slots" in s, "FROM audit_trail" in s) for s in slot_reads] == [
        (True, False), (False, True)], slot_reads

    written = await entries(db, after=3)
    assert [(e.record_id, values(e.old_values), values(e.new_values)) for e in written] == [
        ("B2", batch("B2"), batch("B2", "HELD")),
        ("A/1", slot("A", 1, "drums"), slot("A", 1, "bags"))]
    async with db.engine.connect() as conn:
        verdict = await verify(conn, metadata)
    assert verdict.ok, verdict.detail


async def test_a_flush_of_more_records_than_one_statement_holds_reads_them_all(
        db: Db) -> None:
    count = 1234  # three chunks of keys
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch(f"B{i:04d}") for i in range(count)])
        await _update_and_note(uow, count, 1)
        await uow.commit()
    async with db.uow() as uow:
        await _update_and_note(uow, count, 2)
        audit.record(uow, "batch", "B9999", action="count 2")  # never was
        await uow.commit()

    written = await entries(db, after=count)
    assert [e.record_id for e in written] == [f"B{i:04d}" for i in range(count)]
    assert all(values(e.old_values)["quantity"] == 1 and values(e.new_values)["quantity"] == 2
               for e in written)


async def test_records_noted_as_created_are_flushed_without_reading_the_trail_for_them(
        db: Db) -> None:
    """A unit of work that inserted its records says so: their entries' old values are
    empty, and the flush skips the read of last entries for them, while a record of the
    same type changed beside them still gets its old values."""
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch("B1")])
        audit.record(uow, "batch", "B1", action="create")
        await uow.commit()

    seen: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    async def commit_with(changed: bool) -> None:
        seen.clear()
        async with db.uow() as uow:
            rows = [batch(f"N{i}{int(changed)}") for i in range(3)]
            await uow.conn.execute(insert(batches), rows)
            for row in rows:
                audit.record(uow, "batch", row["batch_id"], action="create", created=True)
            if changed:
                await uow.conn.execute(update(batches).where(batches.c.batch_id == "B1")
                                       .values(status="HELD"))
                audit.record(uow, "batch", "B1", action="hold")
            event.listen(db.engine.sync_engine, "before_cursor_execute", counted)
            try:
                await uow.commit()
            finally:
                event.remove(db.engine.sync_engine, "before_cursor_execute", counted)

    def last_entry_reads() -> int:
        return sum("max(audit_trail.sequence)" in s for s in seen)

    await commit_with(changed=False)
    assert last_entry_reads() == 0, seen
    await commit_with(changed=True)
    assert last_entry_reads() == 1, seen

    written = await entries(db, after=1)
    assert [(e.record_id, e.action, values(e.old_values), values(e.new_values))
            for e in written] == [
        ("N00", "create", None, batch("N00")), ("N10", "create", None, batch("N10")),
        ("N20", "create", None, batch("N20")), ("N01", "create", None, batch("N01")),
        ("N11", "create", None, batch("N11")), ("N21", "create", None, batch("N21")),
        ("B1", "hold", batch("B1"), batch("B1", "HELD"))]
    async with db.engine.connect() as conn:
        verdict = await verify(conn, metadata)
    assert verdict.ok, verdict.detail


# One event and its entries


def inserts(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(("INSERT", "WITH"))]


async def _commit_counted(db: Db, count: int, event_id: str) -> list[str]:
    """Commit a unit of work that changes batches B0000.. (`count` of them, each noted)
    and emits one event of B0000; the statements its commit runs."""
    return await _statements_of_commit(db, count, 2, event_id)


@pytest.mark.parametrize("count", [1, 2])
async def test_a_commit_of_one_event_writes_a_lone_entry_in_the_events_statement(
        db: Db, databases, count: int) -> None:
    """On PostgreSQL one entry is inserted by the event's INSERT (a WITH of it); more, and
    on SQLite any, by an INSERT of their own. The entries are the same either way, and so
    is the event's row."""
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch(f"B{i:04d}") for i in range(count)])
        await _update_and_note(uow, count, 1)
        await uow.commit()

    statements = inserts(await _commit_counted(db, count, "e-1"))

    together = databases.kind == "postgresql" and count == 1
    if together:
        assert len(statements) == 1, statements
        assert "INSERT INTO audit_trail" in statements[0], statements
        assert "INSERT INTO outbox" in statements[0], statements
    else:
        assert [s.split("(")[0] for s in statements] == [
            "INSERT INTO audit_trail ", "INSERT INTO outbox "], statements
    written = await entries(db, after=count)
    assert [(e.sequence, e.record_id, values(e.old_values), values(e.new_values))
            for e in written] == [
        (count + 1 + i, f"B{i:04d}", batch(f"B{i:04d}"), batch(f"B{i:04d}", quantity=2))
        for i in range(count)]
    async with db.engine.connect() as conn:
        outbox = (await conn.execute(select(tables.outbox))).all()
        verdict = await verify(conn, metadata)
    assert [(row.event_id, row.aggregate_id) for row in outbox] == [("e-1", "B0000")]
    assert verdict.ok, verdict.detail


@pytest.fixture
async def stream(nats_server) -> AsyncIterator[tuple[Any, str]]:
    """A JetStream context and a stream of this test's own: (context, stream name)."""
    nc = await nats_server.connect()
    name = f"AUDIT_FLUSH_{uuid.uuid4().hex[:10].upper()}"
    js = nc.jetstream(timeout=5.0)
    await messaging.ensure_stream(js, messaging.StreamSpec(name, ("flush.batch",)),
                                  duplicate_window_s=900)
    yield js, name
    await js.delete_stream(name)
    await nc.close()


async def test_one_entry_and_one_event_are_written_together_and_the_event_handed_over(
        db: Db, databases, stream: tuple[Any, str]) -> None:
    """The relay publishes the event of a commit whose entry went along with it without
    reading the outbox: the event's INSERT still returns what the hand-off needs."""
    js, name = stream
    async with db.uow() as uow:
        await uow.conn.execute(insert(batches), [batch("B0000")])
        audit.record(uow, "batch", "B0000", action="create", created=True)
        await uow.commit()
    faulty = FaultyEngine(db.engine)
    relay = OutboxRelay(faulty, tables.outbox, js, name=name, poll_seconds=3600.0)
    db.uow.handoff = relay
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))

    async def published() -> list[tuple[str, str]]:
        state = (await js.stream_info(name)).state
        return [((msg := await js.get_msg(name, seq)).headers["Nats-Msg-Id"],
                 msg.headers[AGGREGATE_HEADER])
                for seq in range(state.first_seq, state.last_seq + 1) if state.messages]

    async def handed_over() -> bool:
        return relay.takes_handoff

    try:
        await eventually(handed_over, bool)
        faulty.refuse.arm(1_000_000)  # the relay can no longer read the table (nor prune)
        statements = inserts(await _commit_counted(db, 1, "e-1"))
        seen = await eventually(published, lambda seen: len(seen) == 1)
        async with db.engine.connect() as conn:
            outbox = (await conn.execute(select(tables.outbox.c.event_id))).scalars().all()
            verdict = await verify(conn, metadata)
        faulty.refuse.arm(0)
    finally:
        stop.set()
        relay.wake()
        await asyncio.wait_for(running, timeout=10)

    assert seen == [("e-1", "B0000")]
    assert outbox == ["e-1"]
    assert len(statements) == (1 if databases.kind == "postgresql" else 2), statements
    assert "FROM outbox AS earlier" in statements[-1], statements  # the hand-off's insert
    [entry] = await entries(db, after=1)
    assert (entry.sequence, entry.record_id, values(entry.old_values),
            values(entry.new_values)) == (2, "B0000", batch("B0000"), batch("B0000", quantity=2))
    assert verdict.ok, verdict.detail
