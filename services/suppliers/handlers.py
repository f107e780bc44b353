"""Writes of the suppliers service: each takes a command, runs in one unit of work, and
returns domain values. The rules are the domain's; the SQL is the repository's; the
messages are convert's."""

from __future__ import annotations

from datetime import timedelta

from services.suppliers import repository
from services.suppliers.commands import AddSite, ChangeQualification, CreateSupplier, RecordAudit
from services.suppliers.convert import (
    QUALIFICATION,
    Signature,
    qualification_changed,
    qualification_expiring,
    signed_fields,
)
from services.suppliers.domain.audits import Audit, check_audit_record
from services.suppliers.domain.lifecycle import apply, check_version, expire
from services.suppliers.domain.qualification import Qualification
from services.suppliers.domain.sites import Site, Supplier, check_same_site, check_same_supplier
from services.suppliers.queries import get_supplier, site_or_not_found, supplier_or_not_found
from shared import esign, messaging
from shared.audit import record as audit_record
from shared.errors import Aborted, AlreadyExists, FieldViolation, InvalidArgument
from shared.logs import get_logger
from shared.uow import UnitOfWork, as_retry_after_conflict, new_event_id

log = get_logger(__name__)


async def create_supplier(uow: UnitOfWork, command: CreateSupplier) -> Supplier:
    """Register a supplier; a retry with the same name (also one that overlaps the
    original) returns the original."""
    return await as_retry_after_conflict(
        lambda: _create_supplier(uow, command),
        conflict=f"supplier {command.supplier_id} was created concurrently; retry")


async def _create_supplier(uow: UnitOfWork, command: CreateSupplier) -> Supplier:
    async with uow:
        existing = await repository.get_supplier(uow.conn, supplier_id=command.supplier_id)
        if existing is None:
            await repository.add_supplier(uow.conn, supplier=Supplier(
                supplier_id=command.supplier_id, name=command.name,
                created_by=command.requested_by, created_at=uow.clock.now()))
            audit_record(uow, "supplier", command.supplier_id, action="create")
            await uow.commit()
        else:
            check_same_supplier(existing, name=command.name)
    return await get_supplier(uow, supplier_id=command.supplier_id)


async def add_site(uow: UnitOfWork, command: AddSite) -> Site:
    """Register a manufacturing site; a retry with the same details (also one that
    overlaps the original) returns the original."""
    return await as_retry_after_conflict(
        lambda: _add_site(uow, command),
        conflict=f"site {command.site_id} was added concurrently; retry")


async def _add_site(uow: UnitOfWork, command: AddSite) -> Site:
    async with uow:
        await supplier_or_not_found(uow, command.supplier_id)
        existing = await repository.get_site(uow.conn, supplier_id=command.supplier_id,
                                             site_id=command.site_id)
        if existing is not None:
            check_same_site(existing, name=command.name, address=command.address,
                            country=command.country)
            return existing
        site = Site(supplier_id=command.supplier_id, site_id=command.site_id,
                    name=command.name, address=command.address, country=command.country,
                    created_by=command.requested_by, created_at=uow.clock.now())
        await repository.add_site(uow.conn, site=site)
        audit_record(uow, "site", site.supplier_id, site.site_id, action="create")
        await uow.commit()
        return site


async def record_audit(uow: UnitOfWork, command: RecordAudit) -> Audit:
    """Record an audit (`recorded_at` is set here); a retry with the same content (also
    one that overlaps the original) returns the original, the same audit id with other
    content is ALREADY_EXISTS."""
    return await as_retry_after_conflict(
        lambda: _record_audit(uow, command),
        conflict=f"audit {command.audit_id} was recorded concurrently; retry")


async def _record_audit(uow: UnitOfWork, command: RecordAudit) -> Audit:
    async with uow:
        existing = await repository.get_audit(uow.conn, audit_id=command.audit_id)
        if existing is not None:
            if existing[1] != command.fingerprint:
                raise AlreadyExists(f"audit {command.audit_id} was recorded with other "
                                    "content; audits are never edited")
            return existing[0]
        await site_or_not_found(uow, command.supplier_id, command.site_id)
        now = uow.clock.now()
        audit = Audit(
            audit_id=command.audit_id, supplier_id=command.supplier_id,
            site_id=command.site_id, type=command.type, audit_date=command.audit_date,
            auditor=command.auditor, outcome=command.outcome,
            critical_findings=command.critical_findings,
            major_findings=command.major_findings, minor_findings=command.minor_findings,
            next_audit_due=command.next_audit_due, summary=command.summary,
            recorded_by=command.requested_by, recorded_at=now)
        problems = check_audit_record(audit, now.date())
        if problems:
            raise InvalidArgument([FieldViolation(f, d) for f, d in problems])
        await repository.add_audit(uow.conn, audit=audit, fingerprint=command.fingerprint)
        audit_record(uow, "audit", audit.audit_id, action="record", reason=audit.summary)
        await uow.commit()
        return audit


async def change_qualification(uow: UnitOfWork, command: ChangeQualification) -> Qualification:
    """Apply a QA decision to a site's qualification for one material, with its signature
    and its event."""
    async with uow:
        await site_or_not_found(uow, command.supplier_id, command.site_id)
        key = (command.supplier_id, command.site_id, command.material_code)
        current = await repository.get_qualification(uow.conn, key=key, for_update=True)
        check_version(current, command.expected_version)
        audit = None
        if command.evidence.audit_id:
            found = await repository.get_audit(uow.conn, audit_id=command.evidence.audit_id)
            audit = found[0] if found else None
        new = apply(current, command, uow.clock.now(), audit=audit)
        record_id, content = signed_fields(new)
        signature = await esign.sign(uow.conn, now=new.changed_at, record_type=QUALIFICATION,
                                     record_id=record_id, fields=content)
        await _save(uow, current, new, signature)
        await uow.commit()
        return new


async def _save(uow: UnitOfWork, current: Qualification | None, new: Qualification,
                signature: Signature | None = None) -> None:
    """Store a change with its history row and its QualificationChanged event."""
    event = qualification_changed(new, previous=current.status if current else None,
                                  signature=signature, event_id=new_event_id())
    if not await repository.save_qualification(uow.conn, new=new, previous=current,
                                               event_id=event.event_id):
        raise Aborted("the qualification was changed concurrently; read it again")
    uow.emit(messaging.QUALIFICATION_CHANGED, aggregate_id(new), event)
    audit_record(uow, "qualification", new.supplier_id, new.site_id, new.material_code,
                 action=f"set {new.status.value}", reason=new.reason)


def aggregate_id(q: Qualification) -> str:
    """Events of one qualification share this id, so they are published in order."""
    return f"{q.supplier_id}/{q.site_id}/{q.material_code}"


async def expire_lapsed(uow: UnitOfWork, *, limit: int = 100) -> int:
    """Move approvals whose valid_until has passed to EXPIRED, with events.

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
            await _save(uow, current, new)
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
                     qualification_expiring(q, now=now, event_id=new_event_id()))
            log.info("qualification_expiring", supplier_id=q.supplier_id, site_id=q.site_id,
                     material_code=q.material_code,
                     valid_until=q.valid_until.isoformat() if q.valid_until else None)
            done += 1
        if done:
            await uow.commit()
        return done
