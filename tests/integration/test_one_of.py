"""`shared.db.one_of` on a real database: a statement built once takes its list of
values when it runs, any number of them (none included), on PostgreSQL as one array
parameter and on SQLite as an IN list."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from shared.db import make_engine, one_of

pytestmark = pytest.mark.integration

metadata = MetaData()
lots = Table("one_of_lots", metadata,
             Column("lot_id", String(20), primary_key=True),
             Column("results", Integer, nullable=False))
LOTS_OF = (select(lots.c.lot_id).where(one_of(lots.c.lot_id, "ids"), lots.c.results > 0)
           .order_by(lots.c.lot_id))


def test_it_is_one_array_parameter_on_postgresql_and_an_in_list_on_sqlite() -> None:
    assert "lot_id = ANY (%(ids)s::VARCHAR(20)[])" in str(
        LOTS_OF.compile(dialect=postgresql.dialect()))
    # A plain IN: no "= 1" after it, which would keep SQLite off the primary key.
    assert "lot_id IN (__[POSTCOMPILE_ids]) AND" in str(
        LOTS_OF.compile(dialect=sqlite.dialect()))


@pytest.mark.parametrize("ids, found", [
    ([], []),
    (["L1"], ["L1"]),
    (["L3", "L1", "NOT-A-LOT"], ["L1", "L3"]),
    ([f"L{i}" for i in range(600)], [f"L{i}" for i in range(1, 5)]),
])
async def test_the_statement_finds_the_rows_of_every_list_given(databases, ids: list[str],
                                                                 found: list[str]) -> None:
    engine = make_engine(await databases.create("one_of"))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(lots.insert(), [{"lot_id": f"L{i}", "results": i}
                                               for i in range(5)])
        async with engine.connect() as conn:
            assert [r.lot_id for r in await conn.execute(LOTS_OF, {"ids": ids})] == found
    finally:
        await engine.dispose()



async def test_a_statement_prepared_while_its_table_was_small_reads_by_index_once_it_grew(
        databases) -> None:
    """The services' connections plan a prepared statement at each execution: runs while
    the table was nearly empty (a sequential scan is cheapest then) do not leave the
    statement scanning the whole table later, as a cached generic plan would until the
    next ANALYZE (a new site's database; a server without autovacuum)."""
    engine = make_engine(await databases.create("one_of_plans"))
    try:
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite keeps no plans across executions")
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            # Rows as wide as a lot's: the planner takes a never-analysed table for a
            # few pages of them, where reading it all is cheapest.
            await driver.execute(
                "CREATE TABLE wide_lots (lot_id varchar(64) PRIMARY KEY, "
                + ", ".join(f"c{i} varchar(250)" for i in range(8)) + ")")
            lookup = await driver.prepare(
                "SELECT lot_id FROM wide_lots WHERE lot_id = ANY($1::varchar[])")
            await driver.execute("INSERT INTO wide_lots (lot_id) VALUES ('L0')")
            for _ in range(10):  # past the five runs after which a generic plan may stay
                assert await lookup.fetch(["L0"]) == [("L0",)]
            await driver.execute("INSERT INTO wide_lots (lot_id) SELECT 'M' || g "
                                 "FROM generate_series(1, 20000) AS g")
            plan = "\n".join(row[0] for row in await driver.fetch(
                f"EXPLAIN EXECUTE {lookup.get_name()}('{{M7,M8}}')"))
            assert "Index" in plan and "Seq Scan" not in plan, plan
    finally:
        await engine.dispose()
