"""Inbox retention: event ids are kept long enough to absorb any copy, then pruned.

The inbox (shared.inbox) remembers every event id a service applied, so that a
redelivered or re-published copy changes nothing. JetStream itself drops re-published
copies inside the stream's duplicate window (shared.messaging); the inbox covers what
comes after it: a copy redelivered because the consumer died between its commit and its
ack, or re-published by a relay that crashed before deleting its outbox row. Past the
retention (`LOTGATE_INBOX_RETENTION_SECONDS`, never shorter than the duplicate window) no
copy is expected any more, and the rows are deleted.

Every replica runs the pruner. Each pass deletes at most `batch` of the oldest expired rows
(found through ix_inbox_processed_at); on PostgreSQL the rows one replica is deleting are
skipped by the others (SKIP LOCKED), so replicas never wait on each other and never delete
anything twice. Decisions, results and the audit trail are GMP records: nothing here, or
anywhere, deletes them.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import Table, delete, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.aio import sleep_or_stop
from shared.clock import Clock
from shared.logs import get_logger

log = get_logger(__name__)


class InboxPruner:
    """Deletes inbox rows older than `retention_s`, `batch` rows per statement."""

    def __init__(self, engine: AsyncEngine, inbox: Table, clock: Clock, *,
                 retention_s: float, every_seconds: float = 60.0, batch: int = 500) -> None:
        self._engine = engine
        self._inbox = inbox
        self._clock = clock
        self._retention = timedelta(seconds=retention_s)
        self._every_seconds = every_seconds
        self._batch = batch
        self.pruned = 0

    async def prune_once(self) -> int:
        """Delete one batch of expired rows; how many were deleted."""
        inbox = self._inbox.c
        cutoff = self._clock.now() - self._retention
        # The batch size written into the SQL: a plan made without it (PostgreSQL's
        # generic plan) would guess a tenth of the table and read all of it to delete.
        oldest = (select(inbox.event_id).where(inbox.processed_at < cutoff)
                  .order_by(inbox.processed_at).limit(literal_column(str(int(self._batch))))
                  .with_for_update(skip_locked=True))
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(self._inbox).where(
                inbox.event_id.in_(oldest.scalar_subquery())))
        deleted = max(result.rowcount or 0, 0)
        self.pruned += deleted
        return deleted

    async def prune_expired(self, stop: asyncio.Event | None = None) -> int:
        """Delete batches until no full batch is left (or `stop`); how many rows in all."""
        total = 0
        while stop is None or not stop.is_set():
            deleted = await self.prune_once()
            total += deleted
            if deleted < self._batch:
                break
            await asyncio.sleep(0)  # let calls in between two batches
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Prune every `every_seconds` until `stop`; a failed pass is repeated next time."""
        while not stop.is_set():
            try:
                deleted = await self.prune_expired(stop)
                if deleted:
                    log.info("inbox_pruned", rows=deleted)
            except Exception as exc:
                log.warning("inbox_prune_failed", error=repr(exc))
            await sleep_or_stop(stop, self._every_seconds)
