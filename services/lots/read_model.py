"""The answer to "may I pick this lot?", kept in memory for the warehouse's hot path.

Entries are written after each commit by the process that decided, and filled from the
database on a miss; an entry only ever replaces an older version. GetReleaseStatus is
the most frequent call by far, and a database round trip per call would cap it well
below what a warehouse sends (see the benchmark in the README).

Several replicas stay coherent through the change feed (services/lots/feed.py): every
process applies the LotStatusChanged events of all replicas here, an entry is only ever
replaced by a higher version, and a version announced for a lot this process does not
hold raises a floor below which a concurrent (stale) fill from the database is refused.
Subscribers (the feed) hear of every entry that became the newest one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, NamedTuple

from services.lots.domain.lifecycle import moved_by_time
from services.lots.domain.rule import LotStatus, Unmet


@dataclass(frozen=True)
class StatusEntry:
    lot_id: str
    # Who supplied what: fixed at receipt, so the decision path can use them unlocked.
    supplier_id: str
    supplier_site_id: str
    material_code: str
    status: LotStatus
    version: int
    unmet: tuple[Unmet, ...]
    decided_at: datetime
    expiry_date: date
    # As of this entry's decision; a change made by another replica reaches this process
    # with its next decision (the scheduler moves the lot at the date in any case).
    retest_date: date | None
    # The API's answer for this entry, made once (convert.release_status_of): the hot
    # path answers from memory without building it again.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def make(cls, lot: Any, status: LotStatus, version: int, unmet: tuple[Unmet, ...],
             decided_at: datetime) -> StatusEntry:
        """An entry for `lot` (a domain Lot, an entry, anything with the lot's fixed facts)."""
        return cls(lot.lot_id, lot.supplier_id, lot.supplier_site_id, lot.material_code,
                   status, version, unmet, decided_at, lot.expiry_date, lot.retest_date)

    @property
    def key(self) -> tuple[str, str, str]:
        """(supplier, site, material): the qualification this lot is decided by."""
        return (self.supplier_id, self.supplier_site_id, self.material_code)

    def as_of(self, now: datetime) -> StatusEntry:
        """The status to answer at `now`: a usable lot whose expiry or retest date has
        passed since its decision is not usable (lifecycle.moved_by_time)."""
        moved = moved_by_time(self.status, self.expiry_date, self.retest_date, now)
        if moved is None:
            return self
        status, why = moved
        return replace(self, status=status, unmet=(*self.unmet, why), memo={})


class StoredStatus(NamedTuple):
    """A lot's status as the database keeps it for reads (tables.lots.status_reply): the
    answer as decided, serialized (lotgate.lots.v1.ReleaseStatus), and the facts time may
    change it by (StatusEntry.as_of). A batch read answers the lots it does not hold with
    these as they come from the database, without parsing them or filling the cache (see
    queries.get_statuses). Rows of the status query have these attributes."""

    lot_id: str
    reply: bytes
    status: str  # a LotStatus value
    expiry_date: date
    retest_date: date | None


# What one held lot costs the process in resident memory: the entry, its memoized proto
# (convert.release_status_of), the key and the OrderedDict node. Measured as RSS (with
# tracemalloc off: it inflates RSS, and it does not see the proto, which lives in upb's
# arenas; tracemalloc counts 0.79-0.81 KB of Python objects per entry), CPython 3.11,
# protobuf upb, over 10,000 and 100,000 entries put into a StatusCache: 1.64-1.66 KB
# for a lot with nothing unmet, 2.34-2.37 KB with one to three unmet requirements. In
# the lots process, reading 39,000 distinct lots (half of each) added 71 MB, 1.82 KB
# each. Rounded up to the unmet case:
ENTRY_BYTES = 2560
# A floor (raise_floor): a lot id and its version in an OrderedDict, 0.16-0.19 KB measured.
FLOOR_BYTES = 256


class StatusCache:
    """A bounded LRU map from lot id to its latest committed status."""

    @classmethod
    def for_budget(cls, megabytes: float) -> StatusCache:
        """A cache whose entries and floors together stay within `megabytes` of memory
        (LOTGATE_STATUS_CACHE_MB): as many entries as the budget holds at ENTRY_BYTES
        each with a floor (FLOOR_BYTES) beside each, at least one."""
        entries = max(1, int(megabytes * 1024 * 1024) // (ENTRY_BYTES + FLOOR_BYTES))
        return cls(max_entries=entries, max_floors=entries)

    def __init__(self, max_entries: int = 200_000, max_floors: int = 100_000) -> None:
        if max_entries < 1 or max_floors < 1:
            raise ValueError("a status cache holds at least one entry and one floor")
        self._entries: OrderedDict[str, StatusEntry] = OrderedDict()
        self._max = max_entries
        # lot id -> a version known to be committed, for lots not held (see raise_floor).
        self._floors: OrderedDict[str, int] = OrderedDict()
        self._max_floors = max_floors
        self._subscribers: list[Callable[[StatusEntry], None]] = []

    def subscribe(self, callback: Callable[[StatusEntry], None]) -> None:
        """Call `callback` (synchronously) with every entry that becomes a lot's newest."""
        self._subscribers.append(callback)

    def raise_floor(self, lot_id: str, version: int) -> None:
        """`version` of a lot is committed: never take an older one (a fill that read the
        database before that commit). A held entry is left to the caller to replace."""
        held = self._entries.get(lot_id)
        if held is not None and held.version >= version:
            return
        if self._floors.get(lot_id, 0) < version:
            self._floors[lot_id] = version
            self._floors.move_to_end(lot_id)
            while len(self._floors) > self._max_floors:
                self._floors.popitem(last=False)

    def peek(self, lot_id: str) -> StatusEntry | None:
        """The entry held for a lot, without touching its recency."""
        return self._entries.get(lot_id)

    def get(self, lot_id: str) -> StatusEntry | None:
        entry = self._entries.get(lot_id)
        if entry is not None:
            self._entries.move_to_end(lot_id)
        return entry

    def put(self, entry: StatusEntry) -> bool:
        """Hold `entry` unless a version as new is held (or known); True when taken."""
        held = self._entries.get(entry.lot_id)
        if held is not None and held.version >= entry.version:
            return False
        if self._floors:
            floor = self._floors.get(entry.lot_id)
            if floor is not None:
                if floor > entry.version:
                    return False
                del self._floors[entry.lot_id]
        self._entries[entry.lot_id] = entry
        self._entries.move_to_end(entry.lot_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        for callback in self._subscribers:
            callback(entry)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def max_entries(self) -> int:
        return self._max

    @property
    def room(self) -> int:
        """How many more entries it takes before it evicts one."""
        return self._max - len(self._entries)

    @property
    def max_floors(self) -> int:
        return self._max_floors

    @property
    def floors(self) -> int:
        """How many floors are held (lots known only by a committed version)."""
        return len(self._floors)
