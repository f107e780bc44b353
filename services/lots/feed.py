"""The change feed of lot statuses, per process: every status this process holds as the
newest of its lot, handed to the watches (watch.py) that want it.

It hears of the statuses this process commits itself (StatusCache.put after each commit,
no broker round trip) and of the ones every replica announces (LotStatusChanged, through
an ordered push consumer on JetStream that delivers new messages only). Applying the
announcements to the StatusCache keeps the cache of every replica coherent; the cache
takes a lot's entry only when its version is higher, which also makes the feed see each
(lot, version) at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lots import convert, queries
from services.lots.read_model import StatusCache, StatusEntry
from shared import messaging, tracing
from shared.aio import sleep_or_stop
from shared.inbox import EventGate
from shared.logs import get_logger

log = get_logger(__name__)

# Changes a watcher may fall behind before its stream is ended (it resumes from there).
QUEUE_SIZE = 10_000


class Watcher:
    """One watch's bounded queue of entries, filled by the feed."""

    def __init__(self, lot_ids: frozenset[str], material_code: str, size: int) -> None:
        self.lot_ids = lot_ids
        self.material_code = material_code
        self._size = size
        self._items: deque[StatusEntry] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def offer(self, entry: StatusEntry) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self._size:
            self.overflowed = True  # never dropped silently: the stream ends
            self._items.clear()
        else:
            self._items.append(entry)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_batch(self) -> list[StatusEntry]:
        """What has arrived (waiting for something); empty once overflowed or closed."""
        while not self._items and not self.overflowed and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.overflowed or self.closed:
            return []
        batch = list(self._items)
        self._items.clear()
        return batch


class ChangeFeed:
    """Every newest status this process learns of, handed to the watchers that want it."""

    def __init__(self, engine: AsyncEngine, cache: StatusCache, *,
                 queue_size: int = QUEUE_SIZE, gate: EventGate | None = None) -> None:
        self._engine = engine
        # Announcements are applied only when signed by the lots service (an unverified
        # one would put a made-up status in the cache that reads answer from).
        self._gate = gate
        self._cache = cache
        self._queue_size = queue_size
        self._by_lot: dict[str, set[Watcher]] = {}
        self._by_material: dict[str, set[Watcher]] = {}
        self._js: asyncio.Future[JetStreamContext] | None = None
        # Set once the JetStream subscription runs: changes of other replicas arrive.
        self.ready = asyncio.Event()
        self.closed = False
        self.applied = 0
        cache.subscribe(self.publish)

    # -- watchers ---------------------------------------------------------------------

    def publish(self, entry: StatusEntry) -> None:
        """Hand `entry` (the newest version of its lot here) to the watchers wanting it."""
        by_lot = self._by_lot.get(entry.lot_id, ())
        by_material = self._by_material.get(entry.material_code, ())
        if not by_lot and not by_material:
            return
        with tracing.span("lots.watch push", **{"lot.id": entry.lot_id,
                                               "lot.version": entry.version,
                                               "lots.watchers": len(by_lot) + len(by_material)}):
            for watcher in by_lot:
                watcher.offer(entry)
            for watcher in by_material:
                watcher.offer(entry)

    @contextlib.contextmanager
    def watching(self, lot_ids: Iterable[str], material_code: str) -> Iterator[Watcher]:
        watcher = Watcher(frozenset(lot_ids), material_code, self._queue_size)
        if self.closed:
            watcher.close()
        for lot_id in watcher.lot_ids:
            self._by_lot.setdefault(lot_id, set()).add(watcher)
        if material_code:
            self._by_material.setdefault(material_code, set()).add(watcher)
        try:
            yield watcher
        finally:
            for lot_id in watcher.lot_ids:
                _discard(self._by_lot, lot_id, watcher)
            if material_code:
                _discard(self._by_material, material_code, watcher)

    def close(self) -> None:
        """The service is stopping: end every watch."""
        self.closed = True
        for group in (*self._by_lot.values(), *self._by_material.values()):
            for watcher in group:
                watcher.close()

    # -- other replicas ---------------------------------------------------------------

    def attach(self, js: JetStreamContext) -> None:
        """Messaging is ready (runtime hook): the feed's loop may subscribe."""
        if self._js is None:
            self._js = asyncio.get_running_loop().create_future()
        if not self._js.done():
            self._js.set_result(js)

    async def run(self, stop: asyncio.Event) -> None:
        """Background loop: apply every replica's LotStatusChanged until `stop`."""
        if self._js is None:
            self._js = asyncio.get_running_loop().create_future()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({self._js, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if stop.is_set():
            return
        js = self._js.result()
        inbound: asyncio.Queue[bytes] = asyncio.Queue()

        async def deliver(msg: Any) -> None:
            if self._gate is not None:
                refusal = self._gate.refusal(msg)
                if refusal is not None:
                    await self._gate.park(msg, refusal)
                    return
            inbound.put_nowait(msg.data)

        while not stop.is_set():
            try:
                sub = await js.subscribe(messaging.LOT_STATUS_CHANGED, cb=deliver,
                                         stream=messaging.LOTS_STREAM.name,
                                         ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.NEW)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change_feed_subscribe_retry", error=repr(exc))
                await sleep_or_stop(stop, 1.0)
                continue
            break
        else:
            return
        self.ready.set()
        log.info("change_feed_ready")
        try:
            while not stop.is_set():
                getting = asyncio.ensure_future(inbound.get())
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({getting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not getting.done():
                    getting.cancel()
                    break
                batch = [getting.result()]
                while not inbound.empty():
                    batch.append(inbound.get_nowait())
                await self._apply_until_done(batch, stop)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _apply_until_done(self, batch: Sequence[bytes], stop: asyncio.Event) -> None:
        """Apply `batch`, again after a failure (the database is away), before any later
        change: a watcher must not miss a change because a read failed once. Applying
        twice changes nothing (only higher versions are taken)."""
        backoff = 0.1
        while not stop.is_set():
            try:
                await self.apply(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change_feed_apply_failed", error=repr(exc), events=len(batch),
                            retry_in=backoff)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    async def apply(self, payloads: Sequence[bytes]) -> None:
        """Apply announced changes to the cache (which hands the newer ones to watchers)."""
        unheld: dict[str, int] = {}
        for data in payloads:
            news = convert.announced(data)
            if news is None:
                log.warning("change_feed_undecodable")
                continue
            held = self._cache.peek(news.lot_id)
            if held is not None:
                if held.version < news.version:
                    self._cache.put(StatusEntry.make(held, news.status, news.version,
                                                     news.unmet, news.decided_at))
            else:
                unheld[news.lot_id] = max(unheld.get(news.lot_id, 0), news.version)
            self.applied += 1
        if not unheld:
            return
        for lot_id, version in unheld.items():
            self._cache.raise_floor(lot_id, version)
        # A lot this process does not hold: read it only if a watcher wants it.
        wanted = [lot_id for lot_id in unheld if lot_id in self._by_lot]
        if self._by_material:
            wanted = list(unheld)
        if wanted:
            async with self._engine.connect() as conn:
                for entry in await queries.status_rows(conn, wanted):
                    if entry.material_code in self._by_material or entry.lot_id in self._by_lot:
                        self._cache.put(entry)


def _discard(index: dict[str, set[Watcher]], key: str, watcher: Watcher) -> None:
    group = index.get(key)
    if group is not None:
        group.discard(watcher)
        if not group:
            del index[key]
