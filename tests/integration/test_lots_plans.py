"""The lots service's time-driven query and its page queries stay index scans when the
database plans them without their parameters' values.

asyncpg prepares every statement, and PostgreSQL switches a prepared statement to its
generic plan (planned for any parameter values) after five runs when that looks as cheap.
A generic plan that scans the whole table is slow only at size (the due lots at a million
rows: 941 ms), so each query is issued here the way the service issues it, over
tens of thousands of lots, then PREPAREd and EXPLAINed with `plan_cache_mode =
force_generic_plan`. On SQLite, whose plans never depend on parameter values, the same
statements are checked with EXPLAIN QUERY PLAN.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.lots import qa_queries, queries, repository
from services.lots.domain.reviews import ReviewState
from services.lots.domain.rule import LotStatus
from services.lots.tables import decisions, lot_results, lot_reviews
from shared import migrations
from shared.db import make_engine
from tests.support.databases import Databases
from tests.support.lot_rows import add_lot_rows, lot_rows

pytestmark = pytest.mark.integration

LOTS = 30_000
TODAY = date(2027, 1, 1)


@pytest.fixture(scope="module")
async def engine(databases: Databases) -> AsyncIterator[AsyncEngine]:
    url = await databases.create("plans")
    await migrations.migrate("lots", url)
    engine = make_engine(url)
    # Most lots far from their dates, a few due: the shape of a site's database.
    await add_lot_rows(engine, [spread(i, row)
                                for i, row in enumerate(lot_rows(LOTS, prefix="LOT"))]
                       + lot_rows(20, prefix="DUE", expiry=date(2026, 12, 1))
                       + lot_rows(20, prefix="RETEST", retest=date(2026, 12, 15)))
    opened = datetime(2026, 6, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(insert(decisions), [
            {"lot_id": f"LOT-{i:06d}", "version": v, "previous_status": None,
             "status": "RELEASED", "unmet": "[]", "inputs": "{}", "cause": "test",
             "decided_at": opened} for i in range(LOTS) for v in (1, 2)])
        await conn.execute(insert(lot_results), [
            {"result_id": f"LOT-{i:06d}-R{n}", "lot_id": f"LOT-{i:06d}",
             "material_code": f"MAT-{i % 300:03d}", "test": test, "verdict": "PASS",
             "sequence": n, "spec_version": 1, "recorded_at": opened, "lot_result_number": n,
             "state": "VALID", "state_reason": "", "retest_of": None,
             "required_tests": "IDENTITY,PURITY,STERILITY"}
            for i in range(LOTS) for n, test in enumerate(("IDENTITY", "PURITY"), start=1)])
        await conn.execute(insert(lot_reviews), [
            {"review_id": f"LOT-{i:06d}/1", "lot_id": f"LOT-{i:06d}",
             "supplier_id": f"SUP-{i % 50:02d}", "supplier_site_id": "MAIN",
             "material_code": f"MAT-{i % 300:03d}", "qualification_status": "SUSPENDED",
             "qualification_version": 1, "reason": "suspended", "opened_at": opened,
             "state": "CLOSED" if i % 100 else "OPEN"} for i in range(LOTS // 2)])
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql("ANALYZE")
    yield engine
    await engine.dispose()


# Statuses as a site that has run for years holds them: most lots released or long expired.
STATUSES = ["RELEASED"] * 13 + ["EXPIRED"] * 4 + ["REJECTED", "QUARANTINE", "RELEASABLE"]


def spread(i: int, row: dict[str, Any]) -> dict[str, Any]:
    """Lot `i` of one of 300 materials and 50 suppliers, in a status as above; expired lots
    expired long ago (they are final: not due)."""
    status = "ON_HOLD" if i % 500 == 1 else STATUSES[i % len(STATUSES)]  # 0.2%: rare
    return {**row, "status": status, "material_code": f"MAT-{i % 300:03d}",
            "supplier_id": f"SUP-{i % 50:02d}",
            **({"expiry_date": date(2024, 1, 1)} if status == "EXPIRED" else {})}


Issue = Callable[[AsyncConnection], Awaitable[Any]]


async def generic_plan(engine: AsyncEngine, issue: Issue) -> str:
    """The plan of the statement `issue` runs, as the database would run it for any
    parameter values (PostgreSQL: its generic plan)."""
    async with engine.connect() as conn:
        issued: list[tuple[str, Any]] = []

        def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
            issued.append((statement, parameters))

        event.listen(conn.sync_connection, "before_cursor_execute", capture)
        try:
            await issue(conn)
        finally:
            event.remove(conn.sync_connection, "before_cursor_execute", capture)
        [(statement, parameters)] = [(s, p) for s, p in issued if s.startswith("SELECT")]
        if conn.dialect.name != "postgresql":
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                              tuple(parameters))
            return "\n".join(str(row[-1]) for row in rows)
        driver = (await conn.get_raw_connection()).driver_connection
        await driver.execute("SET plan_cache_mode = force_generic_plan")
        await driver.execute(f"PREPARE issued AS {statement}")
        try:
            rows = await driver.fetch(
                f"EXPLAIN EXECUTE issued({', '.join(_literal(p) for p in parameters)})")
        finally:
            await driver.execute("DEALLOCATE issued")
            await driver.execute("RESET plan_cache_mode")
        return "\n".join(row[0] for row in rows)


def _literal(value: Any) -> str:
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def assert_index_scan(plan: str, table: str, index: str) -> None:
    """The plan reads `table` through an index, never all of it; on PostgreSQL through
    `index`. (SQLite, the development database, keeps no statistics unless told to, so
    which of the usable indexes it takes is its own guess; it must take one.)"""
    if plan.startswith(("SEARCH", "SCAN", "CO-ROUTINE", "COMPOUND", "MERGE")):  # SQLite
        assert not re.search(rf"^SCAN {table}$", plan, re.MULTILINE), plan
        assert re.search(rf"^(SEARCH|SCAN) {table} USING", plan, re.MULTILINE), plan
        return
    assert f"Seq Scan on {table}" not in plan, plan
    assert index in plan, plan


async def test_the_due_lots_are_found_through_their_date_indexes(engine) -> None:
    async def due(conn: AsyncConnection) -> None:
        found = await repository.lot_ids_to_decide(conn, due_on=TODAY, limit=100)
        assert len(found) == 40  # the query finds exactly the due lots

    plan = await generic_plan(engine, due)
    assert_index_scan(plan, "lots", "ix_lots_expiry_due")
    if "Index Scan" in plan:  # PostgreSQL
        assert "ix_lots_retest_due" in plan, plan
        assert "lots_pkey" not in plan, plan  # not the whole primary key, filtered


def page(**filters: Any) -> Issue:
    async def issue(conn: AsyncConnection) -> None:
        found = await queries.lot_page(conn, **{
            "status": None, "after": "LOT-000000", "limit": 100, "supplier_id": "",
            "supplier_site_id": "", "material_code": "", "received_from": None,
            "received_before": None, **filters})
        assert found
    return issue


@pytest.mark.parametrize(("filters", "index"), [
    ({}, "lots_pkey"),
    # A common status is read along the primary key, a rare one through its index.
    ({"status": LotStatus.RELEASED}, "lots_pkey"),
    ({"status": LotStatus.ON_HOLD}, "ix_lots_status"),
    ({"material_code": "MAT-007"}, "ix_lots_material"),
    ({"status": LotStatus.RELEASED, "material_code": "MAT-007"}, "ix_lots_material"),
    # No index orders a supplier's or a time range's lots by id: the primary key, in order.
    ({"supplier_id": "SUP-03", "supplier_site_id": "MAIN"}, "lots_pkey"),
    ({"received_from": datetime(2026, 6, 1, tzinfo=UTC)}, "lots_pkey"),
])
async def test_a_page_of_lots_is_read_through_an_index(engine, filters, index) -> None:
    assert_index_scan(await generic_plan(engine, page(**filters)), "lots", index)


@pytest.mark.parametrize(("filters", "index"), [
    ({}, "lot_reviews_pkey"),
    ({"state": ReviewState.CLOSED}, "lot_reviews_pkey"),  # most reviews: along the key
    ({"state": ReviewState.OPEN}, "ix_lot_reviews_state"),  # the few open: their index
    ({"supplier_id": "SUP-07", "material_code": "MAT-007"},
     "ix_lot_reviews_supplier_material"),
])
async def test_a_page_of_reviews_is_read_through_an_index(engine, filters, index) -> None:
    async def issue(conn: AsyncConnection) -> None:
        assert await qa_queries.review_page(conn, **{
            "state": None, "supplier_id": "", "material_code": "", "after": 0,
            "limit": 100, **filters})

    assert_index_scan(await generic_plan(engine, issue), "lot_reviews", index)


async def test_the_decisions_of_a_lot_are_read_through_an_index(engine) -> None:
    async def issue(conn: AsyncConnection) -> None:
        assert len(await queries.decisions_of(conn, lot_id="LOT-000123")) == 2

    plan = await generic_plan(engine, issue)
    assert_index_scan(plan, "decisions", "decisions_lot_id_version_key")


async def test_the_results_a_lots_decisions_name_are_read_through_an_index(engine) -> None:
    async def issue(conn: AsyncConnection) -> None:
        assert len(await queries.results_of(conn, lot_id="LOT-000123")) == 2

    plan = await generic_plan(engine, issue)
    assert_index_scan(plan, "lot_results", "ix_lot_results_lot_id")
