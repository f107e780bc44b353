"""Schema creation when several replicas of a service start at once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Column, MetaData, String, Table, inspect, text

from services.lots.tables import metadata
from services.suppliers.tables import tables as supplier_tables
from shared.db import SchemaMismatch, create_schema, make_engine

pytestmark = pytest.mark.integration


@pytest.mark.req("OPS-001")
async def test_replicas_starting_together_on_an_empty_database_all_start(databases) -> None:
    url = await databases.create("schema")
    engines = [make_engine(url) for _ in range(4)]
    try:
        await asyncio.gather(*(create_schema(engine, metadata) for engine in engines))

        async with engines[0].connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))
    assert set(metadata.tables) <= names


@pytest.mark.req("OPS-001")
async def test_a_database_made_for_other_tables_is_refused_and_left_alone(databases) -> None:
    url = await databases.create("schema")
    engine = make_engine(url)
    old = MetaData()
    Table("qualifications", old, Column("supplier_id", String(64), primary_key=True))
    try:
        async with engine.begin() as conn:  # tables as an earlier build made them
            await conn.run_sync(old.create_all)

        with pytest.raises(SchemaMismatch) as refused:
            await create_schema(engine, supplier_tables.metadata,
                                version=supplier_tables.schema_version)

        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert "version 1" in str(refused.value)
    assert f"version {supplier_tables.schema_version}" in str(refused.value)
    assert names == {"qualifications"}


@pytest.mark.req("OPS-001")
async def test_a_database_at_the_right_version_is_used_as_it_is(databases) -> None:
    url = await databases.create("schema")
    engine = make_engine(url)
    try:
        for _ in range(2):  # a restart finds its own tables
            await create_schema(engine, supplier_tables.metadata,
                                version=supplier_tables.schema_version)
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version FROM schema_info"))).scalar_one()
    finally:
        await engine.dispose()
    assert version == supplier_tables.schema_version
