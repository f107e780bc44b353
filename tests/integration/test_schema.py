"""Schema migrations (shared.migrations): every service's revisions make exactly the tables of
its models, from an empty database and from an older revision, on SQLite and on the
configured database (PostgreSQL in CI); databases made before migrations are adopted or
refused; a service refuses a database that is not at its head; migrators running together
migrate once."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, Table, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from services.suppliers import tables as supplier_tables
from shared import migrations
from shared.db import make_engine
from shared.migrations import SERVICES, MigrationRefused, SchemaNotAtHead
from tests.support.databases import Databases

pytestmark = pytest.mark.integration

BASELINE = "2026_12_01_0509"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "configured"])
def new_database(request: pytest.FixtureRequest, databases: Databases, tmp_path: Path):
    """Makes empty databases: SQLite files, and the tests' configured database (PostgreSQL
    in CI), so that the revisions are proven on both."""
    counter = iter(range(1000))

    async def create(purpose: str) -> str:
        if request.param == "sqlite":
            return f"sqlite+aiosqlite:///{tmp_path / f'{purpose}-{next(counter)}.db'}"
        return await databases.create(purpose)

    return create


async def _table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def _differences(url: str, service: str) -> list[object]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(migrations.differences, service)
    finally:
        await engine.dispose()


@pytest.mark.req("OPS-001")
@pytest.mark.parametrize("service", SERVICES)
async def test_an_empty_database_migrated_to_head_has_exactly_the_models_tables(
        new_database, service: str) -> None:
    url = await new_database(f"empty_{service}")

    done = await migrations.migrate(service, url)

    assert (done.before, done.after) == (None, migrations.head(service))
    found = await _differences(url, service)
    assert found == [], (
        f"the {service} models differ from what its revisions make: {found}. A model changed "
        f"without a revision: run `lotgate migrate --service {service} --new-revision "
        "'what changed'`, read the file it writes and commit it (README, Migrations)")


async def test_the_comparison_sees_a_column_that_no_revision_adds(tmp_path: Path) -> None:
    """The guard above can fail: a nullable column added to a model and no revision for it
    is reported."""
    url = f"sqlite:///{tmp_path / 'head.db'}"
    await migrations.migrate("suppliers", url)
    changed = MetaData()
    for table in supplier_tables.metadata.sorted_tables:
        copy = table.to_metadata(changed)
        if table.name == "outbox":
            copy.append_column(Column("unrevised_note", String(64), nullable=True))

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), changed))
    finally:
        await engine.dispose()
    assert [(d[0], d[2], d[3].name) for d in found] == [("add_column", "outbox",
                                                          "unrevised_note")]


@pytest.mark.parametrize("service", SERVICES)
def test_revisions_are_dated_and_form_one_line(service: str) -> None:
    script = migrations.script_directory(service)
    files = sorted(p.name for p in (migrations.migrations_dir(service) / "versions").glob("*.py"))
    revisions = [r.revision for r in script.walk_revisions()]
    assert len(script.get_heads()) == 1, "two revisions follow the same one: make a line"
    assert len(revisions) >= 2
    assert len(files) == len(revisions)
    for name in files:
        assert re.fullmatch(r"\d{4}_\d{2}_\d{2}_\d{4}_[a-z0-9_]+\.py", name), name
        assert Path(script.get_revision(name[:15]).path).name == name, (
            f"{name}: its revision id is not its date")
    assert script.get_bases() == [BASELINE]
    assert revisions == sorted(revisions, reverse=True), "each revision is newer than the last"


@pytest.mark.req("OPS-001")
async def test_an_older_revision_is_upgraded_to_head_and_its_records_survive(
        new_database) -> None:
    url = await new_database("older")
    await migrations.migrate("suppliers", url, target=BASELINE)
    assert "schema_info" in await _table_names(url)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(supplier_tables.suppliers).values(
                supplier_id="SUP-OLD", name="Made before the upgrade", created_by="qa.jane",
                created_at=NOW))
            await conn.execute(insert(supplier_tables.tables.outbox).values(
                event_id="00000000-0000-0000-0000-000000000001", subject="s",
                aggregate_id="SUP-OLD", event_type="t", payload=b"x", created_at=NOW))
    finally:
        await engine.dispose()

    done = await migrations.migrate("suppliers", url)

    assert (done.before, done.after) == (BASELINE, migrations.head("suppliers"))
    assert "schema_info" not in await _table_names(url)
    assert await _differences(url, "suppliers") == []
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            kept = (await conn.execute(select(supplier_tables.suppliers.c.name))).scalars().all()
            events = (await conn.execute(
                select(supplier_tables.tables.outbox.c.aggregate_id))).scalars().all()
    finally:
        await engine.dispose()
    assert kept == ["Made before the upgrade"]
    assert events == ["SUP-OLD"]


async def _made_by_create_all(url: str, version: int | None) -> None:
    """A database as the releases before migrations left it: their tables (the baseline
    revision is exactly those, schema_info included), no alembic_version, and the version of
    its tables in schema_info (none before versions were recorded)."""
    baseline = migrations.script_directory("suppliers").get_base()
    await migrations.migrate("suppliers", url, target=baseline)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE alembic_version"))
            if version is None:
                await conn.execute(text("DROP TABLE schema_info"))
            else:
                await conn.execute(text("UPDATE schema_info SET version = :v "
                                        "WHERE name = 'tables'"), {"v": version})
            await conn.execute(insert(supplier_tables.suppliers).values(
                supplier_id="SUP-LEGACY", name="Kept", created_by="qa.jane", created_at=NOW))
    finally:
        await engine.dispose()


@pytest.mark.req("OPS-001")
async def test_a_database_of_the_last_create_all_release_is_adopted_not_recreated(
        new_database) -> None:
    url = await new_database("adopted")
    await _made_by_create_all(url, migrations.LEGACY_SCHEMA_VERSION["suppliers"])

    done = await migrations.migrate("suppliers", url)

    assert done.adopted_from_schema_info == migrations.LEGACY_SCHEMA_VERSION["suppliers"]
    assert done.after == migrations.head("suppliers")
    assert "adopted" in done.describe()
    assert await _differences(url, "suppliers") == []
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            names = (await conn.execute(select(supplier_tables.suppliers.c.name))).scalars()
            assert list(names) == ["Kept"]
    finally:
        await engine.dispose()


@pytest.mark.req("OPS-001")
@pytest.mark.parametrize("version", [None, 2])
async def test_a_create_all_database_of_an_older_version_is_refused_and_left_alone(
        new_database, version: int | None) -> None:
    url = await new_database("refused")
    if version is None:  # tables as the first builds made them, before schema_info
        engine = make_engine(url)
        old = MetaData()
        Table("qualifications", old, Column("supplier_id", String(64), primary_key=True))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(old.create_all)
        finally:
            await engine.dispose()
    else:
        await _made_by_create_all(url, version)
    before = await _table_names(url)

    with pytest.raises(MigrationRefused) as refused:
        await migrations.migrate("suppliers", url)

    wanted = migrations.LEGACY_SCHEMA_VERSION["suppliers"]
    assert f"version {version or 1} (schema_info)" in str(refused.value)
    assert f"only version {wanted}" in str(refused.value)
    assert await _table_names(url) == before


@pytest.mark.req("OPS-001")
async def test_the_audit_trail_made_by_the_revisions_is_append_only(new_database) -> None:
    url = await new_database("append_only")
    await migrations.migrate("lots", url)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO audit_trail (sequence, recorded_at, principal_subject, "
                "principal_name, record_type, record_id, action, reason, new_values, "
                "request_id, previous_hash, entry_hash) VALUES (1, :t, 's', 'n', 'lot', "
                "'L-1', 'create', 'r', '{}', 'q', :h, :h)"), {"t": NOW, "h": "0" * 64})
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE audit_trail SET reason = 'edited'"))
    finally:
        await engine.dispose()


async def _lotgate_migrate(url: str, *args: str) -> tuple[int, str]:
    """`lotgate migrate ARGS` as its own process, with LOTGATE_DATABASE_URL=url."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "lotgate"), "migrate", *args, env=_env(url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, output.decode()


@pytest.mark.req("OPS-001")
async def test_migrators_running_together_migrate_once(new_database) -> None:
    """Two Jobs, or a Job and an operator: processes of their own on one empty database."""
    url = await new_database("together")

    done = await asyncio.gather(*(_lotgate_migrate(url, "--service", "lots")
                                  for _ in range(3)))

    assert [code for code, _ in done] == [0, 0, 0], done
    said = sorted("from an empty database" in out for _, out in done)
    assert said == [False, False, True], done  # one migrated, the others found it done
    assert await _differences(url, "lots") == []


async def _refusal(url: str, service: str) -> SchemaNotAtHead:
    engine = make_engine(url)
    try:
        with pytest.raises(SchemaNotAtHead) as refused:
            await migrations.require_head(engine, service)
    finally:
        await engine.dispose()
    return refused.value


async def test_migrations_of_several_databases_in_one_process_do_not_mix(
        tmp_path: Path) -> None:
    """The local stack migrates its three databases together (Alembic's proxies are
    module-wide: interleaved runs would send one database's DDL to another)."""
    urls = {service: f"sqlite:///{tmp_path / f'{service}.db'}" for service in SERVICES}

    done = await asyncio.gather(*(migrations.migrate(s, url) for s, url in urls.items()))

    assert [d.after for d in done] == [migrations.head(s) for s in SERVICES]
    for service, url in urls.items():
        assert await _differences(url, service) == []


@pytest.mark.req("OPS-001")
async def test_a_service_names_the_revision_it_finds_and_the_head_it_needs(
        new_database) -> None:
    head = migrations.head("results")
    empty = await new_database("empty")
    assert "has no tables" in str(await _refusal(empty, "results"))

    behind = await new_database("behind")
    await migrations.migrate("results", behind, target=BASELINE)
    refused = await _refusal(behind, "results")
    assert (refused.current, refused.head) == (BASELINE, head)
    assert f"at revision {BASELINE}, behind the head {head}" in str(refused)
    assert "lotgate migrate --service results" in str(refused)

    ahead = await new_database("ahead")
    await migrations.migrate("results", ahead)
    engine = make_engine(ahead)
    try:
        async with engine.begin() as conn:  # as a newer build would leave it
            await conn.execute(update(Table("alembic_version", MetaData(),
                                            Column("version_num", String(32))))
                               .values(version_num="2099_01_01_0000"))
    finally:
        await engine.dispose()
    refused = await _refusal(ahead, "results")
    assert refused.current == "2099_01_01_0000"
    assert "does not know" in str(refused)
    with pytest.raises(MigrationRefused, match="2099_01_01_0000"):
        await migrations.migrate("results", ahead)


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOTGATE_")}
    return {**env, "LOTGATE_DATABASE_URL": url, "LOTGATE_GRPC_PORT": "0"}


@pytest.mark.req("OPS-001")
async def test_a_service_process_on_a_schema_behind_exits_naming_the_revision(
        databases: Databases) -> None:
    url = await databases.create("behind_process")
    await migrations.migrate("lots", url, target=BASELINE)

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.lots", env=_env(url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == migrations.EXIT_SCHEMA_NOT_AT_HEAD
    line = next(x for x in output.decode().splitlines() if "schema_not_at_head" in x)
    assert BASELINE in line and migrations.head("lots") in line
    assert await _table_names(url) >= {"lots", "schema_info"}  # left as it was


async def test_lotgate_migrate_prints_from_which_revision_to_which(
        databases: Databases) -> None:
    url = await databases.create("cli")
    head = migrations.head("suppliers")

    first = await _lotgate_migrate(url, "--service", "suppliers")
    again = await _lotgate_migrate(url, "--service", "suppliers")
    all_on_one_url = await _lotgate_migrate(url)

    assert first[0] == 0 and f"upgraded from an empty database to {head}" in first[1]
    assert again[0] == 0 and f"at {head}" in again[1] and "nothing to do" in again[1]
    assert all_on_one_url[0] == 2 and "one service at a time" in all_on_one_url[1]
