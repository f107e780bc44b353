"""Rows of the lots table written straight to a database: many lots, fast, for tests of
the SQL at size (plans, statements per page) where deciding each lot would take minutes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lots.tables import lots

QUARANTINE_UNMET = '[["RESULTS_MISSING","waiting for results","R2"]]'


def lot_rows(count: int, *, prefix: str, material: str = "MAT-SCALE",
             status: str = "RELEASED", expiry: date | None = None,
             retest: date | None = None) -> list[dict[str, Any]]:
    """`count` lots `<prefix>-000000`, ... of one supplier site and material, decided."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    expiry = expiry or date(2030, 1, 1)
    unmet = "[]" if status in ("RELEASED", "RELEASABLE") else QUARANTINE_UNMET
    return [{
        "lot_id": f"{prefix}-{i:06d}", "material_code": material, "supplier_id": "SUP-SCALE",
        "supplier_site_id": "MAIN", "supplier_lot_number": f"S{i}", "quantity_value": 1.0,
        "quantity_unit": "kg", "container_count": 1, "expiry_date": expiry,
        "retest_date": retest, "received_at": now + timedelta(seconds=i),
        "received_by": "warehouse", "fingerprint": f"{i:064d}", "status": status,
        "status_version": 2, "unmet": unmet, "decided_at": now + timedelta(seconds=i),
        "qa_released": False, "qa_hold_reason": "", "qa_rejection_reason": "",
    } for i in range(count)]


async def add_lot_rows(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` in one transaction (executemany: a few seconds for 50,000)."""
    async with engine.begin() as conn:
        await conn.execute(insert(lots), rows)
