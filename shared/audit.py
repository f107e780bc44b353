"""The audit trail: an append-only, hash-chained record of every change of a GMP record.

Every service keeps one `audit_trail` table beside its own. A write path calls `record`
inside its unit of work; the entry is written by the unit of work's commit, in the same
transaction as the change, so a change is never committed without its entry:

- who: the authenticated caller (subject and name), or the service itself
  (`lotgate:<service>`) for changes driven by events and schedules;
- what: the record type and id, the action, the reason;
- when: UTC, from the service's clock; the request id of the call, if any;
- old and new values: canonical JSON of the record's row before and after. The new values
  are read from the row itself at commit, the old ones are the new values of the record's
  previous entry, so the trail of a record is a continuous series of its rows.

Tamper evidence: each entry holds its sequence number, the hash of the previous entry and
the SHA-256 of its own canonical content. Appends are serialised (an advisory lock on
PostgreSQL, taken at commit so that it is held only for the insert; SQLite has one writer
anyway). On PostgreSQL the schema step installs a trigger that refuses UPDATE, DELETE and
TRUNCATE of the table. `verify` walks the chain and names the first entry that does not
fit, then compares each audited record's current row with its last entry, so a direct
edit of a GMP row is named too. A rewrite of the whole chain is caught by anchors: the
chain head published periodically and kept by another service.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    MetaData,
    Table,
    and_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.tables import AUDIT_TRAIL

GENESIS = "0" * 64
_APPEND_LOCK_KEY = 0x4C47_4154  # "LGAT"
_REGISTRY = "lotgate_audited"
_BATCH = 1000

@dataclass(frozen=True)
class Audited:
    """A kind of GMP record: its table, the columns its id is made of (joined by "/"),
    and the columns other records' changes set (compared with no entry of this record)."""

    record_type: str
    table: Table
    key: tuple[str, ...]
    derived: frozenset[str] = frozenset()

    def record_id(self, values: Sequence[Any]) -> str:
        return "/".join(str(v) for v in values)

    def key_values(self, record_id: str) -> list[str]:
        return record_id.split("/", len(self.key) - 1)


def register(metadata: MetaData, record_type: str, table: Table, *key: str,
             derived: Iterable[str] = ()) -> None:
    """Declare a kind of GMP record of the service (kept in the metadata's info)."""
    registry: dict[str, Audited] = metadata.info.setdefault(_REGISTRY, {})
    registry[record_type] = Audited(record_type, table,
                                    key or tuple(c.name for c in table.primary_key.columns),
                                    frozenset(derived))


def audited(metadata: MetaData) -> dict[str, Audited]:
    return metadata.info.get(_REGISTRY, {})


# Canonical JSON


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} has no canonical form")


def canonical(value: Any) -> str:
    """One text per value: sorted keys, no spaces, UTC times, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_plain)


def row_values(spec: Audited, row: Any) -> str:
    """The canonical JSON of a record's row, without the columns other records set."""
    return canonical({k: v for k, v in row._mapping.items() if k not in spec.derived})


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical content (everything but its own hash)."""
    content = {k: entry[k] for k in _HASHED}
    return hashlib.sha256(canonical(content).encode()).hexdigest()


_HASHED = ("sequence", "recorded_at", "principal_subject", "principal_name", "record_type",
           "record_id", "action", "reason", "old_values", "new_values", "request_id",
           "previous_hash")


# Recording


@dataclass
class Pending:
    """An entry to write at commit: the new values are read from the row then."""

    record_type: str
    key: tuple[Any, ...]
    action: str
    reason: str
    principal_subject: str
    principal_name: str
    request_id: str


def _who(system_actor: str) -> tuple[str, str]:
    from shared.auth import _principal

    principal = _principal.get()
    if principal is None:
        return system_actor, system_actor
    return principal.subject, principal.name or principal.subject


def _request_id() -> str:
    from shared.logs import request_context

    current = request_context.get()
    return current[0] if current else ""


def record(uow: Any, record_type: str, *key: Any, action: str, reason: str = "") -> None:
    """Note a create or change of a GMP record in the unit of work `uow`; its entry is
    written when the unit of work commits, with the row as it is then.

    The first note of a record in a unit of work gives the entry's action and reason (a
    QA action, say, before the decision it causes); later notes of it add nothing.
    """
    pending: list[Pending] = uow.audit_entries
    if any(p.record_type == record_type and p.key == key for p in pending):
        return
    subject, name = _who(uow.system_actor)
    pending.append(Pending(record_type, key, action, reason[:4000], subject, name,
                           _request_id()))


async def _current_row(conn: AsyncConnection, spec: Audited, key: Sequence[Any]) -> Any:
    condition = and_(*(spec.table.c[col] == value for col, value in zip(spec.key, key,
                                                                         strict=True)))
    return (await conn.execute(select(spec.table).where(condition))).first()


async def flush(conn: AsyncConnection, metadata: MetaData, pending: Sequence[Pending],
                now: datetime) -> int:
    """Append the entries of `pending` to the chain; returns how many were written. A
    record whose row is as its last entry left it (nothing changed) gets no entry."""
    if not pending:
        return 0
    trail = metadata.tables[AUDIT_TRAIL]
    registry = audited(metadata)
    rows: list[dict[str, Any]] = []
    for p in pending:
        spec = registry[p.record_type]
        row = await _current_row(conn, spec, p.key)
        if row is None:
            continue  # created and gone in the same unit of work: nothing to record
        record_id = spec.record_id(p.key)
        new = row_values(spec, row)
        old = (await conn.execute(
            select(trail.c.new_values)
            .where(trail.c.record_type == p.record_type, trail.c.record_id == record_id)
            .order_by(trail.c.sequence.desc()).limit(1))).scalar()
        if new == old:
            continue
        rows.append({"recorded_at": now, "principal_subject": p.principal_subject,
                     "principal_name": p.principal_name, "record_type": p.record_type,
                     "record_id": record_id, "action": p.action, "reason": p.reason,
                     "old_values": old, "new_values": new, "request_id": p.request_id})
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        # Held to the commit that follows: one append at a time, so the chain never forks.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _APPEND_LOCK_KEY})
    sequence, previous = await head(conn, metadata)
    for values in rows:
        sequence += 1
        values["sequence"] = sequence
        values["previous_hash"] = previous
        values["entry_hash"] = previous = entry_hash(_hashable(values))
    await conn.execute(trail.insert(), rows)
    return len(rows)


def _hashable(values: dict[str, Any]) -> dict[str, Any]:
    """An entry's content as hashed: the time as canonical text."""
    return {**values, "recorded_at": _plain(values["recorded_at"])}


async def head(conn: AsyncConnection, metadata: MetaData) -> tuple[int, str]:
    """The chain head: the last sequence number and its hash (0 and the genesis hash)."""
    trail = metadata.tables[AUDIT_TRAIL]
    row = (await conn.execute(select(trail.c.sequence, trail.c.entry_hash)
                              .order_by(trail.c.sequence.desc()).limit(1))).first()
    return (row.sequence, row.entry_hash) if row else (0, GENESIS)


# Verifying


class Problem(enum.Enum):
    CONTENT_HASH_MISMATCH = "CONTENT_HASH_MISMATCH"
    BROKEN_LINK = "BROKEN_LINK"
    SEQUENCE_GAP = "SEQUENCE_GAP"
    RECORD_CHANGED = "RECORD_CHANGED"
    RECORD_NOT_AUDITED = "RECORD_NOT_AUDITED"
    RECORD_MISSING = "RECORD_MISSING"
    ANCHOR_MISMATCH = "ANCHOR_MISMATCH"


@dataclass
class Verdict:
    """What `verify` found: ok, or the first problem and where."""

    entries_checked: int = 0
    head_sequence: int = 0
    head_hash: str = GENESIS
    problem: Problem | None = None
    sequence: int = 0
    record_type: str = ""
    record_id: str = ""
    detail: str = ""
    records_checked: int = 0
    anchor_sequence: int = 0
    anchor_source: str = ""
    last_entries: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(self, problem: Problem, detail: str, *, sequence: int = 0,
             record_type: str = "", record_id: str = "") -> Verdict:
        self.problem, self.detail, self.sequence = problem, detail, sequence
        self.record_type, self.record_id = record_type, record_id
        return self


async def verify(conn: AsyncConnection, metadata: MetaData, *,
                 anchor: tuple[int, str, str] | None = None,
                 check_records: bool = True) -> Verdict:
    """Walk the chain from its first entry, then compare the audited records' rows with
    their last entries, and the chain with `anchor` (sequence, hash, who kept it)."""
    verdict = await _walk(conn, metadata, anchor)
    if verdict.ok and check_records:
        await _check_records(conn, metadata, verdict)
    verdict.last_entries = {}
    return verdict


async def _walk(conn: AsyncConnection, metadata: MetaData,
                anchor: tuple[int, str, str] | None) -> Verdict:
    trail = metadata.tables[AUDIT_TRAIL]
    verdict = Verdict()
    expected, previous, after = 1, GENESIS, 0
    anchored: str | None = None
    while True:
        batch = (await conn.execute(select(trail).where(trail.c.sequence > after)
                                    .order_by(trail.c.sequence).limit(_BATCH))).all()
        for row in batch:
            values = dict(row._mapping)
            where = {"sequence": row.sequence, "record_type": row.record_type,
                     "record_id": row.record_id}
            if row.sequence != expected:
                return verdict.fail(
                    Problem.SEQUENCE_GAP,
                    f"entry {row.sequence} follows entry {expected - 1}: entries "
                    f"{expected}..{row.sequence - 1} are missing", **where)
            if row.previous_hash != previous:
                return verdict.fail(
                    Problem.BROKEN_LINK,
                    f"entry {row.sequence} names {row.previous_hash[:12]}... as the previous "
                    f"entry's hash; the previous entry hashes to {previous[:12]}...", **where)
            actual = entry_hash(_hashable(values))
            if actual != row.entry_hash:
                return verdict.fail(
                    Problem.CONTENT_HASH_MISMATCH,
                    f"entry {row.sequence}'s content hashes to {actual[:12]}..., not the "
                    f"{row.entry_hash[:12]}... it holds: it was changed after it was "
                    "written", **where)
            if anchor is not None and row.sequence == anchor[0]:
                anchored = row.entry_hash
            verdict.last_entries[(row.record_type, row.record_id)] = row.new_values
            verdict.entries_checked += 1
            verdict.head_sequence, verdict.head_hash = row.sequence, row.entry_hash
            expected, previous = row.sequence + 1, row.entry_hash
        if len(batch) < _BATCH:
            break
        after = batch[-1].sequence
    if anchor is not None and anchor[0] > 0:
        verdict.anchor_sequence, verdict.anchor_source = anchor[0], anchor[2]
        if anchored is None:
            return verdict.fail(
                Problem.ANCHOR_MISMATCH,
                f"{anchor[2]} holds an anchor at entry {anchor[0]}, but the chain ends at "
                f"entry {verdict.head_sequence}: entries were removed", sequence=anchor[0])
        if anchored != anchor[1]:
            return verdict.fail(
                Problem.ANCHOR_MISMATCH,
                f"entry {anchor[0]} hashes to {anchored[:12]}... but {anchor[2]} holds "
                f"{anchor[1][:12]}... for it: the chain was rewritten", sequence=anchor[0])
    return verdict


async def _check_records(conn: AsyncConnection, metadata: MetaData, verdict: Verdict) -> None:
    """Every audited row must be as its last entry left it, and have an entry at all."""
    seen: set[tuple[str, str]] = set()
    for spec in audited(metadata).values():
        result = await conn.stream(select(spec.table))
        async for row in result:
            record_id = spec.record_id([row._mapping[c] for c in spec.key])
            seen.add((spec.record_type, record_id))
            verdict.records_checked += 1
            last = verdict.last_entries.get((spec.record_type, record_id))
            if last is None:
                await result.close()
                verdict.fail(Problem.RECORD_NOT_AUDITED,
                             f"{spec.record_type} {record_id} has no audit entry: it was "
                             "written outside the service", record_type=spec.record_type,
                             record_id=record_id)
                return
            if row_values(spec, row) != last:
                await result.close()
                verdict.fail(Problem.RECORD_CHANGED,
                             f"{spec.record_type} {record_id} differs from its last audit "
                             f"entry: {_difference(row_values(spec, row), last)}",
                             record_type=spec.record_type, record_id=record_id)
                return
    for (record_type, record_id) in verdict.last_entries:
        if (record_type, record_id) not in seen and record_type in audited(metadata):
            verdict.fail(Problem.RECORD_MISSING,
                         f"{record_type} {record_id} has audit entries but no row: it was "
                         "deleted outside the service", record_type=record_type,
                         record_id=record_id)
            return


def _difference(current: str, recorded: str) -> str:
    now, then = json.loads(current), json.loads(recorded)
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    return ", ".join(f"{k} is {now.get(k)!r}, the trail says {then.get(k)!r}"
                     for k in changed[:5])


# Reading


@dataclass(frozen=True)
class Filters:
    record_type: str = ""
    record_id: str = ""
    principal: str = ""
    since: datetime | None = None
    until: datetime | None = None


async def page(conn: AsyncConnection, metadata: MetaData, filters: Filters, *,
               after: int, limit: int) -> list[Any]:
    """Entries after sequence `after` that match `filters`, oldest first."""
    trail = metadata.tables[AUDIT_TRAIL]
    query = select(trail).where(trail.c.sequence > after)
    if filters.record_type:
        query = query.where(trail.c.record_type == filters.record_type)
    if filters.record_id:
        query = query.where(trail.c.record_id == filters.record_id)
    if filters.principal:
        query = query.where(trail.c.principal_subject == filters.principal)
    if filters.since is not None:
        query = query.where(trail.c.recorded_at >= filters.since)
    if filters.until is not None:
        query = query.where(trail.c.recorded_at < filters.until)
    return list((await conn.execute(query.order_by(trail.c.sequence).limit(limit))).all())
