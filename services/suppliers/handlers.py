"""Use cases of the suppliers service: each one unit of work."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from lotgate.suppliers.v1 import events_pb2
from lotgate.suppliers.v1 import suppliers_pb2 as pb
from services.suppliers import repository
from services.suppliers.convert import qualification_to_proto, status_to_proto
from services.suppliers.domain import (
    Audit,
    ChangeQualification,
    Qualification,
    QualificationStatus,
    apply,
    check_audit_record,
    expire,
)
from shared import esign, messaging
from shared.audit import record as audit_record
from shared.errors import Aborted, AlreadyExists, FieldViolation, InvalidArgument, NotFound
from shared.logs import get_logger
from shared.protoconv import to_timestamp
from shared.uow import UnitOfWork, as_retry_after_conflict, new_event_id

log = get_logger(__name__)

Key = repository.Key


@dataclass(frozen=True)
class SupplierView:
    row: Any
    sites: list[Any]
    qualifications: list[Qualification]


async def create_supplier(uow: UnitOfWork, *, supplier_id: str, name: str,
                          requested_by: str) -> SupplierView:
    """Register a supplier; a retry with the same name (also one that overlaps the
    original) returns the original."""
    return await as_retry_after_conflict(
        lambda: _create_supplier(uow, supplier_id=supplier_id, name=name,
                                 requested_by=requested_by),
        conflict=f"supplier {supplier_id} was created concurrently; retry")


async def _create_supplier(uow: UnitOfWork, *, supplier_id: str, name: str,
                           requested_by: str) -> SupplierView:
    async with uow:
        existing = await repository.get_supplier(uow.conn, supplier_id=supplier_id)
        if existing is not None:
            if existing.name != name:
                raise AlreadyExists(f"supplier {supplier_id} exists with another name")
            return await _view(uow, existing)
        await repository.add_supplier(uow.conn, supplier_id=supplier_id, name=name,
                                      created_by=requested_by, created_at=uow.clock.now())
        audit_record(uow, "supplier", supplier_id, action="create")
        await uow.commit()
    return await get_supplier(uow, supplier_id=supplier_id)


async def get_supplier(uow: UnitOfWork, *, supplier_id: str) -> SupplierView:
    async with uow:
        return await _view(uow, await _supplier(uow, supplier_id))


async def _view(uow: UnitOfWork, row: Any) -> SupplierView:
    return SupplierView(row, await repository.list_sites(uow.conn, supplier_id=row.supplier_id),
                        await repository.list_qualifications(uow.conn,
                                                             supplier_id=row.supplier_id))


async def _supplier(uow: UnitOfWork, supplier_id: str) -> Any:
    row = await repository.get_supplier(uow.conn, supplier_id=supplier_id)
    if row is None:
        raise NotFound(f"no supplier {supplier_id}", field="supplier_id")
    return row


async def _site(uow: UnitOfWork, supplier_id: str, site_id: str) -> Any:
    await _supplier(uow, supplier_id)
    row = await repository.get_site(uow.conn, supplier_id=supplier_id, site_id=site_id)
    if row is None:
        raise NotFound(f"supplier {supplier_id} has no site {site_id}", field="site_id")
    return row


async def add_site(uow: UnitOfWork, *, supplier_id: str, site_id: str, name: str, address: str,
                   country: str, requested_by: str) -> Any:
    """Register a manufacturing site; a retry with the same details (also one that
    overlaps the original) returns the original."""
    return await as_retry_after_conflict(
        lambda: _add_site(uow, supplier_id=supplier_id, site_id=site_id, name=name,
                          address=address, country=country, requested_by=requested_by),
        conflict=f"site {site_id} was added concurrently; retry")


async def _add_site(uow: UnitOfWork, *, supplier_id: str, site_id: str, name: str,
                    address: str, country: str, requested_by: str) -> Any:
    details = {"name": name, "address": address, "country": country}
    async with uow:
        await _supplier(uow, supplier_id)
        existing = await repository.get_site(uow.conn, supplier_id=supplier_id, site_id=site_id)
        if existing is not None:
            if {k: getattr(existing, k) for k in details} != details:
                raise AlreadyExists(f"site {site_id} of supplier {supplier_id} exists with "
                                    "other details")
            return existing
        await repository.add_site(uow.conn, values={
            "supplier_id": supplier_id, "site_id": site_id, **details,
            "created_by": requested_by, "created_at": uow.clock.now()})
        audit_record(uow, "site", supplier_id, site_id, action="create")
        await uow.commit()
    async with uow:
        return await repository.get_site(uow.conn, supplier_id=supplier_id, site_id=site_id)


async def record_audit(uow: UnitOfWork, audit: Audit, *, fingerprint: str) -> Audit:
    """Record an audit (`recorded_at` is set here); a retry with the same content (also
    one that overlaps the original) returns the original, the same audit id with other
    content is ALREADY_EXISTS."""
    return await as_retry_after_conflict(
        lambda: _record_audit(uow, audit, fingerprint=fingerprint),
        conflict=f"audit {audit.audit_id} was recorded concurrently; retry")


async def _record_audit(uow: UnitOfWork, audit: Audit, *, fingerprint: str) -> Audit:
    async with uow:
        existing = await repository.get_audit(uow.conn, audit_id=audit.audit_id)
        if existing is not None:
            if existing[1] != fingerprint:
                raise AlreadyExists(f"audit {audit.audit_id} was recorded with other content; "
                                    "audits are never edited")
            return existing[0]
        await _site(uow, audit.supplier_id, audit.site_id)
        now = uow.clock.now()
        problems = check_audit_record(audit, now.date())
        if problems:
            raise InvalidArgument([FieldViolation(f, d) for f, d in problems])
        audit = replace(audit, recorded_at=now)
        await repository.add_audit(uow.conn, audit=audit, fingerprint=fingerprint)
        audit_record(uow, "audit", audit.audit_id, action="record", reason=audit.summary)
        await uow.commit()
        return audit


async def list_audits(uow: UnitOfWork, *, supplier_id: str, site_id: str) -> list[Audit]:
    async with uow:
        if site_id:
            await _site(uow, supplier_id, site_id)
        else:
            await _supplier(uow, supplier_id)
        return await repository.list_audits(uow.conn, supplier_id=supplier_id, site_id=site_id)


async def change_qualification(uow: UnitOfWork, command: ChangeQualification) -> Qualification:
    """Apply a QA decision to a site's qualification for one material, with its event."""
    async with uow:
        await _site(uow, command.supplier_id, command.site_id)
        key = (command.supplier_id, command.site_id, command.material_code)
        current = await repository.get_qualification(uow.conn, key=key, for_update=True)
        if command.expected_version is not None:
            actual = current.version if current else 0
            if actual != command.expected_version:
                raise Aborted(f"qualification is at version {actual}, "
                              f"not {command.expected_version}; read it again")
        audit = None
        if command.evidence.audit_id:
            found = await repository.get_audit(uow.conn, audit_id=command.evidence.audit_id)
            audit = found[0] if found else None
        new = apply(current, command, uow.clock.now(), audit=audit)
        signed = qualification_to_proto(new)
        signature = await esign.sign(uow.conn, now=new.changed_at, record_type=QUALIFICATION,
                                     record_id=qualification_record(signed),
                                     fields=qualification_content(signed))
        await _record(uow, current, new, signature)
        await uow.commit()
        return new


# Electronic signatures of QA's qualification decisions (shared.esign): each signs one
# version of a qualification, as QualificationChange and Qualification both show it.
QUALIFICATION = "qualification"


def qualification_record(q: pb.Qualification | pb.QualificationChange) -> str:
    return f"{q.supplier_id}/{q.site_id}/{q.material_code}/{q.version}"


def qualification_content(q: pb.Qualification | pb.QualificationChange) -> dict[str, Any]:
    status = q.new_status if isinstance(q, pb.QualificationChange) else q.status
    return {"supplier_id": q.supplier_id, "site_id": q.site_id,
            "material_code": q.material_code, "version": q.version,
            "status": pb.QualificationStatus.Name(status),
            "valid_until": q.valid_until.ToJsonString() if q.HasField("valid_until") else "",
            "reason": q.reason, "changed_by": q.changed_by}


async def with_signatures(uow: UnitOfWork,
                          shown: list[pb.Qualification] | list[pb.QualificationChange]) -> None:
    """Add to each qualification version its signatures, verified against it."""
    if not shown:
        return
    async with uow:
        found = await esign.signatures_of(
            uow.conn, record_type=QUALIFICATION,
            contents={qualification_record(q): qualification_content(q) for q in shown})
    for q in shown:
        q.signatures.extend(found[qualification_record(q)])


async def _record(uow: UnitOfWork, current: Qualification | None, new: Qualification,
                  signature: Any = None) -> None:
    """Store a change with its history row and its QualificationChanged event (which shows
    the change's signature, when QA signed it)."""
    event = events_pb2.QualificationChanged(
        event_id=new_event_id(), qualification=qualification_to_proto(new),
        previous_status=status_to_proto(current.status if current else None),
        occurred_at=to_timestamp(new.changed_at))
    if signature is not None:
        event.qualification.signatures.append(signature)
    try:
        saved = await repository.save_qualification(uow.conn, new=new, previous=current,
                                                    event_id=event.event_id)
    except IntegrityError as exc:
        raise Aborted("the qualification was changed concurrently; read it again") from exc
    if not saved:
        raise Aborted("the qualification was changed concurrently; read it again")
    uow.emit(messaging.QUALIFICATION_CHANGED, aggregate_id(new), event)
    audit_record(uow, "qualification", new.supplier_id, new.site_id, new.material_code,
                 action=f"set {new.status.value}", reason=new.reason)


def aggregate_id(q: Qualification) -> str:
    """Events of one qualification share this id, so they are published in order."""
    return f"{q.supplier_id}/{q.site_id}/{q.material_code}"


async def expire_lapsed(uow: UnitOfWork, *, limit: int = 100) -> int:
    """Move QUALIFIED qualifications whose valid_until has passed to EXPIRED, with events.

    Safe with several replicas: rows are locked, and ones another replica holds skipped.
    """
    async with uow:
        now = uow.clock.now()
        done = 0
        for current in await repository.lapsed(uow.conn, now=now, limit=limit):
            command = expire(current, now)
            if command is None:
                continue
            new = apply(current, command, now)
            await _record(uow, current, new)
            log.warning("qualification_expired", alert=True, supplier_id=new.supplier_id,
                        site_id=new.site_id, material_code=new.material_code,
                        valid_until=new.valid_until.isoformat() if new.valid_until else None)
            done += 1
        if done:
            await uow.commit()
        return done


async def warn_expiring(uow: UnitOfWork, *, ahead: timedelta, limit: int = 100) -> int:
    """Announce each approval that lapses within `ahead`, once per valid_until."""
    async with uow:
        now = uow.clock.now()
        done = 0
        for q in await repository.expiring(uow.conn, now=now, horizon=now + ahead, limit=limit):
            if not await repository.mark_warned(uow.conn, qualification=q):
                continue  # another replica warned about it
            uow.emit(messaging.QUALIFICATION_EXPIRING, aggregate_id(q),
                     events_pb2.QualificationExpiring(
                         event_id=new_event_id(), qualification=qualification_to_proto(q),
                         expires_at=to_timestamp(q.valid_until), occurred_at=to_timestamp(now)))
            log.info("qualification_expiring", supplier_id=q.supplier_id, site_id=q.site_id,
                     material_code=q.material_code,
                     valid_until=q.valid_until.isoformat() if q.valid_until else None)
            done += 1
        if done:
            await uow.commit()
        return done


async def get_qualification(uow: UnitOfWork, *, key: Key, as_of: datetime | None
                            ) -> tuple[Qualification, QualificationStatus]:
    """The qualification now or as recorded at `as_of`, and the status in force then."""
    async with uow:
        await _site(uow, key[0], key[1])
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


async def history_page(uow: UnitOfWork, *, supplier_id: str, **filters: Any) -> list[Any]:
    async with uow:
        await _supplier(uow, supplier_id)
        return await repository.history_page(uow.conn, supplier_id=supplier_id, **filters)


async def approved_suppliers(uow: UnitOfWork, *, material_code: str,
                             as_of: datetime | None) -> list[tuple[Qualification, Any]]:
    async with uow:
        return await repository.approved_as_of(uow.conn, material_code=material_code,
                                               instant=as_of or uow.clock.now())
