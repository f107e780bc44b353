"""The scale benchmark's database-alone row: the statement it times is the service's, and
the table says whether the batch's target is within the database's reach."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

from services.lots import queries
from tests.bench import scale
from tests.bench.scale import CALL_NAMES, DatabaseAlone, Loaded, Measured, Timed


def test_the_timed_statement_is_the_one_the_service_sends_for_the_misses():
    sent = str(queries._STORED_BY_ARRAY.compile(dialect=PGDialect_asyncpg()))
    assert scale.BATCH_STATEMENT == sent
    assert " ".join(sent.split()) == (
        "SELECT lots.lot_id, CASE WHEN (lots.status_reply_version = lots.status_version) "
        "THEN lots.status_reply ELSE NULL END AS reply, lots.status, lots.expiry_date, "
        "lots.retest_date FROM lots WHERE lots.lot_id = ANY ($1::VARCHAR[])")


def _measured(lots: int, batch_ms: float, database_ms: float, hit: int) -> Measured:
    calls = {name: Timed([1.0, 2.0]) for name in CALL_NAMES}
    calls[CALL_NAMES[1]] = Timed([batch_ms, batch_ms])
    loaded = Loaded(lots, lots * 3, lots * 3, 1.0, 1.0, {"lots": lots * 600}, 228.0)
    database = DatabaseAlone(Timed([database_ms, database_ms]), hit, 0, 5.0, 1.5,
                             "Index Scan")
    return Measured(lots, loaded, 1.0, calls, 140.0, lots, 0, 220, 10.0, 0.05, database)


def test_the_database_row_is_a_reference_and_the_budget_line_says_it_is_exceeded():
    table = scale.render(_measured(10_000, 4.0, 3.5, 3100),
                         _measured(1_000_000, 10.0, 6.0, 3992), [])
    row = next(line for line in table.splitlines() if line.startswith(
        f"| {scale.DATABASE_NAME} |"))
    assert row.endswith("| 3.5 / 3.5 | 6.0 / 6.0 | 1.71x / 1.71x | - | - |")
    bullets = [line for line in table.splitlines() if line.startswith("- ")]
    assert any("3,100 / 0 at 10k (Index Scan" in line and "3,992 / 0 at 1M" in line
               for line in bullets)
    assert any(line.startswith(
        "- At p50 the 1M batch takes 10.00 ms, of which the statement alone 6.00 ms and "
        "the rest 4.00 ms (the whole 10k call, answered from memory: 4.00 ms). Within "
        "1.2x of it the statement could take 0.80 ms: it takes more")
        for line in bullets)


def test_a_statement_within_the_budget_leaves_the_difference_to_the_service():
    table = scale.render(_measured(10_000, 10.0, 3.5, 3100),
                         _measured(1_000_000, 11.0, 1.5, 3992), [])
    assert ("Within 1.2x of it the statement could take 2.50 ms: it takes less; the rest "
            "of the call is where the time goes.") in table
