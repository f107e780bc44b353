"""WatchReleaseStatus: the stream of one watch, from the change feed (feed.py).

A watch registers its queue on the feed first, then reads the current status (or, for
resume_from, the decisions after the versions the client saw) from the database, sends
them, and from then on sends from its queue only versions above the last one it sent
for the lot. A version that skips some (a change another replica made whose
announcement has not arrived yet) is preceded by the missing ones, read from
`decisions`: per lot, a watcher sees every version once, in order. The request is
checked by the API (api.py) before it gets here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.lots.feed import QUEUE_SIZE, ChangeFeed
from services.lots.queries import (
    decided_entry,
    decisions_after,
    material_statuses,
    status_rows,
    versions_between,
)
from services.lots.read_model import StatusEntry
from shared.errors import Aborted, FieldViolation, InvalidArgument, NotFound, Unavailable

# The most lots one watch may name (as GetReleaseStatuses).
MAX_WATCH_LOTS = 1000
# The most lots a watch of a material may resume (a material's lots in circulation).
MAX_RESUME_LOTS = 10_000
# How long a watch started right after the process waits for the cross-replica feed.
FEED_READY_WAIT_S = 5.0


@dataclass(frozen=True)
class WatchRequest:
    lot_ids: tuple[str, ...]
    material_code: str
    resume_from: dict[str, int]
    # Where each resumed lot was named (for the errors).
    resume_fields: dict[str, str]


async def watch(feed: ChangeFeed, engine: AsyncEngine,
                wanted: WatchRequest) -> AsyncIterator[tuple[StatusEntry, bool]]:
    """The stream of one WatchReleaseStatus call (see the module's docstring): each
    status to send, and whether it is the lot's snapshot."""
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
            yield entry, snapshot
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
                        yield earlier, new
                        new = False
                last[entry.lot_id] = entry.version
                yield entry, new


async def _initial(conn: Any, wanted: WatchRequest) -> list[tuple[StatusEntry, bool]]:
    """The current status of each watched lot (snapshot), or for a resumed lot the
    decisions after the version its client saw, in order."""
    if wanted.lot_ids:
        by_id = {entry.lot_id: entry for entry in await status_rows(conn, wanted.lot_ids)}
        unknown = [(i, lot_id) for i, lot_id in enumerate(wanted.lot_ids) if lot_id not in by_id]
        if unknown:
            shown = ", ".join(lot_id for _, lot_id in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise NotFound(f"no lots {shown}{more}", field=f"lot_ids[{unknown[0][0]}]")
        rows = [by_id[lot_id] for lot_id in wanted.lot_ids]
    else:
        rows = await material_statuses(conn, wanted.material_code)
        by_id = {row.lot_id: row for row in rows}
        others = [lot_id for lot_id in wanted.resume_from if lot_id not in by_id]
        if others:
            held = {entry.lot_id: entry for entry in await status_rows(conn, others)}
            for lot_id in others:
                field = f"{wanted.resume_fields[lot_id]}.lot_id"
                if lot_id not in held:
                    raise NotFound(f"no lot {lot_id}", field=field)
                raise InvalidArgument([_violation(
                    field, f"lot {lot_id} is of material {held[lot_id].material_code}, "
                    f"not {wanted.material_code}")])
    bad = [(lot_id, by_id[lot_id].version) for lot_id, seen in wanted.resume_from.items()
           if seen > by_id[lot_id].version]
    if bad:
        raise InvalidArgument([_violation(
            f"{wanted.resume_fields[lot_id]}.version",
            f"is above the current version {current} of lot {lot_id}") for lot_id, current in bad])
    behind = {lot_id: seen for lot_id, seen in wanted.resume_from.items()
              if seen < by_id[lot_id].version}
    changes = await decisions_after(conn, behind) if behind else {}
    initial: list[tuple[StatusEntry, bool]] = []
    for row in rows:
        if row.lot_id not in wanted.resume_from:
            initial.append((row, True))
            continue
        initial += [(decided_entry(row, decided), False) for decided in changes.get(row.lot_id, ())]
    return initial


def _violation(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)
