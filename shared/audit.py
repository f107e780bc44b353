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
  A record whose row holds a secret (a signer) is noted with `record_values`: its new
  values are given, never read from the row, and verification compares no row with them.

Tamper evidence, in the modules beside this one (this one holds the recording hooks):
- shared.audit_chain: each entry holds its sequence number, the hash of the previous entry
  and the SHA-256 of its own canonical content; appends are serialised;
- shared.tables: on PostgreSQL the table is created with a trigger that refuses UPDATE,
  DELETE and TRUNCATE (on SQLite, UPDATE and DELETE);
- shared.audit_verify: `verify` walks the chain and names the first entry that does not
  fit, then compares each audited record's current row with its last entry, so a direct
  edit of a GMP row is named too;
- shared.audit_anchor: a rewrite of the whole chain is caught by anchors, the chain head
  published periodically and kept by another service.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Insert,
    MetaData,
    Select,
    String,
    Subquery,
    Table,
    bindparam,
    func,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.audit_chain import Along, append, canonical
from shared.db import one_of
from shared.tables import AUDIT_TRAIL, TRAIL_ONLY

_REGISTRY = "lotgate_audited"


# The kinds of GMP records a service audits


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


def record_types(metadata: MetaData) -> set[str]:
    """Every record type the trail may hold: the audited tables' and those recorded with
    `record_values` (signers: their rows hold secrets, so no row is compared)."""
    return set(audited(metadata)) | set(metadata.info.get(TRAIL_ONLY, ()))


def row_values(spec: Audited, row: Any) -> str:
    """The canonical JSON of a record's row, without the columns other records set."""
    return _values(spec, row._mapping.items())


def _values(spec: Audited, columns: Iterable[tuple[str, Any]]) -> str:
    return canonical({k: v for k, v in columns if k not in spec.derived})


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
    # Given by `record_values` (canonical JSON) instead of read from the row at commit.
    values: str | None = None
    # The unit of work inserted the record: it had no row before, so no entry either.
    created: bool = False


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


def record(uow: Any, record_type: str, *key: Any, action: str, reason: str = "",
           created: bool = False) -> None:
    """Note a create or change of a GMP record in the unit of work `uow`; its entry is
    written when the unit of work commits, with the row as it is then.

    The first note of a record in a unit of work gives the entry's action and reason (a
    QA action, say, before the decision it causes); later notes of it add nothing.
    `created`: the unit of work inserted the record's row (rows of audited records are
    never deleted, so a new row has no entry yet): its entry's old values are empty
    without reading the trail for them.
    """
    _note(uow, record_type, key, action, reason, None, created)


def record_row(uow: Any, record_type: str, row: Any, *, action: str, reason: str = "",
               created: bool = False) -> None:
    """Note a record whose row as it will be committed is in hand (its insert returned
    it, and the unit of work does not change it again): the entry's new values are that
    row's, not read from the table at commit. Otherwise as `record`."""
    spec = audited(uow.metadata)[record_type]
    _note(uow, record_type, tuple(row._mapping[column] for column in spec.key), action,
          reason, row_values(spec, row), created)


def _note(uow: Any, record_type: str, key: tuple[Any, ...], action: str, reason: str,
          values: str | None, created: bool) -> None:
    pending: list[Pending] = uow.audit_entries
    if any(p.record_type == record_type and p.key == key for p in pending):
        return
    subject, name = _who(uow.system_actor)
    pending.append(Pending(record_type, key, action, reason[:4000], subject, name,
                           _request_id(), values, created))


def record_values(uow: Any, record_type: str, record_id: str, values: dict[str, Any], *,
                  action: str, reason: str = "") -> None:
    """Note a change of a record whose row is not copied into the trail (it holds a
    secret): the entry's new values are `values`, as given, never the row."""
    subject, name = _who(uow.system_actor)
    uow.audit_entries.append(Pending(record_type, (record_id,), action, reason[:4000],
                                     subject, name, _request_id(), canonical(values)))


async def last_values(conn: AsyncConnection, metadata: MetaData, record_type: str,
                      record_id: str) -> str | None:
    """The new values of the record's last entry (None: it has none)."""
    trail = metadata.tables[AUDIT_TRAIL]
    return (await conn.execute(
        select(trail.c.new_values)
        .where(trail.c.record_type == record_type, trail.c.record_id == record_id)
        .order_by(trail.c.sequence.desc()).limit(1))).scalar()


# Keys per statement when a flush reads many records: well under the parameter limits of
# both databases, even for the three-column keys.
_CHUNK = 500


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


def _last_sequences(trail: Table) -> Subquery:
    """The last sequence of each record of `record_type` among the ids given (`record_ids`),
    from the (record_type, record_id, sequence) index."""
    return (select(trail.c.record_id, func.max(trail.c.sequence).label("sequence"))
            .where(trail.c.record_type == bindparam("record_type"),
                   one_of(trail.c.record_id, "record_ids"))
            .group_by(trail.c.record_id).subquery())


@functools.cache
def _last_values_statement(trail: Table) -> Select[Any]:
    """Each record's last entry among the ids given (`record_type`, `record_ids`): its
    last sequence, its entry by the primary key. Built once per trail."""
    last = _last_sequences(trail)
    return (select(trail.c.record_id, trail.c.new_values)
            .join_from(trail, last, trail.c.sequence == last.c.sequence))


async def _last_values_of(conn: AsyncConnection, metadata: MetaData, record_type: str,
                          record_ids: list[str]) -> dict[str, str]:
    """The new values of the last entry of each record of `record_ids` that has one, by
    record id: one statement per chunk."""
    query = _last_values_statement(metadata.tables[AUDIT_TRAIL])
    found: dict[str, str] = {}
    for chunk in _chunks(record_ids):
        found.update((row.record_id, row.new_values) for row in await conn.execute(
            query, {"record_type": record_type, "record_ids": chunk}))
    return found


@functools.cache
def _rows_statement(table: Table, key_column: str) -> Select[Any]:
    """The rows of a table with a one-column key among `ids`, built once per table."""
    return select(table).where(one_of(table.c[key_column], "ids"))


async def _current_rows(conn: AsyncConnection, spec: Audited,
                        keys: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The rows of the records with `keys` that exist, by record id: one statement per
    chunk (a row's record id is the one its key gives, as `verify` relies on too)."""
    columns = [spec.table.c[col] for col in spec.key]
    found: dict[str, Any] = {}
    for chunk in _chunks(keys):
        if len(columns) == 1:
            rows = await conn.execute(_rows_statement(spec.table, spec.key[0]),
                                      {"ids": [key[0] for key in chunk]})
        else:
            rows = await conn.execute(select(spec.table).where(tuple_(*columns).in_(chunk)))
        for row in rows:
            found[spec.record_id([row._mapping[col] for col in spec.key])] = row
    return found


def _text_key(spec: Audited) -> bool:
    """The record's id is its one key column's value as stored: the trail joins on it."""
    return len(spec.key) == 1 and isinstance(spec.table.c[spec.key[0]].type, String)


@functools.cache
def _rows_and_last_statement(table: Table, key_column: str, trail: Table) -> Select[Any]:
    """The rows of a table with a one-column text key among `ids`, each with the new values
    of its record's last entry of `record_type` as its last column (NULL: none). The ids
    are given again as `record_ids` for the trail's side (on PostgreSQL an array of each
    column's type). Built once per table."""
    last = _last_sequences(trail)
    key = table.c[key_column]
    return (select(table, trail.c.new_values)
            .outerjoin_from(table, last, last.c.record_id == key)
            .outerjoin(trail, trail.c.sequence == last.c.sequence)
            .where(one_of(key, "ids")))


async def _rows_and_last_values(conn: AsyncConnection, metadata: MetaData, spec: Audited,
                                record_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """The values of the rows of the records of `record_ids` that exist, and the new values
    of each one's last entry (None: it has none), by record id: one statement per chunk,
    for a record type with a text key (`_text_key`)."""
    query = _rows_and_last_statement(spec.table, spec.key[0], metadata.tables[AUDIT_TRAIL])
    found: dict[str, tuple[str, str | None]] = {}
    for chunk in _chunks(record_ids):
        for row in await conn.execute(query, {"record_type": spec.record_type,
                                              "ids": chunk, "record_ids": chunk}):
            record_id = spec.record_id([row._mapping[spec.key[0]]])
            found[record_id] = (_values(spec, zip(row._fields[:-1], row[:-1], strict=True)),
                                row[-1])
    return found


async def flush(conn: AsyncConnection, metadata: MetaData, pending: Sequence[Pending],
                now: datetime, *, along: Insert | None = None) -> Along | None:
    """Append the entries of `pending` to the chain, in the order they were noted. A record
    whose row is as its last entry left it (nothing changed) gets no entry, nor does one
    created and gone in the same unit of work.

    The statements do not grow with the number of records (up to `_CHUNK` of a type): per
    record type one for the rows together with their last entries (the rows alone when
    every record of the type was created here; where the key is not one text column, one
    for the rows, then one for the last entries); one for the last entries of the records
    of a type whose values are given; then the append (shared.audit_chain.append: the
    chain's lock and head, then the insert). The old values are the records' last entries
    as committed before this unit of work (empty for a created record).

    `along`: the caller's next INSERT, as for the append: a lone entry is then left to it,
    and what is returned is that statement, to run instead (None: all were inserted)."""
    if not pending:
        return None
    registry = audited(metadata)
    ids = ["/".join(str(k) for k in p.key) for p in pending]
    # The records to read from their rows, per type, in the order first noted; the types
    # of which one of them was not created here, so has a last entry to read.
    keys: dict[str, dict[str, tuple[Any, ...]]] = {}
    changed: set[str] = set()
    for p, record_id in zip(pending, ids, strict=True):
        if p.values is None:
            keys.setdefault(p.record_type, {}).setdefault(record_id, p.key)
            if not p.created:
                changed.add(p.record_type)
    current: dict[tuple[str, str], str] = {}
    last: dict[tuple[str, str], str | None] = {}
    for record_type, records in keys.items():
        spec = registry[record_type]
        if record_type in changed and _text_key(spec):
            for record_id, (values, last_values) in (await _rows_and_last_values(
                    conn, metadata, spec, list(records))).items():
                current[(record_type, record_id)] = values
                last[(record_type, record_id)] = last_values
            continue
        found = await _current_rows(conn, spec, list(records.values()))
        current.update(((record_type, record_id), row_values(spec, row))
                       for record_id, row in found.items() if record_id in records)
    # Each entry's new values: given, or its record's row (none: created and gone).
    news = [p.values if p.values is not None else current.get((p.record_type, record_id))
            for p, record_id in zip(pending, ids, strict=True)]
    wanted: dict[str, dict[str, None]] = {}
    for p, record_id, new in zip(pending, ids, news, strict=True):
        if new is not None and not p.created and (p.record_type, record_id) not in last:
            wanted.setdefault(p.record_type, {})[record_id] = None
    for record_type, records in wanted.items():
        last.update(((record_type, record_id), values) for record_id, values in
                    (await _last_values_of(conn, metadata, record_type, list(records))).items())
    rows: list[dict[str, Any]] = []
    for p, record_id, new in zip(pending, ids, news, strict=True):
        if new is None:
            continue
        old = None if p.created else last.get((p.record_type, record_id))
        if new == old:
            continue
        rows.append({"recorded_at": now, "principal_subject": p.principal_subject,
                     "principal_name": p.principal_name, "record_type": p.record_type,
                     "record_id": record_id, "action": p.action, "reason": p.reason,
                     "old_values": old, "new_values": new, "request_id": p.request_id})
    return await append(conn, metadata, rows, along=along)
