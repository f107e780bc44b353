"""The answer to "may I pick this lot?", kept in memory for the warehouse's hot path.

Entries are written after each commit by the process that decided, and filled from the
database on a miss; an entry only ever replaces an older version. GetReleaseStatus is
the most frequent call by far, and a database round trip per call would cap it well
below what a warehouse sends (see the benchmark in the README).

This cache is exact while one lots process decides. Several replicas (a later step)
must also invalidate it from the status-changed events.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots.convert import release_status
from services.lots.domain import LotStatus, Unmet, expired_on_read


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
    proto: pb.ReleaseStatus

    @classmethod
    def make(cls, row: Any, status: LotStatus, version: int, unmet: tuple[Unmet, ...],
             decided_at: datetime) -> StatusEntry:
        """An entry for the lot in `row` (any row with the lot's fixed columns)."""
        return cls(row.lot_id, row.supplier_id, row.supplier_site_id, row.material_code,
                   status, version, unmet, decided_at, row.expiry_date,
                   release_status(row.lot_id, status, version, unmet, decided_at))

    @property
    def key(self) -> tuple[str, str, str]:
        """(supplier, site, material): the qualification this lot is decided by."""
        return (self.supplier_id, self.supplier_site_id, self.material_code)

    def as_of(self, now: datetime) -> pb.ReleaseStatus:
        """The status to answer at `now`: a released lot past its expiry is not released."""
        if not expired_on_read(self.status, self.expiry_date, now):
            return self.proto
        expired = Unmet("LOT_EXPIRED", f"the lot expired on {self.expiry_date.isoformat()}",
                        "21 CFR 211.87; ICH Q7 7.5")
        return release_status(self.lot_id, LotStatus.QUARANTINE, self.version,
                              (*self.unmet, expired), self.decided_at)


class StatusCache:
    """A bounded LRU map from lot id to its latest committed status."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: OrderedDict[str, StatusEntry] = OrderedDict()
        self._max = max_entries

    def get(self, lot_id: str) -> StatusEntry | None:
        entry = self._entries.get(lot_id)
        if entry is not None:
            self._entries.move_to_end(lot_id)
        return entry

    def put(self, entry: StatusEntry) -> None:
        held = self._entries.get(entry.lot_id)
        if held is not None and held.version >= entry.version:
            return
        self._entries[entry.lot_id] = entry
        self._entries.move_to_end(entry.lot_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
