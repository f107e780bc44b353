"""Inbox retention: rows past the retention are pruned in bounded batches, recent ones are
kept, and a copy of an event applied inside the retention is still absorbed exactly once.

A real EventConsumer over a stream of the test's own on the session nats-server and a real
database; time is a ManualClock shared by the consumer (which stamps inbox rows) and the
pruner, so "a week later" needs no waiting.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.results.v1 import events_pb2
from shared import messaging
from shared.clock import ManualClock
from shared.config import settings_for
from shared.db import make_engine
from shared.inbox import EventConsumer, Subscription
from shared.inbox_retention import InboxPruner
from shared.tables import make_tables
from shared.uow import UnitOfWork, UnitOfWorkFactory
from tests.support.databases import Databases
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

metadata = MetaData()
tables = make_tables(metadata)
# One row per application of an event: an event applied twice shows as two rows.
applied = Table("applied", metadata,
                Column("id", Integer, primary_key=True, autoincrement=True),
                Column("event_id", String(36), nullable=False))

RETENTION = timedelta(days=7)


@pytest.fixture
async def engine(databases: Databases) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(await databases.create("retention"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def inbox_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return sorted((await conn.execute(select(tables.inbox.c.event_id))).scalars())


async def applied_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(
            select(applied.c.event_id).order_by(applied.c.id))).scalars())


def pruner(engine: AsyncEngine, clock: ManualClock, batch: int = 500) -> InboxPruner:
    return InboxPruner(engine, tables.inbox, clock, retention_s=RETENTION.total_seconds(),
                       batch=batch)


@pytest.mark.req("DEL-002")
async def test_rows_past_the_retention_are_pruned_and_a_recent_copy_is_still_absorbed(
        engine, nats_server) -> None:
    clock = ManualClock()
    nc = await nats_server.connect()
    name = f"RETENTION_{uuid.uuid4().hex[:10].upper()}"
    subject = f"retention.{name.lower()}.event"
    js = nc.jetstream(timeout=5.0)
    await messaging.ensure_stream(js, messaging.StreamSpec(name, (subject,)),
                                  duplicate_window_s=900)

    async def handle(unit: UnitOfWork, event: events_pb2.ResultRecorded) -> None:
        await unit.conn.execute(insert(applied).values(event_id=event.event_id))

    consumer = EventConsumer(
        js, UnitOfWorkFactory(engine, tables.outbox, clock), tables.inbox,
        tables.dead_letters,
        Subscription(name, subject, f"d{uuid.uuid4().hex[:12]}", events_pb2.ResultRecorded,
                     handler=handle))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def publish(msg_id: str, event_id: str) -> None:
        # Under another message id, a copy passes the broker: only the inbox can drop it.
        await js.publish(subject, events_pb2.ResultRecorded(event_id=event_id)
                         .SerializeToString(), headers={"Nats-Msg-Id": msg_id})

    try:
        await publish("old", "old")
        await eventually(lambda: applied_ids(engine), lambda ids: ids == ["old"], within=15)
        clock.advance(RETENTION - timedelta(hours=1))
        await publish("recent", "recent")
        await eventually(lambda: applied_ids(engine), lambda ids: ids == ["old", "recent"],
                         within=15)
        clock.advance(timedelta(hours=2))  # "old" is past the retention, "recent" is not

        assert await pruner(engine, clock).prune_expired() == 1
        assert await inbox_ids(engine) == ["recent"]

        # A copy of the recent event, and then a new event: the copy changes nothing.
        await publish("recent-copy", "recent")
        await publish("next", "next")
        await eventually(lambda: inbox_ids(engine), lambda ids: ids == ["next", "recent"],
                         within=15)
        assert await applied_ids(engine) == ["old", "recent", "next"]
        assert consumer.parked == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        await js.delete_stream(name)
        await nc.close()


async def test_each_pass_deletes_a_bounded_batch_and_replicas_prune_side_by_side(
        engine) -> None:
    clock = ManualClock()
    start = clock.now()
    async with engine.begin() as conn:
        await conn.execute(insert(tables.inbox), [
            {"event_id": f"old-{i:04d}", "subject": "s", "processed_at": start}
            for i in range(1200)])
        await conn.execute(insert(tables.inbox), [
            {"event_id": f"new-{i:04d}", "subject": "s",
             "processed_at": start + timedelta(days=6)} for i in range(30)])
    clock.advance(RETENTION + timedelta(minutes=1))

    one = pruner(engine, clock, batch=500)
    assert await one.prune_once() == 500  # one pass, one batch
    assert len(await inbox_ids(engine)) == 730

    # Two replicas at once: together they delete the rest of the expired rows, once.
    other = pruner(engine, clock, batch=100)
    deleted = await asyncio.gather(one.prune_expired(), other.prune_expired())
    assert sum(deleted) == 700
    assert await inbox_ids(engine) == [f"new-{i:04d}" for i in range(30)]


def test_a_retention_shorter_than_the_duplicate_window_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="LOTGATE_INBOX_RETENTION_SECONDS"):
        settings_for("lots", stream_duplicate_window_seconds=900, inbox_retention_seconds=600)
    settings = settings_for("lots", stream_duplicate_window_seconds=900,
                            inbox_retention_seconds=900)
    assert settings.inbox_retention_seconds == 900
