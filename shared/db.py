"""Engines and tables shared by every service. Nothing here connects at import time."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Insert,
    Integer,
    Table,
    any_,
    bindparam,
    event,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator

# Auto-incrementing ids: BIGINT on PostgreSQL, INTEGER (the rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored and returned in UTC, also on SQLite (which keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _OneOf(ColumnElement[bool]):
    """`column` is one of the list given as parameter `name` when the statement runs."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison: no "= 1" after it on SQLite
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement),
                           ("name", InternalTraversal.dp_string)]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name


def one_of(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    """`column` is one of the values passed as parameter `name` (a list) when the statement
    is executed: for statements built once, at import, rather than per call.

    On PostgreSQL it is `column = ANY(:name)`, one array parameter: the SQL is the same
    whatever the number of values, so the driver prepares it once (an IN list is new SQL,
    and a new server-side statement, for every length). Elsewhere an expanding IN.
    Building a statement per call, with its values in it, costs about three times the
    execution of a statement built once (SQLAlchemy walks the new statement for its cache
    key and renders its list).
    """
    return _OneOf(column, name)


@compiles(_OneOf)
def _one_of_in(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(_OneOf, "postgresql")
def _one_of_any(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// and sqlite:/// URLs and pick the asyncio drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, pool_size: int = 10, statement_timeout_s: float = 10.0) -> AsyncEngine:
    """An engine for PostgreSQL (asyncpg) or a SQLite file (aiosqlite), chosen by URL."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer anyway, and a single connection
        # rules out "database is locked" upgrades between our own transactions.
        engine = create_async_engine(url, pool_size=1, max_overflow=0,
                                     connect_args={"timeout": statement_timeout_s})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transactions would begin only at the first write, leaving
            # the reads before it outside the transaction; _begin takes over.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            # The write lock from the start: what a transaction reads cannot change before
            # it writes, also when several processes share the file (two lots replicas:
            # a lot decided on a qualification another process is changing). SQLite has
            # one writer at a time in any case; FOR UPDATE, which it ignores, is not needed.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_async_engine(
        url,
        # A fixed pool: overflow connections would be opened and closed per checkout
        # under load (measured: hundreds of reconnects a second); callers wait instead.
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=statement_timeout_s,
        connect_args={
            "timeout": statement_timeout_s,
            "command_timeout": statement_timeout_s,
            # A plan per execution, for the values given: the driver keeps each statement
            # prepared for the connection's life, and a generic plan made while a table
            # was small (a new site, or a database where nothing has run ANALYZE yet)
            # would stay a sequential scan as the table grows. Measured with the
            # benchmark's plates on a new database without autovacuum: PostgreSQL's CPU
            # per result 2.6-2.8 ms with generic plans, 0.8 ms planned per execution (the
            # planning of these short statements is within the noise of that figure).
            "server_settings": {"application_name": "lotgate",
                                "plan_cache_mode": "force_custom_plan"},
        },
    )


@functools.cache
def insert_ignoring_duplicates(table: Table, dialect_name: str) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING, for PostgreSQL and SQLite alike.

    Built once per table: statements are immutable, and building one per call costs
    more than executing it on the hot paths.
    """
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
