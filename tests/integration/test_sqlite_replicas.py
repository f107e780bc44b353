"""Two replicas of a service on one SQLite file: no row locks and no relay leader lock there,
so exactly-once has to come from the writes themselves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import OperationalError

from lotgate_tools.stack import NatsServer
from services.suppliers import handlers, repository
from services.suppliers.domain.qualification import Qualification, QualificationStatus
from services.suppliers.domain.sites import Site, Supplier
from services.suppliers.tables import tables
from shared import messaging, migrations
from shared.clock import ManualClock
from shared.db import make_engine
from shared.outbox import OutboxRelay
from shared.uow import UnitOfWorkFactory
from tests.support.services import ref

pytestmark = pytest.mark.integration

SUBJECT = "lotgate.suppliers.v1.relay_test"


@pytest.fixture
async def two_engines(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'replicas.db'}"
    first, second = make_engine(url), make_engine(url)
    await migrations.upgrade(first, "suppliers")
    yield first, second
    await first.dispose()
    await second.dispose()


async def add_event(engine, event_id: str) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(insert(tables.outbox).values(
            event_id=event_id, subject=SUBJECT, aggregate_id=event_id,
            event_type="test", payload=b"", created_at=datetime.now(UTC)))
        return result.inserted_primary_key[0]


async def published_ids(server: NatsServer, wanted: set[str]) -> set[str]:
    """Which of `wanted` (Nats-Msg-Id) are on the suppliers stream."""
    nc = await server.connect()
    found: set[str] = set()
    try:
        sub = await nc.jetstream().subscribe(SUBJECT, ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=1.0)
                if msg.headers and msg.headers.get("Nats-Msg-Id") in wanted:
                    found.add(msg.headers["Nats-Msg-Id"])
        except nats.errors.TimeoutError:
            pass  # the stream has been read to its end
    finally:
        await nc.close()
    return found


@pytest.mark.req("DEL-001")
async def test_a_row_id_reused_after_the_other_relay_pruned_is_still_published(
        two_engines, nats_server) -> None:
    nc = await nats_server.connect()
    try:
        js = nc.jetstream()
        await messaging.ensure_stream(js, messaging.SUPPLIERS_STREAM, duplicate_window_s=900,
                                      replicas=1)
        first, second = (OutboxRelay(engine, tables.outbox, js, name="suppliers")
                         for engine in two_engines)
        old, new = ref("old"), ref("new")
        old_id = await add_event(two_engines[0], old)
        await second.drain_once()  # published, not pruned yet
        await first.drain_once()
        await first.prune()  # the outbox is empty: SQLite hands the id out again

        assert await add_event(two_engines[0], new) == old_id
        await second.drain_once()
        await second.prune()
        await first.drain_once()
    finally:
        await nc.close()

    assert await published_ids(nats_server, {old, new}) == {old, new}


@pytest.mark.req("SUP-006")
async def test_a_qualification_both_replicas_find_due_is_warned_about_once(two_engines) -> None:
    clock = ManualClock()
    now = clock.now()
    first, second = (UnitOfWorkFactory(engine, tables.outbox, clock) for engine in two_engines)
    async with two_engines[0].begin() as conn:
        await repository.add_supplier(conn, supplier=Supplier("SUP", "Acme", "qa", now))
        await repository.add_site(conn, site=Site("SUP", "MAIN", "Plant", "Road 1", "CH", "qa",
                                                  now))
        for i in range(3):
            await repository.save_qualification(conn, previous=None, event_id=f"q{i}", new=(
                Qualification("SUP", "MAIN", f"MAT-{i}", QualificationStatus.QUALIFIED,
                              now + timedelta(days=5), 1, "audit passed", "qa", now)))

    warned = await asyncio.gather(*(handlers.warn_expiring(uow(), ahead=timedelta(days=30))
                                    for uow in (first, second)))

    async with two_engines[0].connect() as conn:
        warnings = (await conn.execute(select(tables.outbox.c.aggregate_id).where(
            tables.outbox.c.subject == messaging.QUALIFICATION_EXPIRING))).scalars().all()
    assert sorted(warned) == [0, 3]
    assert sorted(warnings) == [f"SUP/MAIN/MAT-{i}" for i in range(3)]


@pytest.mark.req("WAT-004")
async def test_what_a_transaction_read_cannot_change_under_it_until_it_commits(
        two_engines) -> None:
    """A decision reads, then writes what follows from it (the lots service reads a lot's
    qualification, then writes the lot's status). Another process on the same file must
    not slip a change in between: its write cannot start until the first transaction has
    ended (a process that will not wait, SQLite timeout 0, is refused outright)."""
    first, second = two_engines
    impatient = make_engine(second.url.render_as_string(hide_password=False),
                            statement_timeout_s=0)
    await add_event(first, ref("seed"))
    try:
        async with first.connect() as reader:
            seen = (await reader.execute(
                select(func.count()).select_from(tables.outbox))).scalar()
            with pytest.raises(OperationalError, match="locked"):
                await add_event(impatient, ref("between"))
            await reader.execute(insert(tables.outbox).values(
                event_id=ref(f"after-{seen}"), subject=SUBJECT, aggregate_id="x",
                event_type="test", payload=b"", created_at=datetime.now(UTC)))
            await reader.commit()
        await add_event(impatient, ref("concurrent"))
    finally:
        await impatient.dispose()

    async with first.connect() as conn:
        ids = (await conn.execute(select(tables.outbox.c.event_id)
                                  .order_by(tables.outbox.c.id))).scalars().all()
    # Nothing came between the transaction's read and its write.
    assert [i.split("-")[0] for i in ids] == ["seed", "after", "concurrent"]
