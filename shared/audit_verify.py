"""Reading and verifying the audit trail: the chain walked from its first entry, each
audited record's row against its last entry, the chain against another service's anchor.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.audit import audited, row_values
from shared.audit_chain import GENESIS, entry_hash, hashable
from shared.tables import AUDIT_TRAIL

_BATCH = 1000


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
            actual = entry_hash(hashable(values))
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
