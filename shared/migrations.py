"""Schema migrations: one Alembic history per service, run as a step of its own.

Each service keeps its revisions in `services/<service>/migrations/versions/`, named by date
(`2026_12_01_0509_baseline.py`; the revision id is the date part, UTC). `lotgate migrate`
brings a database to the newest revision (the head); a service only checks, and refuses to
start on a database that is behind or ahead of the head its build needs (`require_head`).

- `migrate(service, url)`: upgrade to head in one transaction; on PostgreSQL under an
  advisory lock, on SQLite under the write lock (BEGIN IMMEDIATE), so two migrators at once
  never both migrate: the second waits, then finds the database at head.
- A database made by `create_all` before migrations existed (its version in `schema_info`)
  is adopted when it holds the tables of the last such release: stamped at the baseline,
  which is exactly that schema, and upgraded from there. Any other version is refused.
- `new_revision(service, message)`: autogenerate the next dated revision from the difference
  between the models and a scratch database at head (`lotgate migrate --new-revision`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import sys
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

SERVICES = ("suppliers", "results", "lots")

# The schema_info version of each service's tables in the last release that made its
# tables with create_all; its baseline revision is exactly that schema.
LEGACY_SCHEMA_VERSION = {"lots": 7, "results": 3, "suppliers": 3}
LEGACY_SCHEMA_INFO = "schema_info"

# Held for the whole migration on PostgreSQL ("LGMG"); other databases' locks are apart.
_MIGRATION_LOCK_KEY = 0x4C47_4D47

# A service that refuses its database exits with this code (documented in the README).
EXIT_SCHEMA_NOT_AT_HEAD = 3

# A migration may wait for another migrator's lock and rewrite big tables.
MIGRATION_TIMEOUT_S = 600.0

REVISION_ID_FORMAT = "%Y_%m_%d_%H%M"


class MigrationRefused(RuntimeError):
    """The database cannot be migrated by this build; it was left as it was."""


class SchemaNotAtHead(RuntimeError):
    """The database's revision is not the one this build's service needs."""

    def __init__(self, service: str, current: str | None, head: str, detail: str) -> None:
        super().__init__(detail)
        self.service = service
        self.current = current
        self.head = head


@dataclass(frozen=True)
class Migrated:
    service: str
    before: str | None  # None: an empty database
    after: str
    adopted_from_schema_info: int | None = None

    def describe(self, script: ScriptDirectory | None = None) -> str:
        script = script or script_directory(self.service)
        after = _label(script, self.after)
        if self.adopted_from_schema_info is not None:
            return (f"{self.service}: adopted the tables made by create_all (schema_info "
                    f"version {self.adopted_from_schema_info}) as "
                    f"{_label(script, baseline(self.service))}, upgraded to {after}")
        if self.before == self.after:
            return f"{self.service}: at {after} already, nothing to do"
        before = "an empty database" if self.before is None else _label(script, self.before)
        return f"{self.service}: upgraded from {before} to {after}"


def _known(script: ScriptDirectory, revision: str) -> Any:
    """The revision's script, or None when this build does not have it."""
    try:
        return script.get_revision(revision)
    except CommandError:
        return None


def _label(script: ScriptDirectory, revision: str) -> str:
    found = _known(script, revision)
    doc = (found.doc or "").strip() if found is not None else ""
    return f"{revision} ({doc})" if doc else revision


# --- where the revisions are ----------------------------------------------------------

def migrations_dir(service: str) -> Path:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    spec = importlib.util.find_spec(f"services.{service}")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "migrations"


def alembic_config(service: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(service)))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("lotgate.service", service)
    config.set_main_option("timezone", "UTC")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory(service: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(service))


def head(service: str) -> str:
    heads = script_directory(service).get_heads()
    if len(heads) != 1:
        raise MigrationRefused(f"{service} has {len(heads)} heads ({', '.join(heads)}): two "
                               "revisions follow the same one; make one follow the other")
    return heads[0]


def baseline(service: str) -> str:
    bases = script_directory(service).get_bases()
    assert len(bases) == 1, bases
    return bases[0]


def target_metadata(service: str) -> MetaData:
    return importlib.import_module(f"services.{service}.tables").metadata


# --- env.py ------------------------------------------------------------------------------

def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Revisions hold plain SQLAlchemy types: what the database stores, not our decorators."""
    from shared.db import UtcDateTime

    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure_context(context: Any, connection: Connection, metadata: MetaData) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      # SQLite alters tables by copying them: batch mode does that.
                      render_as_batch=True, compare_type=True,
                      render_item=_render_item)


def run_env() -> None:
    """The body of every service's migrations/env.py."""
    from alembic import context

    config = context.config
    service = config.get_main_option("lotgate.service")
    connection = config.attributes.get("connection")
    if service is None or connection is None:
        raise SystemExit("run the migrations with `lotgate migrate --service SERVICE`; they "
                         "need the service's own settings (LOTGATE_DATABASE_URL)")
    configure_context(context, connection, target_metadata(service))
    with context.begin_transaction():
        context.run_migrations()


# --- migrating ---------------------------------------------------------------------------

def _legacy_version(conn: Connection) -> int | None:
    """The create_all version a pre-migration database holds; None when it has no tables."""
    names = set(inspect(conn).get_table_names())
    if LEGACY_SCHEMA_INFO in names:
        return conn.execute(text(
            f"SELECT version FROM {LEGACY_SCHEMA_INFO} WHERE name = 'tables'")).scalar()
    # Tables made before versions were recorded were version 1.
    return 1 if names else None


def _migrate_sync(conn: Connection, service: str, target: str) -> Migrated:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    config = alembic_config(service, conn)
    before = MigrationContext.configure(conn).get_current_revision()
    adopted = None
    if before is None:
        legacy = _legacy_version(conn)
        if legacy is not None:
            wanted = LEGACY_SCHEMA_VERSION[service]
            if legacy != wanted:
                raise MigrationRefused(
                    f"the {service} database holds tables made by create_all at version "
                    f"{legacy} (schema_info) and no Alembic revision; only version {wanted}, "
                    "the last release before migrations, can be adopted. Start the release "
                    f"that made version {wanted} on it once, then migrate; a development "
                    "database can instead be deleted (make clean).")
            command.stamp(config, baseline(service))
            adopted = legacy
    target = head(service) if target == "head" else target
    if before is not None and _known(script_directory(service), before) is None:
        raise MigrationRefused(f"the {service} database is at revision {before}, which this "
                               f"build does not know (its head is {target}): a newer build "
                               "migrated it; run that build")
    command.upgrade(config, target)
    after = MigrationContext.configure(conn).get_current_revision()
    assert after == target, (after, target)
    return Migrated(service, before, after, adopted)


# Alembic's `op` and `context` are module-wide proxies, installed for one run at a time:
# two runs in one process (the local stack migrates three databases) must not interleave.
_runs_in_this_process: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary())


def _one_run_at_a_time() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _runs_in_this_process.get(loop)
    if lock is None:
        lock = _runs_in_this_process[loop] = asyncio.Lock()
    return lock


async def upgrade(engine: AsyncEngine, service: str, target: str = "head") -> Migrated:
    """Bring the database of `engine` to `service`'s head (or the revision `target`, which
    tests use to make an older database), in one transaction."""
    script_directory(service)  # read the revisions before taking the lock
    async with _one_run_at_a_time(), engine.begin() as conn:
        return await conn.run_sync(_migrate_sync, service, target)


async def migrate(service: str, url: str, target: str = "head") -> Migrated:
    """Bring the database at `url` to `service`'s head (a connection of its own)."""
    from shared.db import make_engine

    engine = make_engine(url, pool_size=1, statement_timeout_s=MIGRATION_TIMEOUT_S)
    try:
        for attempt in range(_SQLITE_BUSY_ATTEMPTS):
            try:
                return await upgrade(engine, service, target)
            except DBAPIError as exc:
                # SQLite answers "database is locked" at once, without waiting out its
                # busy timeout, where waiting could deadlock (another process's migrator
                # holding the file, switching it to WAL or recovering its log). The
                # migration rolled back; it starts again, under the lock, and finds what
                # the other migrator did.
                if (engine.dialect.name != "sqlite" or "locked" not in str(exc)
                        or attempt == _SQLITE_BUSY_ATTEMPTS - 1):
                    raise
                await engine.dispose()
                await asyncio.sleep(0.1 * 2 ** attempt)
        raise AssertionError("unreachable")
    finally:
        await engine.dispose()


_SQLITE_BUSY_ATTEMPTS = 6


# --- what a service checks when it starts ------------------------------------------------

def _current_heads(conn: Connection) -> tuple[tuple[str, ...], int | None]:
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads, (None if heads else _legacy_version(conn))


async def require_head(engine: AsyncEngine, service: str) -> str:
    """The head revision, when the database is at it; else SchemaNotAtHead, which names the
    database's revision, the head and what to do."""
    target = head(service)
    async with engine.connect() as conn:
        heads, legacy = await conn.run_sync(_current_heads)
    run = f"run `lotgate migrate --service {service}` with this service's settings"
    if heads == (target,):
        return target
    if not heads:
        detail = (f"the {service} database has no tables; {run}" if legacy is None else
                  f"the {service} database was made by create_all before migrations "
                  f"(schema_info version {legacy}) and holds no revision; {run} to adopt it")
        raise SchemaNotAtHead(service, None, target, detail + f" (head {target})")
    current = heads[0]
    script = script_directory(service)
    if len(heads) == 1 and _known(script, current) is not None:
        pending = [r.revision for r in script.iterate_revisions(target, current)][:-1]
        raise SchemaNotAtHead(
            service, current, target,
            f"the {service} database is at revision {current}, behind the head {target} this "
            f"build needs ({len(pending)} revision(s) to apply); {run}")
    raise SchemaNotAtHead(
        service, ",".join(heads), target,
        f"the {service} database is at revision {','.join(heads)}, which this build does not "
        f"know (its head is {target}): a newer build migrated it; run that build")


# --- writing a revision ------------------------------------------------------------------

def differences(conn: Connection, service: str) -> list[Any]:
    """What autogenerate finds between the database of `conn` and the service's models."""
    context = MigrationContext.configure(conn, opts={
        "compare_type": True, "render_as_batch": True, "render_item": _render_item})
    return compare_metadata(context, target_metadata(service))


def new_revision(service: str, message: str, *, now: datetime | None = None) -> Path | None:
    """Write the next revision of `service` from what its models changed (None: nothing).

    The models are compared with a scratch SQLite database at head; read the file it
    writes, and add what autogenerate cannot see (data moves, triggers, renames).
    """
    from shared.db import make_engine

    rev_id = (now or datetime.now(UTC)).strftime(REVISION_ID_FORMAT)
    if rev_id <= head(service):
        raise MigrationRefused(f"{service}'s head {head(service)} is not older than "
                               f"{rev_id}: wait a minute, or check the clock")

    async def write(url: str) -> Path | None:
        engine = make_engine(url, pool_size=1)
        try:
            await upgrade(engine, service)
            async with engine.begin() as conn:
                return await conn.run_sync(_autogenerate)
        finally:
            await engine.dispose()

    def _autogenerate(conn: Connection) -> Path | None:
        if not differences(conn, service):
            return None
        script = command.revision(alembic_config(service, conn), message=message,
                                  autogenerate=True, rev_id=rev_id)
        assert script is not None and not isinstance(script, list)
        script_directory.cache_clear()
        return Path(script.path)

    with tempfile.TemporaryDirectory(prefix="lotgate-revision-") as tmp:
        return asyncio.run(write(f"sqlite:///{Path(tmp) / 'head.db'}"))


# --- `lotgate migrate` ---------------------------------------------------------------------

def main(service: str, *, new_revision_message: str = "") -> int:
    """`lotgate migrate`: migrate (or write a revision for) one service or "all", each with
    its own settings; print what was done. Exit 0 when every database is at head, 1 when
    one was refused, 2 when the settings name one database for several services."""
    from shared.config import settings_for

    services: Sequence[str] = SERVICES if service == "all" else (service,)

    if new_revision_message:
        for service in services:
            try:
                path = new_revision(service, new_revision_message)
            except MigrationRefused as refused:
                print(f"lotgate migrate: {refused}", file=sys.stderr)
                return 1
            print(f"{service}: wrote {path}" if path else
                  f"{service}: the models match the head; no revision written")
        return 0
    import os

    if len(services) > 1 and os.environ.get("LOTGATE_DATABASE_URL"):
        print("lotgate migrate: LOTGATE_DATABASE_URL names one database; migrate one service "
              "at a time (--service) with that service's settings", file=sys.stderr)
        return 2
    for service in services:
        url = settings_for(service).database_url
        where = make_url(url).render_as_string(hide_password=True)
        try:
            done = asyncio.run(migrate(service, url))
        except MigrationRefused as refused:
            print(f"lotgate migrate: {refused}", file=sys.stderr)
            return 1
        except (OSError, DBAPIError) as error:  # unreachable, or a statement failed
            print(f"lotgate migrate: {service}: nothing changed in {where}: {error}",
                  file=sys.stderr)
            return 1
        print(f"{done.describe()}  [{where}]")
    return 0
