"""The audit trail's hash chain: canonical content, entry hashes, the head, the append.

Each entry holds its sequence number, the hash of the previous entry and the SHA-256 of
its own canonical content (`entry_hash`). Appends are serialised (an advisory lock on
PostgreSQL, taken at commit so that it is held only for the insert; SQLite has one writer
anyway), so the chain never forks. On PostgreSQL the lock and the head read are one round
trip: `lotgate_audit_chain_head`, a function the schema installs (shared.tables), takes the
lock and then reads the head, as of after the lock was granted; a lone entry can then be
inserted by the statement that follows it in the transaction (`Along`). What goes into an
entry is decided by the recording hooks (shared.audit); walking the chain back is
shared.audit_verify.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Insert, MetaData, Row, Select, Table, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.tables import AUDIT_TRAIL

GENESIS = "0" * 64
_APPEND_LOCK_KEY = 0x4C47_4154  # "LGAT"


# Canonical JSON and hashes


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


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical content (everything but its own hash)."""
    content = {k: entry[k] for k in _HASHED}
    return hashlib.sha256(canonical(content).encode()).hexdigest()


_HASHED = ("sequence", "recorded_at", "principal_subject", "principal_name", "record_type",
           "record_id", "action", "reason", "old_values", "new_values", "request_id",
           "previous_hash")


def hashable(values: dict[str, Any]) -> dict[str, Any]:
    """An entry's content as hashed: the time as canonical text."""
    return {**values, "recorded_at": _plain(values["recorded_at"])}


# The chain


@functools.cache
def _head_statement(trail: Table) -> Select[Any]:
    return select(trail.c.sequence, trail.c.entry_hash).order_by(trail.c.sequence.desc()).limit(1)


@functools.cache
def _insert_statement(trail: Table) -> Insert:
    return trail.insert()


_LOCKED_HEAD = text("SELECT sequence, entry_hash FROM lotgate_audit_chain_head(:k)")


def _head_of(row: Row[Any] | None) -> tuple[int, str]:
    return (row.sequence, row.entry_hash) if row else (0, GENESIS)


async def head(conn: AsyncConnection, metadata: MetaData) -> tuple[int, str]:
    """The chain head: the last sequence number and its hash (0 and the genesis hash)."""
    return _head_of((await conn.execute(_head_statement(metadata.tables[AUDIT_TRAIL]))).first())


class Along(NamedTuple):
    """An INSERT that writes a chained entry too: run it once, with `parameters` added to
    the parameters of its own row."""

    statement: Insert
    parameters: dict[str, Any]


@functools.cache
def _along_statement(statement: Insert, trail: Table) -> Insert:
    """`statement` with the insert of one entry (parameters `audit_<column>`) as a
    data-modifying WITH, built once per statement. One entry only: SQLAlchemy caches no
    statement of several VALUES rows, and would compile such a one on every run."""
    entry = trail.insert().values({
        column.name: bindparam(f"audit_{column.name}", type_=column.type)
        for column in trail.columns})
    return statement.add_cte(entry.cte("audit_entry"))


async def append(conn: AsyncConnection, metadata: MetaData, rows: list[dict[str, Any]], *,
                 along: Insert | None = None) -> Along | None:
    """Chain `rows` (entries without sequence and hashes) after the head and insert them,
    in the caller's transaction.

    On PostgreSQL one call of `lotgate_audit_chain_head` takes the lock and reads the head,
    then one INSERT writes the rows; on SQLite a read of the head, then the INSERT.
    `along`: an INSERT the caller runs next in this transaction, once, with the parameters
    of one row. On PostgreSQL, when there is one row (a lone call's entry), it is not
    inserted here: returned is `along` with the row's INSERT as a data-modifying WITH,
    which PostgreSQL runs exactly once and to completion although the statement does not
    read it, so both inserts are one round trip; the caller must run it. Otherwise None.
    """
    if not rows:
        return None
    trail = metadata.tables[AUDIT_TRAIL]
    postgresql = conn.dialect.name == "postgresql"
    if postgresql:
        # The lock is held to the commit that follows: one append at a time, so the chain
        # never forks; the head comes from a query run after the lock was granted.
        locked = await conn.execute(_LOCKED_HEAD, {"k": _APPEND_LOCK_KEY})
        sequence, previous = _head_of(locked.first())
    else:
        sequence, previous = await head(conn, metadata)
    for values in rows:
        sequence += 1
        values["sequence"] = sequence
        values["previous_hash"] = previous
        values["entry_hash"] = previous = entry_hash(hashable(values))
    if along is not None and postgresql and len(rows) == 1:
        return Along(_along_statement(along, trail),
                     {f"audit_{name}": value for name, value in rows[0].items()})
    await conn.execute(_insert_statement(trail), rows)
    return None
