"""Data access for suppliers and qualifications (SQLAlchemy Core on the unit of work)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.suppliers.domain import Qualification, QualificationStatus
from services.suppliers.tables import qualification_history, qualifications, suppliers


def _qualification(row: Any) -> Qualification:
    return Qualification(
        supplier_id=row.supplier_id, material_code=row.material_code,
        status=QualificationStatus(row.status), valid_until=row.valid_until,
        version=row.version, reason=row.reason, changed_by=row.changed_by,
        changed_at=row.changed_at)


async def get_supplier(conn: AsyncConnection, *, supplier_id: str) -> Any | None:
    """The supplier row, or None."""
    return (await conn.execute(
        select(suppliers).where(suppliers.c.supplier_id == supplier_id))).first()


async def add_supplier(conn: AsyncConnection, *, supplier_id: str, name: str, created_by: str,
                       created_at: datetime) -> None:
    """Insert a new supplier."""
    await conn.execute(insert(suppliers).values(
        supplier_id=supplier_id, name=name, created_by=created_by, created_at=created_at))


async def get_qualification(conn: AsyncConnection, *, supplier_id: str, material_code: str,
                            for_update: bool = False) -> Qualification | None:
    """The current qualification of a supplier for a material, or None."""
    query = select(qualifications).where(qualifications.c.supplier_id == supplier_id,
                                         qualifications.c.material_code == material_code)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _qualification(row) if row else None


async def list_qualifications(conn: AsyncConnection, *, supplier_id: str) -> list[Qualification]:
    """Current qualifications of a supplier, by material code."""
    rows = await conn.execute(select(qualifications)
                              .where(qualifications.c.supplier_id == supplier_id)
                              .order_by(qualifications.c.material_code))
    return [_qualification(row) for row in rows]


async def save_qualification(conn: AsyncConnection, *, new: Qualification,
                             previous: Qualification | None, event_id: str) -> bool:
    """Write the new state if nobody changed it meanwhile, and its history row.

    Returns False when a concurrent change won (the caller answers ABORTED).
    """
    values = {
        "status": new.status.value, "valid_until": new.valid_until, "version": new.version,
        "reason": new.reason, "changed_by": new.changed_by, "changed_at": new.changed_at,
    }
    if previous is None:
        await conn.execute(insert(qualifications).values(
            supplier_id=new.supplier_id, material_code=new.material_code, **values))
    else:
        result = await conn.execute(update(qualifications).where(
            qualifications.c.supplier_id == new.supplier_id,
            qualifications.c.material_code == new.material_code,
            qualifications.c.version == previous.version).values(**values))
        if result.rowcount != 1:
            return False
    await conn.execute(insert(qualification_history).values(
        supplier_id=new.supplier_id, material_code=new.material_code, version=new.version,
        previous_status=previous.status.value if previous else None,
        new_status=new.status.value, valid_until=new.valid_until, reason=new.reason,
        changed_by=new.changed_by, changed_at=new.changed_at, event_id=event_id))
    return True


async def list_history(conn: AsyncConnection, *, supplier_id: str,
                       material_code: str = "") -> list[Any]:
    """Every qualification change of a supplier, oldest first."""
    query = select(qualification_history).where(
        qualification_history.c.supplier_id == supplier_id)
    if material_code:
        query = query.where(qualification_history.c.material_code == material_code)
    return list(await conn.execute(query.order_by(qualification_history.c.id)))
