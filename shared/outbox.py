"""The transactional outbox table and the relay that publishes its rows to JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import Table, delete, func, insert, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import tracing
from shared.aio import sleep_or_stop
from shared.crash import crash_point
from shared.db import one_of
from shared.logs import get_logger
from shared.signing import EventSigner

log = get_logger(__name__)

EVENT_TYPE_HEADER = "Lotgate-Event-Type"
AGGREGATE_HEADER = "Lotgate-Aggregate-Id"

# Published rows are deleted at least this often (and whenever a batch's worth piles up).
_PRUNE_EVERY_S = 0.25


class OutboxRelay:
    """Publishes committed outbox rows with Nats-Msg-Id = event id, then deletes them.

    A crash between the broker's ack and the delete re-publishes the row on restart;
    JetStream drops the copy inside its duplicate window and consumers' inboxes after it.
    Events of one aggregate are published one after another, each only once the
    previous one is acknowledged; different aggregates go concurrently.

    Each event is signed (shared.signing) when it is published, not when its row is
    written: the private key is needed by the relay alone, the outbox schema stays as it
    is, and a rotated key applies at once to every event not yet out. A row in the outbox
    is trusted as much as the rest of the service's database it was committed with.
    """

    def __init__(self, engine: AsyncEngine, table: Table, js: JetStreamContext, *,
                 name: str, poll_seconds: float = 0.5, batch_size: int = 500,
                 publish_timeout_s: float = 5.0, signer: EventSigner | None = None) -> None:
        self._engine = engine
        # Every service signs; None only where a test drives a relay on its own.
        self._signer = signer
        self._table = table
        self._delete = delete(table).where(one_of(table.c.event_id, "ids"))
        self._js = js
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._publish_timeout_s = publish_timeout_s
        # Only one relay of a service publishes at a time (replicas share the database), so
        # events of one aggregate leave in the order they were committed. The lock is named
        # after the service, in case several services ever share one database.
        self._lock_key = zlib.crc32(f"lotgate-outbox-{name}".encode())
        self._wake = asyncio.Event()
        # Event ids published but not deleted yet (an ordered set: dict keys). Event ids,
        # not row ids: SQLite hands the id of a deleted row to the next insert, and with
        # two relays on one file (no leader lock there) the other relay may have deleted
        # a row this one still counts as published; skipping and then deleting a new row
        # that got its id back would lose that event.
        self._unpruned: dict[str, None] = {}
        self._pruned_at = time.monotonic()
        # Rows this process committed, handed over with the ids of their aggregate's
        # earlier rows (see hand_off); only while this relay is the publisher.
        self._handed: list[tuple[Mapping[str, Any], list[str]]] = []
        self._publishing = False
        self._selected_at = float("-inf")
        self.published = 0

    def wake(self) -> None:
        """Called after a local commit that wrote events, so they leave without waiting a
        poll: the table is read at once."""
        self._selected_at = float("-inf")
        self._wake.set()

    @property
    def takes_handoff(self) -> bool:
        """Whether committed rows may be handed over (this process's relay publishes)."""
        return self._publishing

    @functools.cache  # noqa: B019 (one relay per process, one dialect)
    def handoff_insert(self, dialect_name: str) -> Any:
        """The outbox insert for rows to hand over: each row comes back with the event ids
        of its aggregate's rows still in the outbox before it (JSON), as the writing
        transaction sees them, whichever process wrote them."""
        table, earlier = self._table, self._table.alias("earlier")
        aggregate = func.json_agg if dialect_name == "postgresql" else func.json_group_array
        # At most one more than a batch: an aggregate with a backlog that long is left to
        # the reads of the table anyway (see _publish_handed), and no insert pays for it.
        ids = select(earlier.c.event_id).where(
            earlier.c.aggregate_id == literal_column(f"{table.name}.aggregate_id"),
            earlier.c.id < literal_column(f"{table.name}.id"),
        ).order_by(earlier.c.id).limit(self._batch_size + 1).subquery()
        before = select(aggregate(ids.c.event_id)).scalar_subquery()
        return insert(table).returning(table.c.event_id, before)

    def hand_off(self, rows: Sequence[Mapping[str, Any]], before: Mapping[str, Any]) -> None:
        """Rows just committed (written with handoff_insert; `before`: event id -> what it
        returned), to publish without reading them back. A row whose aggregate has an
        earlier row not yet published by this relay is left to the next read of the
        table instead, so events of one aggregate still leave in order."""
        if self._publishing:
            if len(self._handed) + len(rows) > self._batch_size:
                self._handed.clear()  # a backlog: the next read of the table takes them
                self._selected_at = float("-inf")
            else:
                self._handed += [(row, _ids(before.get(row["event_id"]))) for row in rows]
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                if self._engine.dialect.name == "postgresql":
                    await self._run_as_leader(stop)
                else:
                    await self._loop(None, stop)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox_relay_error", error=repr(exc), retry_in=backoff)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run_as_leader(self, stop: asyncio.Event) -> None:
        async with self._engine.connect() as lock_conn:
            while not stop.is_set():
                got = (await lock_conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": self._lock_key})).scalar()
                await lock_conn.commit()
                if got:
                    try:
                        await self._loop(lock_conn, stop)
                    finally:
                        await lock_conn.execute(
                            text("SELECT pg_advisory_unlock(:k)"), {"k": self._lock_key})
                        await lock_conn.commit()
                    return
                await sleep_or_stop(stop, self._poll_seconds * 4)

    async def _loop(self, lock_conn: AsyncConnection | None, stop: asyncio.Event) -> None:
        """Drain whenever woken (the runtime also wakes it to stop), else every poll."""
        self._handed.clear()
        self._selected_at = float("-inf")
        self._publishing = True
        try:
            await self._publish_until_stopped(lock_conn, stop)
        finally:
            self._publishing = False
            self._handed.clear()

    async def _publish_until_stopped(self, lock_conn: AsyncConnection | None,
                                     stop: asyncio.Event) -> None:
        checked = time.monotonic()
        while not stop.is_set():
            self._wake.clear()
            # Rows handed over are published as they are; the table is read when woken
            # and at least every poll all the same (other processes' rows, anything not
            # handed over or held back).
            if (time.monotonic() - self._selected_at >= self._poll_seconds
                    or not await self._publish_handed()):
                if await self.drain_once() >= self._batch_size:
                    self._selected_at = float("-inf")  # more may wait: read on at once
                    continue
            if lock_conn is not None and time.monotonic() - checked >= self._poll_seconds:
                # Proves the session (and so the lock) is still alive.
                await lock_conn.execute(text("SELECT 1"))
                await lock_conn.commit()
                checked = time.monotonic()
            wait = self._selected_at + self._poll_seconds - time.monotonic()
            if self._unpruned:  # published rows are deleted without waiting for a poll
                wait = min(wait, _PRUNE_EVERY_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._wake.wait()

    async def drain_once(self) -> int:
        """Publish one batch of pending rows; returns how many were published."""
        if len(self._unpruned) >= self._batch_size:
            await self.prune()
        self._selected_at = time.monotonic()
        self._handed.clear()  # committed, so read back below (or published already)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(self._table).order_by(self._table.c.id)
                .limit(self._batch_size + len(self._unpruned))
            )).mappings().all()
            await conn.rollback()
        rows = [row for row in rows if row["event_id"] not in self._unpruned]
        sent = await self._publish(rows)
        if self._unpruned and (not rows or time.monotonic() - self._pruned_at > _PRUNE_EVERY_S):
            await self.prune()
        return sent

    async def _publish_handed(self) -> bool:
        """Publish the rows handed over; False (publishing none) when one of them has an
        earlier row of its aggregate that this relay has not published and that is not
        handed over before it: then the table is read, which orders them all."""
        handed, self._handed = self._handed, []
        ahead: set[str] = set()
        rows = []
        for row, before in handed:
            if row["event_id"] in self._unpruned:
                continue  # read from the table and published meanwhile
            if len(before) > self._batch_size or any(
                    e not in self._unpruned and e not in ahead for e in before):
                return False
            ahead.add(row["event_id"])
            rows.append(row)
        await self._publish(rows)
        if len(self._unpruned) >= self._batch_size or (
                self._unpruned and time.monotonic() - self._pruned_at > _PRUNE_EVERY_S):
            await self.prune()
        return True

    async def _publish(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Publish `rows` (in outbox order), each aggregate's in order; how many went out."""
        if not rows:
            return 0
        by_aggregate: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            by_aggregate[row["aggregate_id"]].append(row)
        done = await asyncio.gather(*(self._publish_in_order(chain)
                                      for chain in by_aggregate.values()))
        for ids in done:
            self._unpruned.update(dict.fromkeys(ids))
            self.published += len(ids)
        return sum(len(ids) for ids in done)

    async def prune(self) -> None:
        """Delete the rows published so far, in one statement.

        Deleting in batches rather than after every publish saves a write transaction
        (and its fsync) per event; a row published but not yet deleted when the process
        dies is published again on restart and dropped by JetStream's de-duplication.
        """
        self._pruned_at = time.monotonic()
        if not self._unpruned:
            return
        event_ids = list(self._unpruned)
        crash_point("after_publish_before_outbox_delete")
        async with self._engine.begin() as conn:
            await conn.execute(self._delete, {"ids": event_ids})
        for event_id in event_ids:
            self._unpruned.pop(event_id, None)

    async def _publish_in_order(self, chain: list[Any]) -> list[str]:
        done: list[str] = []
        for row in chain:
            headers = {
                "Nats-Msg-Id": row["event_id"],
                EVENT_TYPE_HEADER: row["event_type"],
                AGGREGATE_HEADER: row["aggregate_id"],
            }
            try:
                with tracing.publish_span(row["subject"], row["event_id"],
                                          row.get("trace_context"), headers):
                    if self._signer is not None:
                        headers.update(self._signer.headers(row["subject"], row["event_id"],
                                                            row["payload"]))
                    await self._js.publish(
                        row["subject"], row["payload"], timeout=self._publish_timeout_s,
                        headers=headers)
            except Exception as exc:
                # Keep the rest of this aggregate's events back so they stay in order.
                log.warning("outbox_publish_failed", event_id=row["event_id"],
                            subject=row["subject"], error=repr(exc))
                break
            done.append(row["event_id"])
        return done


def _ids(returned: Any) -> list[str]:
    """The earlier event ids handoff_insert returned: a list (PostgreSQL), JSON text
    (SQLite), or None (no earlier row)."""
    if returned is None:
        return []
    if isinstance(returned, str):
        returned = json.loads(returned)
    return [str(event_id) for event_id in returned]
