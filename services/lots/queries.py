"""Reads of the lots service: statuses (memory first), lots, decisions with their replay
(reviews and release policies: qa_queries.py). Nothing here changes anything but the
status cache.

The SQL of the reads is at the bottom of this module, apart from the functions that use
the domain (the replay of a decision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, any_, bindparam, case, literal, null, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from services.lots import repository
from services.lots.decision_record import (
    DECISION,
    StoredInputs,
    decision_content,
    inputs_from_json,
    signed_decision,
    unmet_from_json,
)
from services.lots.domain.lot import Lot
from services.lots.domain.replay import Replayed, replay, replay_difference
from services.lots.domain.rule import LotStatus, ResultFacts
from services.lots.read_model import StatusCache, StatusEntry, StoredStatus
from services.lots.records import (
    DecisionRecord,
    decision_from_row,
    lot_from_row,
    result_from_row,
)
from services.lots.tables import decisions, lot_results, lots
from shared import esign
from shared.db import one_of
from shared.errors import NotFound

_CHUNK = 500


@dataclass(frozen=True)
class Explained:
    """A decision record with its replay and what differs ("" problems: it agrees)."""

    record: DecisionRecord
    stored: StoredInputs | None  # None: the inputs cannot be read
    replayed: Replayed | None
    problems: list[str]
    signatures: list[Any] = field(default_factory=list)  # shared.esign's, verified


# -- statuses --------------------------------------------------------------------------

async def get_status(conn: AsyncConnection, *, lot_id: str, cache: StatusCache) -> StatusEntry:
    """The latest committed status of a lot, from memory or the database."""
    entry = cache.get(lot_id)
    if entry is not None:
        return entry
    found = await status_rows(conn, [lot_id])
    if not found:
        raise NotFound(f"no lot {lot_id}", field="lot_id")
    cache.put(found[0])
    return found[0]


async def get_statuses(conn: AsyncConnection, *, lot_ids: Sequence[str],
                       cache: StatusCache) -> dict[str, StatusEntry | StoredStatus]:
    """The status of each received lot among `lot_ids`: memory first, one database query
    for all the misses (a lot never received is not in the answer).

    Once the cache is full, a miss is answered from its stored reply as read
    (StoredStatus) and not put into the cache: making an entry costs many times
    answering from the row (1,000 misses of 200,000 lots on PostgreSQL: 5-7 ms from the
    stored replies, 24-29 ms making and putting an entry of each, 1-1.5 ms when all are
    held), and a pick list of cold lots would push the hot ones out. While it has room
    for them (after a start; a site whose lots all fit) the misses are held, evicting
    nothing, and the next read of them is a hit. The single read (get_status) fills the
    cache in any case."""
    found: dict[str, StatusEntry | StoredStatus] = {}
    missing = []
    for lot_id in lot_ids:
        entry = cache.get(lot_id)
        if entry is None:
            missing.append(lot_id)
        else:
            found[lot_id] = entry
    if missing and len(missing) <= cache.room:
        for entry in await status_rows(conn, missing):
            cache.put(entry)
            found[entry.lot_id] = entry
    elif missing:
        unanswered = []
        for row in await stored_statuses(conn, missing):
            if row[1] is None:  # its reply (StoredStatus's order)
                unanswered.append(row[0])
            else:
                found[row[0]] = row
        if unanswered:  # rows written without their reply
            for built in await status_rows(conn, unanswered):
                found[built.lot_id] = built
    return found


# -- lots ------------------------------------------------------------------------------

async def get_lot(conn: AsyncConnection, *, lot_id: str,
                  cache: StatusCache) -> tuple[Lot, StatusEntry]:
    lot = await repository.get_lot(conn, lot_id=lot_id)
    if lot is None:
        raise NotFound(f"no lot {lot_id}", field="lot_id")
    return lot, await get_status(conn, lot_id=lot_id, cache=cache)


async def list_lots(conn: AsyncConnection, *, status: LotStatus | None, after: str, limit: int,
                    cache: StatusCache, supplier_id: str = "", supplier_site_id: str = "",
                    material_code: str = "", received_from: datetime | None = None,
                    received_before: datetime | None = None
                    ) -> list[tuple[Lot, StatusEntry | StoredStatus]]:
    """A page of lots in id order, after the lot id `after`, each with its status: one
    query, whatever the cache holds (the page's rows carry each lot's status; a cached
    entry answers when it is as new, and a row newer than the cache refreshes it). A lot
    not held answers with its stored reply and stays out of the cache, as in
    get_statuses."""
    found = await lot_page(conn, status=status, after=after, limit=limit,
                           supplier_id=supplier_id, supplier_site_id=supplier_site_id,
                           material_code=material_code, received_from=received_from,
                           received_before=received_before)
    page: list[tuple[Lot, StatusEntry | StoredStatus]] = []
    for lot, reply in found:
        entry = cache.get(lot.lot_id)
        if entry is not None and entry.version >= lot.status_version:
            page.append((lot, entry))
        elif entry is None and reply is not None:
            page.append((lot, StoredStatus(lot.lot_id, reply, lot.status.value,
                                           lot.expiry_date, lot.retest_date)))
        else:
            entry = StatusEntry.make(lot, lot.status, lot.status_version, lot.unmet,
                                     lot.decided_at)
            cache.put(entry)
            page.append((lot, entry))
    return page


# -- decisions -------------------------------------------------------------------------

def explain(record: DecisionRecord, previous: DecisionRecord | None,
            results: Mapping[str, ResultFacts] | None = None) -> Explained:
    """A decision record with its replay: the same `transition` as the live path, given
    what the record stored (the results it names: `results`, the lot's results by id, as
    `results_of` reads them), and the previous decision's status and conditions."""
    problems: list[str] = []
    try:
        stored: StoredInputs | None = inputs_from_json(record.lot_id, record.inputs, results)
    except ValueError as error:
        stored = None
        problems.append(f"inputs cannot be replayed: {error}")
    previous_unmet = ()
    if previous is not None:
        previous_unmet = previous.unmet
        if previous.status is not record.previous_status:
            shown = record.previous_status.value if record.previous_status else None
            problems.append(f"previous_status: stored {shown}, decision "
                            f"{previous.version} says {previous.status.value}")
    elif record.version > 1:
        problems.append(f"decision {record.version - 1} is missing")
    replayed = None
    if stored is not None:
        replayed = replay(stored.inputs, record.previous_status, previous_unmet)
        difference = replay_difference(
            replayed, status=record.status, unmet=record.unmet,
            rule_status=stored.rule_status, required_tests=stored.required_tests,
            counted=stored.counted)
        if difference:
            problems.insert(0, difference)
    return Explained(record, stored, replayed, problems)


async def explain_decision(conn: AsyncConnection, *, lot_id: str, version: int) -> Explained:
    """Decision `version` of a lot (the latest when 0), with its inputs and replay."""
    rows = await decision_with_previous(conn, lot_id=lot_id, version=version)
    if not rows:
        if not version or await repository.get_lot(conn, lot_id=lot_id) is None:
            raise NotFound(f"no lot {lot_id}", field="lot_id")
    if not rows or (version and rows[-1].version != version):
        raise NotFound(f"lot {lot_id} has no decision {version}", field="version")
    previous = rows[0] if len(rows) == 2 else None
    results = await results_of(conn, lot_id=lot_id)
    [explained] = await _with_signatures(conn, [explain(rows[-1], previous, results)])
    return explained


async def list_decisions(conn: AsyncConnection, *, lot_id: str) -> list[Explained]:
    """Every decision of a lot, oldest first, each with its inputs and replay."""
    rows = await decisions_of(conn, lot_id=lot_id)
    if not rows:
        raise NotFound(f"no lot {lot_id}", field="lot_id")
    by_version = {row.version: row for row in rows}
    results = await results_of(conn, lot_id=lot_id)
    return await _with_signatures(
        conn, [explain(row, by_version.get(row.version - 1), results) for row in rows])


async def _with_signatures(conn: AsyncConnection,
                           explained: list[Explained]) -> list[Explained]:
    contents = {signed_decision(e.record.lot_id, e.record.version): decision_content(
        e.record.lot_id, e.record.version, e.record.status) for e in explained}
    found = await esign.signatures_of(conn, record_type=DECISION, contents=contents)
    for e in explained:
        e.signatures.extend(found[signed_decision(e.record.lot_id, e.record.version)])
    return explained


# -- SQL of the reads ------------------------------------------------------------------

_STATUS_COLUMNS = (lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id,
                   lots.c.material_code, lots.c.status, lots.c.status_version, lots.c.unmet,
                   lots.c.decided_at, lots.c.expiry_date, lots.c.retest_date)


def _entry(r: Any) -> StatusEntry:
    return StatusEntry(r.lot_id, r.supplier_id, r.supplier_site_id, r.material_code,
                       LotStatus(r.status), r.status_version, unmet_from_json(r.unmet),
                       r.decided_at, r.expiry_date, r.retest_date)


# The stored reply while it is the lot's current status (else NULL: read the columns).
_REPLY = case((lots.c.status_reply_version == lots.c.status_version, lots.c.status_reply),
              else_=null()).label("reply")
_STORED_COLUMNS = (lots.c.lot_id, _REPLY, lots.c.status, lots.c.expiry_date,
                   lots.c.retest_date)
_LOT_COLUMNS = tuple(c for c in lots.c if c.name not in ("status_reply", "status_reply_version"))
# On PostgreSQL the ids are one array parameter: one statement, prepared once, whatever
# their number (an IN list is written out anew for each number of ids, each id a bind).
_STORED_BY_ARRAY = select(*_STORED_COLUMNS).where(
    lots.c.lot_id == any_(bindparam("ids", type_=postgresql.ARRAY(String))))


async def stored_statuses(conn: Any, lot_ids: Sequence[str]) -> list[Any]:
    """The stored status (read_model.StoredStatus; `reply` None when the row has none for
    its current version) of each lot among `lot_ids` that exists."""
    if conn.dialect.name == "postgresql":
        return (await conn.execute(_STORED_BY_ARRAY, {"ids": list(lot_ids)})).all()
    found: list[Any] = []
    for start in range(0, len(lot_ids), _CHUNK):
        found += await conn.execute(select(*_STORED_COLUMNS).where(
            lots.c.lot_id.in_(lot_ids[start:start + _CHUNK])))
    return found


# status_rows's statement, built once: on PostgreSQL the ids are one array, as above.
_STATUSES_OF = select(*_STATUS_COLUMNS).where(one_of(lots.c.lot_id, "ids"))


async def status_rows(conn: Any, lot_ids: Sequence[str]) -> list[StatusEntry]:
    """The status of each lot among `lot_ids` that exists: one query on PostgreSQL, a
    query per 500 lots on SQLite (an IN list, a parameter per id)."""
    step = max(len(lot_ids), 1) if conn.dialect.name == "postgresql" else _CHUNK
    found: list[StatusEntry] = []
    for start in range(0, len(lot_ids), step):
        found += [_entry(r) for r in await conn.execute(
            _STATUSES_OF, {"ids": list(lot_ids[start:start + step])})]
    return found


async def material_statuses(conn: Any, material_code: str) -> list[StatusEntry]:
    """The status of every lot of a material, in id order."""
    return [_entry(r) for r in await conn.execute(
        select(*_STATUS_COLUMNS).where(lots.c.material_code == material_code)
        .order_by(lots.c.lot_id))]


async def lot_page(conn: AsyncConnection, *, status: LotStatus | None, after: str, limit: int,
                   supplier_id: str, supplier_site_id: str, material_code: str,
                   received_from: datetime | None, received_before: datetime | None
                   ) -> list[tuple[Lot, bytes | None]]:
    """A page of lots in id order after `after`, each with its stored reply (None: read
    the columns); empty filters match all. The received range is half-open: from
    `received_from` included to `received_before` excluded."""
    query = select(*_LOT_COLUMNS, _REPLY).where(lots.c.lot_id > after)
    if received_from is not None:
        query = query.where(lots.c.received_at >= received_from)
    if received_before is not None:
        query = query.where(lots.c.received_at < received_before)
    if status:
        # The status written into the SQL (a handful of values, a statement each): the plan,
        # made once for all pages, knows how rare the status is and reads a rare one
        # through ix_lots_status rather than the primary key filtered.
        query = query.where(lots.c.status == literal(status.value, literal_execute=True))
    if supplier_id:
        query = query.where(lots.c.supplier_id == supplier_id)
    if supplier_site_id:
        query = query.where(lots.c.supplier_site_id == supplier_site_id)
    if material_code:
        query = query.where(lots.c.material_code == material_code)
    return [(lot_from_row(r), r.reply)
            for r in await conn.execute(query.order_by(lots.c.lot_id).limit(limit))]


async def decisions_of(conn: AsyncConnection, *, lot_id: str) -> list[DecisionRecord]:
    """Every decision record of a lot, oldest first."""
    return [decision_from_row(r) for r in await conn.execute(
        select(decisions).where(decisions.c.lot_id == lot_id).order_by(decisions.c.version))]


async def results_of(conn: AsyncConnection, *, lot_id: str) -> dict[str, ResultFacts]:
    """The results of a lot by id, as lot_results holds them: what its decision records
    name (decision_record.inputs_to_json)."""
    return {r.result_id: result_from_row(r) for r in await conn.execute(
        select(lot_results).where(lot_results.c.lot_id == lot_id))}


async def decision_with_previous(conn: AsyncConnection, *, lot_id: str,
                                 version: int) -> list[DecisionRecord]:
    """Decision `version` of a lot (the latest when 0) and the one before it, oldest first;
    fewer when they do not exist."""
    query = select(decisions).where(decisions.c.lot_id == lot_id)
    if version:
        query = query.where(decisions.c.version.in_([version - 1, version]))
    rows = list(await conn.execute(query.order_by(decisions.c.version.desc()).limit(2)))
    return [decision_from_row(r) for r in rows[::-1]]


async def decisions_after(conn: Any, after: dict[str, int]) -> dict[str, list[DecisionRecord]]:
    """lot id -> its decisions with a version above after[lot id], oldest first."""
    found: dict[str, list[DecisionRecord]] = {}
    ids = sorted(after)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        low = min(after[lot_id] for lot_id in chunk)
        rows = await conn.execute(
            select(decisions).where(decisions.c.lot_id.in_(chunk), decisions.c.version > low)
            .order_by(decisions.c.lot_id, decisions.c.version))
        for row in rows:
            if row.version > after[row.lot_id]:
                found.setdefault(row.lot_id, []).append(decision_from_row(row))
    return found


async def versions_between(conn: Any, lot: StatusEntry, after: int,
                           before: int) -> list[StatusEntry]:
    """The decisions of `lot` with after < version < before, as entries, oldest first."""
    rows = await conn.execute(
        select(decisions).where(decisions.c.lot_id == lot.lot_id, decisions.c.version > after,
                                decisions.c.version < before)
        .order_by(decisions.c.version))
    return [decided_entry(lot, decision_from_row(row)) for row in rows]


def decided_entry(lot: Any, record: DecisionRecord) -> StatusEntry:
    """Decision `record` of `lot` (anything with the lot's fixed facts) as an entry."""
    return StatusEntry.make(lot, record.status, record.version, record.unmet,
                            record.decided_at)
