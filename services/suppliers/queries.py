"""Reads of the suppliers service: each in one unit of work, answering domain values (or
NOT_FOUND naming the field)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from services.suppliers import repository
from services.suppliers.convert import QUALIFICATION, Signature
from services.suppliers.domain.audits import Audit
from services.suppliers.domain.qualification import (
    Key,
    Qualification,
    QualificationChange,
    QualificationStatus,
)
from services.suppliers.domain.sites import ApprovedSupplier, Site, Supplier
from shared import esign
from shared.errors import NotFound
from shared.uow import UnitOfWork


async def supplier_or_not_found(uow: UnitOfWork, supplier_id: str) -> Supplier:
    """The supplier, in the caller's unit of work."""
    found = await repository.get_supplier(uow.conn, supplier_id=supplier_id)
    if found is None:
        raise NotFound(f"no supplier {supplier_id}", field="supplier_id")
    return found


async def site_or_not_found(uow: UnitOfWork, supplier_id: str, site_id: str) -> Site:
    """The site of a known supplier, in the caller's unit of work."""
    await supplier_or_not_found(uow, supplier_id)
    found = await repository.get_site(uow.conn, supplier_id=supplier_id, site_id=site_id)
    if found is None:
        raise NotFound(f"supplier {supplier_id} has no site {site_id}", field="site_id")
    return found


async def get_supplier(uow: UnitOfWork, *, supplier_id: str) -> Supplier:
    """The supplier with its sites and its current qualifications."""
    async with uow:
        supplier = await supplier_or_not_found(uow, supplier_id)
        return replace(
            supplier,
            sites=tuple(await repository.list_sites(uow.conn, supplier_id=supplier_id)),
            qualifications=tuple(await repository.list_qualifications(
                uow.conn, supplier_id=supplier_id)))


async def list_audits(uow: UnitOfWork, *, supplier_id: str, site_id: str) -> list[Audit]:
    async with uow:
        if site_id:
            await site_or_not_found(uow, supplier_id, site_id)
        else:
            await supplier_or_not_found(uow, supplier_id)
        return await repository.list_audits(uow.conn, supplier_id=supplier_id, site_id=site_id)


async def get_qualification(uow: UnitOfWork, *, key: Key, as_of: datetime | None
                            ) -> tuple[Qualification, QualificationStatus]:
    """The qualification now or as recorded at `as_of`, and the status in force then."""
    async with uow:
        await site_or_not_found(uow, key[0], key[1])
        instant = as_of or uow.clock.now()
        if as_of is None:
            found = await repository.get_qualification(uow.conn, key=key)
        else:
            found = await repository.qualification_as_of(uow.conn, key=key, instant=as_of)
        if found is None:
            when = f" as of {as_of.isoformat()}" if as_of else ""
            raise NotFound(f"no qualification of site {key[1]} of supplier {key[0]} for "
                           f"{key[2]} was on record{when}")
        return found, found.status_at(instant)


async def history_page(uow: UnitOfWork, *, supplier_id: str, material_code: str,
                       site_id: str, changed_from: datetime | None,
                       changed_before: datetime | None, after_id: int,
                       limit: int) -> list[QualificationChange]:
    """A supplier's changes in the order recorded, after the change `after_id`."""
    async with uow:
        await supplier_or_not_found(uow, supplier_id)
        return await repository.history_page(
            uow.conn, supplier_id=supplier_id, material_code=material_code, site_id=site_id,
            changed_from=changed_from, changed_before=changed_before, after_id=after_id,
            limit=limit)


async def approved_suppliers(uow: UnitOfWork, *, material_code: str,
                             as_of: datetime | None) -> list[ApprovedSupplier]:
    """The sites approved for a material now, or as recorded at `as_of`."""
    async with uow:
        return await repository.approved_as_of(uow.conn, material_code=material_code,
                                               instant=as_of or uow.clock.now())


async def signatures_of(uow: UnitOfWork, contents: Mapping[str, Mapping[str, object]]
                        ) -> dict[str, list[Signature]]:
    """The signatures of qualification versions (record id -> content as shown now), each
    verified against its version."""
    if not contents:
        return {}
    async with uow:
        return await esign.signatures_of(uow.conn, record_type=QUALIFICATION,
                                         contents=contents)
