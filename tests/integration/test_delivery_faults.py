"""The outbox relay and the inbox consumer when the broker or the database fails under them.

The real relay and consumer run against a real nats-server and a real database; the
faults come from tests.support.faults, wrapped around the real JetStream context, engine
and units of work: a commit lost after the handler ran, a publish whose acknowledgement
never comes in the middle of an aggregate's events, fetches the broker refuses, a dead
letter that cannot be written, a database that refuses connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.results.v1 import events_pb2
from shared import messaging
from shared.clock import SystemClock
from shared.db import make_engine
from shared.inbox import EventConsumer, Subscription
from shared.outbox import AGGREGATE_HEADER, OutboxRelay
from shared.tables import make_tables
from shared.uow import UnitOfWork, UnitOfWorkFactory
from tests.support.databases import Databases
from tests.support.faults import FaultyEngine, FaultyJetStream, FaultyUnitOfWorkFactory
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

metadata = MetaData()
tables = make_tables(metadata)
# What the test handler does with an event: one row per application (no unique key, so
# an event applied twice shows as two rows).
applied = Table("applied", metadata,
                Column("id", Integer, primary_key=True, autoincrement=True),
                Column("event_id", String(36), nullable=False))

# A message that stays parked-for-retry is redelivered after the consumer's 5 s delay.
PARK_RETRY_WITHIN_S = 30.0


@pytest.fixture
async def engine(databases: Databases) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(await databases.create("faults"))
    async with engine.begin() as conn:  # the test's own tables, no service's
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@dataclass
class Broker:
    """A stream of the test's own on the session nats-server, read through a faulty context."""

    js: FaultyJetStream
    stream: str
    subject: str

    async def publish(self, event_id: str, data: bytes | None = None) -> None:
        payload = events_pb2.ResultRecorded(event_id=event_id).SerializeToString() \
            if data is None else data
        await self.js._js.publish(self.subject, payload, headers={"Nats-Msg-Id": event_id})

    async def read_to_end(self) -> list[tuple[str, str]]:
        """(event id, aggregate) of every message on the stream, first to last."""
        state = (await self.js.stream_info(self.stream)).state
        found = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            msg = await self.js.get_msg(self.stream, seq)
            found.append((msg.headers["Nats-Msg-Id"], msg.headers.get(AGGREGATE_HEADER, "")))
        return found


@pytest.fixture
async def broker(nats_server) -> AsyncIterator[Broker]:
    nc = await nats_server.connect()
    name = f"FAULTS_{uuid.uuid4().hex[:10].upper()}"
    subject = f"faults.{name.lower()}.event"
    js = nc.jetstream(timeout=5.0)
    await messaging.ensure_stream(js, messaging.StreamSpec(name, (subject,)),
                                  duplicate_window_s=900)
    yield Broker(FaultyJetStream(js), name, subject)
    await js.delete_stream(name)
    await nc.close()


async def applied_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(
            select(applied.c.event_id).order_by(applied.c.id))).scalars())


async def count(engine: AsyncEngine, table: Table, **where: str) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar_one()


@dataclass
class Consumer:
    """A real EventConsumer over the broker's stream, applying through faulty units of work."""

    inner: EventConsumer
    uow: FaultyUnitOfWorkFactory
    calls: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@pytest.fixture
async def consumer(engine, broker) -> AsyncIterator[Consumer]:
    """Not started: a test arms its faults first, then calls `start(consumer)`."""
    uow = FaultyUnitOfWorkFactory(engine, tables.outbox, SystemClock())
    calls: list[str] = []

    async def handle(unit: UnitOfWork, event: events_pb2.ResultRecorded) -> None:
        if event.event_id.startswith("poison"):
            raise ValueError(f"cannot apply {event.event_id}")
        calls.append(event.event_id)
        await unit.conn.execute(insert(applied).values(event_id=event.event_id))

    inner = EventConsumer(
        broker.js, uow, tables.inbox, tables.dead_letters,
        Subscription(broker.stream, broker.subject, f"d{uuid.uuid4().hex[:12]}",
                     events_pb2.ResultRecorded, handler=handle),
        max_attempts=2, ack_wait_s=30.0)
    running = Consumer(inner, uow, calls)
    yield running
    running.stop.set()
    if running.task is not None:
        await asyncio.wait_for(running.task, timeout=15)


def start(consumer: Consumer) -> None:
    consumer.task = asyncio.create_task(consumer.inner.run(consumer.stop))


async def until_applied(engine: AsyncEngine, expected: list[str],
                        within: float = 15.0) -> list[str]:
    return await eventually(lambda: applied_ids(engine), lambda ids: ids == expected,
                            within=within)


# The inbox


@pytest.mark.req("DEL-002")
async def test_an_event_whose_commit_fails_after_its_handler_is_redelivered_and_applied_once(
        engine, broker, consumer) -> None:
    consumer.uow.commit_fails.arm(1)  # the database goes away between handler and commit
    start(consumer)

    await broker.publish("e1")
    await until_applied(engine, ["e1"])
    await broker.publish("e2")
    await until_applied(engine, ["e1", "e2"])

    assert consumer.uow.commit_fails.fired == 1
    assert consumer.calls == ["e1", "e1", "e2"]  # the first application was rolled back
    assert await count(engine, tables.inbox) == 2
    assert consumer.inner.parked == 0


@pytest.mark.req("DEL-002")
async def test_a_batch_whose_commit_fails_is_redelivered_and_each_event_applied_once(
        engine, broker, consumer) -> None:
    events = [f"e{i}" for i in range(1, 6)]
    for event_id in events:  # on the stream before the consumer starts: fetched in batches
        await broker.publish(event_id)
    # A copy of e3 published again under another message id: only the inbox can tell it
    # is the same event.
    await broker.publish("e3-copy", events_pb2.ResultRecorded(event_id="e3")
                         .SerializeToString())
    consumer.uow.commit_fails.arm(1)
    start(consumer)

    # Events of a batch put back for a retry may be overtaken by later ones: the domain
    # does not depend on arrival order (see the README), only on each event counting once.
    await eventually(lambda: applied_ids(engine), lambda ids: sorted(ids) == events,
                     within=15)

    assert consumer.uow.commit_fails.fired == 1
    assert sorted(set(consumer.calls)) == events
    assert len(consumer.calls) > len(events)  # the failed batch's events were applied again
    assert await count(engine, tables.inbox) == len(events)


@pytest.mark.req("DEL-003")
async def test_a_failing_event_in_a_batch_is_parked_and_the_rest_applied_once(
        engine, broker, consumer) -> None:
    for event_id in ("e1", "poison-1", "e2"):
        await broker.publish(event_id)
    # A copy of e1 published again under another message id: only the inbox can drop it.
    await broker.publish("e1-copy", events_pb2.ResultRecorded(event_id="e1")
                         .SerializeToString())
    start(consumer)

    await until_applied(engine, ["e1", "e2"])
    await eventually(lambda: count(engine, tables.dead_letters), lambda n: n == 1)

    assert await count(engine, tables.dead_letters, event_id="poison-1") == 1
    assert sorted(set(consumer.calls)) == ["e1", "e2"]
    assert consumer.inner.parked == 1


@pytest.mark.req("DEL-003")
async def test_an_event_that_cannot_be_parked_is_redelivered_until_it_is(
        engine, broker, consumer) -> None:
    await broker.publish("garbled", b"\xff\xff not a protobuf")
    consumer.uow.begin_fails.arm(1)  # the dead letter cannot be written the first time
    start(consumer)

    await eventually(lambda: count(engine, tables.dead_letters), lambda n: n == 1,
                     within=PARK_RETRY_WITHIN_S)
    await broker.publish("e1")
    await until_applied(engine, ["e1"])

    assert consumer.uow.begin_fails.fired == 1
    assert await count(engine, tables.dead_letters, event_id="garbled") == 1
    assert consumer.inner.parked == 1


@pytest.mark.req("DEL-003")
async def test_an_unreachable_database_is_retried_not_parked(engine, broker, consumer) -> None:
    consumer.uow.begin_fails.arm(4)  # more than max_attempts: still never parked
    start(consumer)

    await broker.publish("e1")
    await until_applied(engine, ["e1"], within=PARK_RETRY_WITHIN_S)

    assert consumer.uow.begin_fails.fired == 4
    assert await count(engine, tables.dead_letters) == 0


@pytest.mark.req("DEL-002")
async def test_a_consumer_subscribes_again_when_the_broker_fails_it(
        engine, broker, consumer) -> None:
    broker.js.subscribe_fails.arm(1)  # JetStream not answering yet
    broker.js.fetch_fails.arm(4)  # then every fetch refused until the consumer starts over
    start(consumer)

    await broker.publish("e1")
    await until_applied(engine, ["e1"])

    assert broker.js.subscribe_fails.fired == 1
    assert broker.js.fetch_fails.fired == 4
    assert broker.js.subscribes == 3



@pytest.mark.req("DEL-002")
async def test_events_already_waiting_are_applied_in_batches_and_a_lone_one_on_its_own(
        engine, broker) -> None:
    batches: list[list[str]] = []

    async def handle(unit: UnitOfWork, events: list[events_pb2.ResultRecorded]) -> None:
        batches.append([e.event_id for e in events])
        for event in events:
            await unit.conn.execute(insert(applied).values(event_id=event.event_id))

    waiting = [f"e{i}" for i in range(1, 6)]
    for event_id in waiting:  # on the stream before the consumer starts
        await broker.publish(event_id)
    consumer = EventConsumer(
        broker.js, UnitOfWorkFactory(engine, tables.outbox, SystemClock()), tables.inbox,
        tables.dead_letters,
        Subscription(broker.stream, broker.subject, f"d{uuid.uuid4().hex[:12]}",
                     events_pb2.ResultRecorded, batch_handler=handle))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await until_applied(engine, waiting)
        await broker.publish("e6")
        await until_applied(engine, [*waiting, "e6"])
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)

    # How the waiting ones are split into batches depends on when they reach the consumer.
    assert [event_id for batch in batches for event_id in batch] == [*waiting, "e6"]
    assert batches[-1] == ["e6"], "a lone event is applied on its own, not held back"

# The relay


async def emit(engine: AsyncEngine, subject: str, chain: list[tuple[str, str]], *,
               relay: OutboxRelay | None = None) -> None:
    """Commit each (event id, aggregate) in a transaction of its own, in this order; with
    `relay`, as its service's units of work do (each commit handed to it)."""
    uow = UnitOfWorkFactory(engine, tables.outbox, SystemClock())
    uow.handoff = relay
    for event_id, aggregate in chain:
        async with uow() as unit:
            unit.emit(subject, aggregate, events_pb2.ResultRecorded(event_id=event_id))
            await unit.commit()


def of(aggregate: str, seen: list[tuple[str, str]]) -> list[str]:
    return [event_id for event_id, agg in seen if agg == aggregate]


COMMITTED = [("a1", "LOT-A"), ("b1", "LOT-B"), ("a2", "LOT-A"), ("b2", "LOT-B"),
             ("a3", "LOT-A"), ("a4", "LOT-A")]


@pytest.mark.req("DEL-001")
async def test_a_publish_that_fails_mid_chain_holds_back_the_rest_of_its_aggregate(
        engine, broker) -> None:
    await emit(engine, broker.subject, COMMITTED)
    broker.js.publish_fails.arm(1, when=lambda msg_id: msg_id == "a2")
    relay = OutboxRelay(engine, tables.outbox, broker.js, name="faults")

    await relay.drain_once()
    first = await broker.read_to_end()
    await relay.drain_once()
    await relay.prune()
    last = await broker.read_to_end()

    assert of("LOT-A", first) == ["a1"], "a2 failed: a3 and a4 must wait for it"
    assert of("LOT-B", first) == ["b1", "b2"], "another aggregate is not held back"
    assert of("LOT-A", last) == ["a1", "a2", "a3", "a4"]
    assert of("LOT-B", last) == ["b1", "b2"]
    assert await count(engine, tables.outbox) == 0


@pytest.mark.req("DEL-001")
async def test_a_relay_retries_a_failing_database_and_a_lost_ack_and_all_arrive_in_order(
        engine, broker, consumer) -> None:
    faulty = FaultyEngine(engine)
    faulty.refuse.arm(3)
    broker.js.publish_fails.arm(1, when=lambda msg_id: msg_id == "a2")
    broker.js.lose_ack_after_publish.arm(1, when=lambda msg_id: msg_id == "b1")
    relay = OutboxRelay(faulty, tables.outbox, broker.js, name="faults", poll_seconds=0.05)
    stop = asyncio.Event()
    await emit(engine, broker.subject, COMMITTED)
    relaying = asyncio.create_task(relay.run(stop))
    start(consumer)
    try:
        await eventually(lambda: count(engine, tables.outbox), lambda n: n == 0)
        await eventually(lambda: applied_ids(engine), lambda ids: len(ids) >= 6)
    finally:
        stop.set()
        relay.wake()
        await asyncio.wait_for(relaying, timeout=10)

    seen = await broker.read_to_end()
    done = await applied_ids(engine)
    assert faulty.refuse.fired == 3
    assert sorted(seen) == sorted(COMMITTED), "each event on the stream exactly once"
    assert of("LOT-A", seen) == ["a1", "a2", "a3", "a4"]
    assert of("LOT-B", seen) == ["b1", "b2"]
    assert sorted(done) == sorted(e for e, _ in COMMITTED), "each applied exactly once"
    assert [e for e in done if e.startswith("a")] == ["a1", "a2", "a3", "a4"]


@contextlib.asynccontextmanager
async def relaying(relay: OutboxRelay) -> AsyncIterator[None]:
    """`relay` running as its service runs it, publishing by the time this yields."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))

    async def publishing() -> bool:
        return relay.takes_handoff

    try:
        await eventually(publishing, bool)
        yield
    finally:
        stop.set()
        relay.wake()
        await asyncio.wait_for(task, timeout=10)


# The relay polls the table only this often here: what is published came by hand-off.
NEVER_S = 3600.0


@pytest.mark.req("DEL-001")
async def test_a_committed_event_is_published_without_the_relay_reading_the_outbox(
        engine, broker) -> None:
    faulty = FaultyEngine(engine)
    relay = OutboxRelay(faulty, tables.outbox, broker.js, name="faults",
                        poll_seconds=NEVER_S)
    async with relaying(relay):
        faulty.refuse.arm(1_000_000)  # the relay can no longer read the table (nor prune)
        await emit(engine, broker.subject, [("a1", "LOT-A")], relay=relay)
        seen = await eventually(broker.read_to_end, lambda seen: len(seen) == 1)
        faulty.refuse.arm(0)
        await eventually(lambda: count(engine, tables.outbox), lambda n: n == 0)

    assert seen == [("a1", "LOT-A")]


@pytest.mark.req("DEL-001")
async def test_a_handed_over_event_waits_behind_its_aggregates_failed_publish(
        engine, broker) -> None:
    broker.js.publish_fails.arm(1, when=lambda msg_id: msg_id == "a1")
    relay = OutboxRelay(engine, tables.outbox, broker.js, name="faults",
                        poll_seconds=NEVER_S)
    async with relaying(relay):
        await emit(engine, broker.subject, [("a1", "LOT-A"), ("b1", "LOT-B")], relay=relay)
        await eventually(broker.read_to_end, lambda seen: len(seen) == 1)  # b1; a1 failed
        await emit(engine, broker.subject, [("a2", "LOT-A")], relay=relay)
        seen = await eventually(broker.read_to_end, lambda seen: len(seen) == 3)
        await eventually(lambda: count(engine, tables.outbox), lambda n: n == 0)

    assert broker.js.publish_fails.fired == 1
    assert of("LOT-A", seen) == ["a1", "a2"], "a2 is published only after a1"
    assert of("LOT-B", seen) == ["b1"]


@pytest.mark.req("DEL-001")
async def test_a_handed_over_event_waits_behind_its_aggregates_event_from_another_process(
        engine, broker) -> None:
    relay = OutboxRelay(engine, tables.outbox, broker.js, name="faults",
                        poll_seconds=NEVER_S)
    async with relaying(relay):
        # Committed by another replica of the service: this relay is not told of it.
        await emit(engine, broker.subject, [("r1", "LOT-A")])
        await emit(engine, broker.subject, [("h1", "LOT-A"), ("h2", "LOT-B")], relay=relay)
        seen = await eventually(broker.read_to_end, lambda seen: len(seen) == 3)

    assert of("LOT-A", seen) == ["r1", "h1"], "h1 is published only after r1"
    assert of("LOT-B", seen) == ["h2"]


@pytest.mark.req("DEL-001")
async def test_a_handed_over_event_waits_behind_a_backlog_longer_than_a_batch(
        engine, broker) -> None:
    relay = OutboxRelay(engine, tables.outbox, broker.js, name="faults",
                        poll_seconds=NEVER_S, batch_size=2)
    backlog = [(f"r{i}", "LOT-A") for i in range(1, 6)]
    async with relaying(relay):
        await emit(engine, broker.subject, backlog)  # another replica's, not handed over
        await emit(engine, broker.subject, [("h1", "LOT-A")], relay=relay)
        seen = await eventually(broker.read_to_end, lambda seen: len(seen) == 6)

    assert of("LOT-A", seen) == [e for e, _ in backlog] + ["h1"]
