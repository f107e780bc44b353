"""WatchReleaseStatus: a per-process change feed of lot statuses, and the watch itself.

The feed hears of every status this process holds as the newest of its lot: the ones it
commits itself (StatusCache.put after each commit, no broker round trip) and the ones
every replica announces (LotStatusChanged, through an ordered push consumer on JetStream
that delivers new messages only). Applying the announcements to the StatusCache keeps
the cache of every replica coherent; the cache takes a lot's entry only when its version
is higher, which also makes the feed see each (lot, version) at most once.

A watch registers its queue on the feed first, then reads the current status (or, for
resume_from, the decisions after the versions the client saw) from the database, sends
them, and from then on sends from its queue only versions above the last one it sent
for the lot. A version that skips some (a change another replica made whose
announcement has not arrived yet) is preceded by the missing ones, read from
`decisions`: per lot, a watcher sees every version once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.lots.v1 import events_pb2
from lotgate.lots.v1 import lots_pb2 as pb
from services.lots.convert import STATUS_FROM_PROTO
from services.lots.domain import LotStatus, Unmet
from services.lots.read_model import StatusCache, StatusEntry
from services.lots.repository import status_entry, unmet_from_json
from services.lots.tables import decisions, lots
from shared import messaging, tracing
from shared.aio import sleep_or_stop
from shared.clock import Clock
from shared.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
    shown,
)
from shared.inbox import EventGate
from shared.logs import get_logger
from shared.protoconv import from_timestamp

log = get_logger(__name__)

# The most lots one watch may name (as GetReleaseStatuses).
MAX_WATCH_LOTS = 1000
# The most lots a watch of a material may resume (a material's lots in circulation).
MAX_RESUME_LOTS = 10_000
# Changes a watcher may fall behind before its stream is ended (it resumes from there).
QUEUE_SIZE = 10_000
# How long a watch started right after the process waits for the cross-replica feed.
FEED_READY_WAIT_S = 5.0
_CHUNK = 500

_LOT_COLUMNS = (lots.c.lot_id, lots.c.material_code, lots.c.supplier_id,
                lots.c.supplier_site_id, lots.c.expiry_date, lots.c.retest_date, lots.c.status,
                lots.c.status_version, lots.c.unmet, lots.c.decided_at)


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
    def watching(self, lot_ids: Iterable[str], material_code: str) -> Any:
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
            try:
                event = events_pb2.LotStatusChanged.FromString(data)
            except DecodeError:
                log.warning("change_feed_undecodable")
                continue
            rs = event.release_status
            held = self._cache.peek(rs.lot_id)
            if held is not None:
                if held.version < rs.version:
                    self._cache.put(_entry_from(held, rs))
            else:
                unheld[rs.lot_id] = max(unheld.get(rs.lot_id, 0), rs.version)
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
                for row in await lot_rows(conn, wanted):
                    if row.material_code in self._by_material or row.lot_id in self._by_lot:
                        self._cache.put(status_entry(row))


def _discard(index: dict[str, set[Watcher]], key: str, watcher: Watcher) -> None:
    group = index.get(key)
    if group is not None:
        group.discard(watcher)
        if not group:
            del index[key]


def _entry_from(held: StatusEntry, rs: pb.ReleaseStatus) -> StatusEntry:
    """The entry for an announced status of a lot held already (its fixed facts)."""
    return StatusEntry(
        held.lot_id, held.supplier_id, held.supplier_site_id, held.material_code,
        STATUS_FROM_PROTO[rs.status], rs.version,
        tuple(Unmet(u.code, u.message, u.rule) for u in rs.unmet),
        from_timestamp(rs.decided_at), held.expiry_date, held.retest_date, rs)


# -- queries ---------------------------------------------------------------------------

async def lot_rows(conn: Any, lot_ids: Sequence[str]) -> list[Any]:
    found: list[Any] = []
    for start in range(0, len(lot_ids), _CHUNK):
        chunk = list(lot_ids[start:start + _CHUNK])
        found += (await conn.execute(
            select(*_LOT_COLUMNS).where(lots.c.lot_id.in_(chunk)))).all()
    return found


async def material_rows(conn: Any, material_code: str) -> list[Any]:
    return list((await conn.execute(
        select(*_LOT_COLUMNS).where(lots.c.material_code == material_code)
        .order_by(lots.c.lot_id))).all())


async def decisions_after(conn: Any, after: dict[str, int]) -> dict[str, list[Any]]:
    """lot id -> its decisions with a version above after[lot id], oldest first."""
    found: dict[str, list[Any]] = {}
    ids = sorted(after)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        low = min(after[lot_id] for lot_id in chunk)
        rows = (await conn.execute(
            select(decisions.c.lot_id, decisions.c.version, decisions.c.status,
                   decisions.c.unmet, decisions.c.decided_at)
            .where(decisions.c.lot_id.in_(chunk), decisions.c.version > low)
            .order_by(decisions.c.lot_id, decisions.c.version))).all()
        for row in rows:
            if row.version > after[row.lot_id]:
                found.setdefault(row.lot_id, []).append(row)
    return found


async def versions_between(conn: Any, lot: StatusEntry, after: int,
                           before: int) -> list[StatusEntry]:
    """The decisions of `lot` with after < version < before, as entries, oldest first."""
    rows = (await conn.execute(
        select(decisions.c.version, decisions.c.status, decisions.c.unmet,
               decisions.c.decided_at)
        .where(decisions.c.lot_id == lot.lot_id, decisions.c.version > after,
               decisions.c.version < before)
        .order_by(decisions.c.version))).all()
    return [_decided(lot, row) for row in rows]


def _decided(lot: Any, row: Any) -> StatusEntry:
    """Decision `row` of `lot` (anything with the lot's fixed facts) as an entry."""
    return StatusEntry.make(lot, LotStatus(row.status), row.version,
                            unmet_from_json(row.unmet), row.decided_at)


# -- the watch -------------------------------------------------------------------------

@dataclass(frozen=True)
class WatchRequest:
    lot_ids: tuple[str, ...]
    material_code: str
    resume_from: dict[str, int]
    # Where each resumed lot was named (for the errors).
    resume_fields: dict[str, str]


def validate(request: pb.WatchReleaseStatusRequest) -> WatchRequest:
    """Everything that can be checked without the database (INVALID_ARGUMENT)."""
    v = Violations()
    lot_ids = list(request.lot_ids)
    material = request.material_code
    if not lot_ids and not material:
        v.add("lot_ids", f"give 1 to {MAX_WATCH_LOTS:,} lot ids, or a material_code")
    if lot_ids and material:
        v.add("material_code", "may not be given together with lot_ids")
    v.codes("lot_ids", lot_ids, max_items=MAX_WATCH_LOTS)
    if material:
        v.code("material_code", material)
    resume: dict[str, int] = {}
    fields: dict[str, str] = {}
    named = set(lot_ids)
    # Counted before any entry is looked at: a resume_from of 100,000 entries is refused
    # at the cost of one violation, not two per entry.
    limit = min(len(lot_ids), MAX_WATCH_LOTS) if lot_ids else MAX_RESUME_LOTS
    if not v.at_most("resume_from", request.resume_from, limit):
        v.raise_if_any()
    for i, seen in enumerate(request.resume_from):
        field = f"resume_from[{i}]"
        v.code(f"{field}.lot_id", seen.lot_id)
        if seen.version < 0:
            v.add(f"{field}.version", "must be 0 or the last version received")
        if seen.lot_id in resume:
            v.add(f"{field}.lot_id", f"repeats {fields[seen.lot_id]} ({shown(seen.lot_id)})")
        elif lot_ids and seen.lot_id and seen.lot_id not in named:
            v.add(f"{field}.lot_id", f"{shown(seen.lot_id)} is not among lot_ids")
        resume[seen.lot_id] = seen.version
        fields.setdefault(seen.lot_id, field)
    v.raise_if_any()
    return WatchRequest(tuple(lot_ids), material, resume, fields)


def _response(entry: StatusEntry, clock: Clock, *, snapshot: bool
              ) -> pb.WatchReleaseStatusResponse:
    return pb.WatchReleaseStatusResponse(release_status=entry.as_of(clock.now()),
                                         snapshot=snapshot)


async def watch(feed: ChangeFeed, engine: AsyncEngine, clock: Clock,
                request: pb.WatchReleaseStatusRequest
                ) -> AsyncIterator[pb.WatchReleaseStatusResponse]:
    """The stream of one WatchReleaseStatus call (see the module's docstring)."""
    wanted = validate(request)
    if not feed.ready.is_set() and not feed.closed:
        # Just started: give the feed a moment, so that other replicas' changes arrive.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.ready.wait(), FEED_READY_WAIT_S)
    with feed.watching(wanted.lot_ids, wanted.material_code) as watcher:
        # Registered first: whatever commits from now on is in the queue as well.
        last = dict(wanted.resume_from)  # lot id -> the last version the client has
        async with engine.connect() as conn:
            initial = await _initial(conn, wanted)
        for entry, snapshot in initial:
            last[entry.lot_id] = entry.version
            yield _response(entry, clock, snapshot=snapshot)
        while True:
            batch = await watcher.next_batch()
            if watcher.overflowed:
                raise Aborted(
                    f"this watch fell more than {QUEUE_SIZE} changes behind and was ended; "
                    "watch again with resume_from set to the last version received per lot")
            if watcher.closed:
                raise Unavailable("the service is stopping; watch again with resume_from "
                                  "set to the last version received per lot")
            for entry in batch:
                # A lot of the material received after the snapshot was read: all of its
                # versions are news, the first one its snapshot.
                new = entry.lot_id not in last
                seen = last.get(entry.lot_id, 0)
                if entry.version <= seen:
                    continue
                if entry.version > seen + 1:  # announced by another replica, not here yet
                    async with engine.connect() as conn:
                        missing = await versions_between(conn, entry, seen, entry.version)
                    for earlier in missing:
                        yield _response(earlier, clock, snapshot=new)
                        new = False
                last[entry.lot_id] = entry.version
                yield _response(entry, clock, snapshot=new)


async def _initial(conn: Any, wanted: WatchRequest) -> list[tuple[StatusEntry, bool]]:
    """The current status of each watched lot (snapshot), or for a resumed lot the
    decisions after the version its client saw, in order."""
    if wanted.lot_ids:
        by_id = {row.lot_id: row for row in await lot_rows(conn, wanted.lot_ids)}
        unknown = [(i, lot_id) for i, lot_id in enumerate(wanted.lot_ids) if lot_id not in by_id]
        if unknown:
            shown = ", ".join(lot_id for _, lot_id in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise NotFound(f"no lots {shown}{more}", field=f"lot_ids[{unknown[0][0]}]")
        rows = [by_id[lot_id] for lot_id in wanted.lot_ids]
    else:
        rows = await material_rows(conn, wanted.material_code)
        by_id = {row.lot_id: row for row in rows}
        others = [lot_id for lot_id in wanted.resume_from if lot_id not in by_id]
        if others:
            held = {row.lot_id: row for row in await lot_rows(conn, others)}
            for lot_id in others:
                field = f"{wanted.resume_fields[lot_id]}.lot_id"
                if lot_id not in held:
                    raise NotFound(f"no lot {lot_id}", field=field)
                raise InvalidArgument([_violation(
                    field, f"lot {lot_id} is of material {held[lot_id].material_code}, "
                    f"not {wanted.material_code}")])
    bad = [(lot_id, by_id[lot_id].status_version) for lot_id, seen in wanted.resume_from.items()
           if seen > by_id[lot_id].status_version]
    if bad:
        raise InvalidArgument([_violation(
            f"{wanted.resume_fields[lot_id]}.version",
            f"is above the current version {current} of lot {lot_id}") for lot_id, current in bad])
    behind = {lot_id: seen for lot_id, seen in wanted.resume_from.items()
              if seen < by_id[lot_id].status_version}
    changes = await decisions_after(conn, behind) if behind else {}
    initial: list[tuple[StatusEntry, bool]] = []
    for row in rows:
        if row.lot_id not in wanted.resume_from:
            initial.append((status_entry(row), True))
            continue
        initial += [(_decided(row, decided), False) for decided in changes.get(row.lot_id, ())]
    return initial


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)
