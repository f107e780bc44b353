"""Schema creation when several replicas of a service start at once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect

from services.lots.tables import metadata
from shared.db import create_schema, make_engine

pytestmark = pytest.mark.integration


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
