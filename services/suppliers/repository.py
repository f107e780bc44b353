"""Data access for suppliers, sites, audits and qualifications (SQLAlchemy Core on the unit
of work): SQL only, domain values in and out."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.suppliers.domain.audits import Audit, AuditOutcome, AuditType
from services.suppliers.domain.qualification import (
    APPROVED,
    Evidence,
    Key,
    Qualification,
    QualificationChange,
    QualificationStatus,
)
from services.suppliers.domain.sites import ApprovedSupplier, Site, Supplier
from services.suppliers.tables import (
    audits,
    qualification_history,
    qualifications,
    sites,
    suppliers,
)


def _evidence(row: Row) -> Evidence:
    return Evidence(audit_id=row.audit_id or "", audit_date=row.audit_date,
                    quality_agreement_ref=row.quality_agreement_ref or "",
                    questionnaire_ref=row.questionnaire_ref or "")


def _evidence_values(evidence: Evidence) -> dict[str, object]:
    return {"audit_id": evidence.audit_id or None, "audit_date": evidence.audit_date,
            "quality_agreement_ref": evidence.quality_agreement_ref or None,
            "questionnaire_ref": evidence.questionnaire_ref or None}


def _qualification(row: Row) -> Qualification:
    return Qualification(
        supplier_id=row.supplier_id, site_id=row.site_id, material_code=row.material_code,
        status=QualificationStatus(row.status), valid_until=row.valid_until,
        version=row.version, reason=row.reason, changed_by=row.changed_by,
        changed_at=row.changed_at, evidence=_evidence(row))


def _qualification_from_history(row: Row) -> Qualification:
    """The qualification as it stood right after the change in history row `row`."""
    return Qualification(
        supplier_id=row.supplier_id, site_id=row.site_id, material_code=row.material_code,
        status=QualificationStatus(row.new_status), valid_until=row.valid_until,
        version=row.version, reason=row.reason, changed_by=row.changed_by,
        changed_at=row.changed_at, evidence=_evidence(row))


def _change(row: Row) -> QualificationChange:
    return QualificationChange(
        sequence=row.id, qualification=_qualification_from_history(row),
        previous_status=(QualificationStatus(row.previous_status) if row.previous_status
                         else None),
        event_id=row.event_id)


def _audit(row: Row) -> Audit:
    return Audit(
        audit_id=row.audit_id, supplier_id=row.supplier_id, site_id=row.site_id,
        type=AuditType(row.type), audit_date=row.audit_date, auditor=row.auditor,
        outcome=AuditOutcome(row.outcome), critical_findings=row.critical_findings,
        major_findings=row.major_findings, minor_findings=row.minor_findings,
        next_audit_due=row.next_audit_due, summary=row.summary,
        recorded_by=row.recorded_by, recorded_at=row.recorded_at)


def _site(row: Row) -> Site:
    return Site(supplier_id=row.supplier_id, site_id=row.site_id, name=row.name,
                address=row.address, country=row.country, created_by=row.created_by,
                created_at=row.created_at)


# Suppliers and sites

async def get_supplier(conn: AsyncConnection, *, supplier_id: str) -> Supplier | None:
    """The supplier (without its sites and qualifications), or None."""
    row = (await conn.execute(
        select(suppliers).where(suppliers.c.supplier_id == supplier_id))).first()
    return (Supplier(supplier_id=row.supplier_id, name=row.name, created_by=row.created_by,
                     created_at=row.created_at) if row else None)


async def add_supplier(conn: AsyncConnection, *, supplier: Supplier) -> None:
    """Insert a supplier (IntegrityError if its id is taken)."""
    await conn.execute(insert(suppliers).values(
        supplier_id=supplier.supplier_id, name=supplier.name,
        created_by=supplier.created_by, created_at=supplier.created_at))


async def get_site(conn: AsyncConnection, *, supplier_id: str, site_id: str) -> Site | None:
    """The site, or None."""
    row = (await conn.execute(select(sites).where(
        sites.c.supplier_id == supplier_id, sites.c.site_id == site_id))).first()
    return _site(row) if row else None


async def add_site(conn: AsyncConnection, *, site: Site) -> None:
    """Insert a site (IntegrityError if it exists)."""
    await conn.execute(insert(sites).values(
        supplier_id=site.supplier_id, site_id=site.site_id, name=site.name,
        address=site.address, country=site.country, created_by=site.created_by,
        created_at=site.created_at))


async def list_sites(conn: AsyncConnection, *, supplier_id: str) -> list[Site]:
    """A supplier's sites, by site id."""
    rows = await conn.execute(
        select(sites).where(sites.c.supplier_id == supplier_id).order_by(sites.c.site_id))
    return [_site(row) for row in rows]


# Audits

async def get_audit(conn: AsyncConnection, *, audit_id: str) -> tuple[Audit, str] | None:
    """The audit and the fingerprint of the request that recorded it, or None."""
    row = (await conn.execute(select(audits).where(audits.c.audit_id == audit_id))).first()
    return (_audit(row), row.fingerprint) if row else None


async def add_audit(conn: AsyncConnection, *, audit: Audit, fingerprint: str) -> None:
    """Insert an audit (IntegrityError if its id is taken)."""
    await conn.execute(insert(audits).values(
        audit_id=audit.audit_id, supplier_id=audit.supplier_id, site_id=audit.site_id,
        type=audit.type.value, audit_date=audit.audit_date, auditor=audit.auditor,
        outcome=audit.outcome.value, critical_findings=audit.critical_findings,
        major_findings=audit.major_findings, minor_findings=audit.minor_findings,
        next_audit_due=audit.next_audit_due, summary=audit.summary,
        recorded_by=audit.recorded_by, recorded_at=audit.recorded_at, fingerprint=fingerprint))


async def list_audits(conn: AsyncConnection, *, supplier_id: str, site_id: str = "") -> list[Audit]:
    """A supplier's audits (of one site when given), by date."""
    query = select(audits).where(audits.c.supplier_id == supplier_id)
    if site_id:
        query = query.where(audits.c.site_id == site_id)
    rows = await conn.execute(query.order_by(audits.c.audit_date, audits.c.audit_id))
    return [_audit(row) for row in rows]


# Current qualifications

def _key_filter(key: Key) -> ColumnElement[bool]:
    return and_(qualifications.c.supplier_id == key[0], qualifications.c.site_id == key[1],
                qualifications.c.material_code == key[2])


async def get_qualification(conn: AsyncConnection, *, key: Key,
                            for_update: bool = False) -> Qualification | None:
    """The current qualification of a site for a material, or None."""
    query = select(qualifications).where(_key_filter(key))
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _qualification(row) if row else None


async def list_qualifications(conn: AsyncConnection, *, supplier_id: str) -> list[Qualification]:
    """Current qualifications of a supplier, by site, then material."""
    rows = await conn.execute(select(qualifications)
                              .where(qualifications.c.supplier_id == supplier_id)
                              .order_by(qualifications.c.site_id,
                                        qualifications.c.material_code))
    return [_qualification(row) for row in rows]


async def save_qualification(conn: AsyncConnection, *, new: Qualification,
                             previous: Qualification | None, event_id: str) -> bool:
    """Write the new state if nobody changed it meanwhile, and its history row.

    Returns False when a concurrent change won (the caller answers ABORTED); a concurrent
    first change of the same qualification is an IntegrityError.
    """
    key = new.key
    values = {
        "status": new.status.value, "valid_until": new.valid_until, "version": new.version,
        "reason": new.reason, "changed_by": new.changed_by, "changed_at": new.changed_at,
        **_evidence_values(new.evidence),
    }
    if previous is None:
        await conn.execute(insert(qualifications).values(
            supplier_id=key[0], site_id=key[1], material_code=key[2], **values))
    else:
        result = await conn.execute(update(qualifications).where(
            _key_filter(key), qualifications.c.version == previous.version).values(**values))
        if result.rowcount != 1:
            return False
    await conn.execute(insert(qualification_history).values(
        supplier_id=key[0], site_id=key[1], material_code=key[2], version=new.version,
        previous_status=previous.status.value if previous else None,
        new_status=new.status.value, valid_until=new.valid_until, reason=new.reason,
        changed_by=new.changed_by, changed_at=new.changed_at, event_id=event_id,
        **_evidence_values(new.evidence)))
    return True


async def lapsed(conn: AsyncConnection, *, now: datetime, limit: int) -> list[Qualification]:
    """Approvals whose valid_until has passed, locked; rows another replica holds are
    skipped (it is expiring them)."""
    rows = await conn.execute(
        select(qualifications)
        .where(qualifications.c.status == APPROVED.value, qualifications.c.valid_until <= now)
        .order_by(qualifications.c.valid_until).limit(limit)
        .with_for_update(skip_locked=True))
    return [_qualification(row) for row in rows]


def _not_warned() -> ColumnElement[bool]:
    return ((qualifications.c.expiry_warned_for.is_(None))
            | (qualifications.c.expiry_warned_for != qualifications.c.valid_until))


async def expiring(conn: AsyncConnection, *, now: datetime, horizon: datetime,
                   limit: int) -> list[Qualification]:
    """Approvals lapsing in (now, horizon] that have not been warned about, locked."""
    rows = await conn.execute(
        select(qualifications)
        .where(qualifications.c.status == APPROVED.value,
               qualifications.c.valid_until > now, qualifications.c.valid_until <= horizon,
               _not_warned())
        .order_by(qualifications.c.valid_until).limit(limit)
        .with_for_update(skip_locked=True))
    return [_qualification(row) for row in rows]


async def mark_warned(conn: AsyncConnection, *, qualification: Qualification) -> bool:
    """Note that `qualification` is being warned about; False when another replica did so
    first or it changed since it was read (SQLite has no row locks: both may read it)."""
    q = qualification
    result = await conn.execute(update(qualifications).where(
        _key_filter(q.key), qualifications.c.version == q.version, _not_warned(),
    ).values(expiry_warned_for=q.valid_until))
    return result.rowcount == 1


# History and the as-of queries

async def history_page(conn: AsyncConnection, *, supplier_id: str, material_code: str,
                       site_id: str, changed_from: datetime | None,
                       changed_before: datetime | None, after_id: int,
                       limit: int) -> list[QualificationChange]:
    """Changes of a supplier in the order recorded, after history id `after_id`."""
    h = qualification_history
    query = select(h).where(h.c.supplier_id == supplier_id, h.c.id > after_id)
    if material_code:
        query = query.where(h.c.material_code == material_code)
    if site_id:
        query = query.where(h.c.site_id == site_id)
    if changed_from is not None:
        query = query.where(h.c.changed_at >= changed_from)
    if changed_before is not None:
        query = query.where(h.c.changed_at < changed_before)
    rows = await conn.execute(query.order_by(h.c.id).limit(limit))
    return [_change(row) for row in rows]


async def qualification_as_of(conn: AsyncConnection, *, key: Key,
                              instant: datetime) -> Qualification | None:
    """The qualification as recorded at `instant`: the last change recorded by then."""
    h = qualification_history
    row = (await conn.execute(
        select(h).where(h.c.supplier_id == key[0], h.c.site_id == key[1],
                        h.c.material_code == key[2], h.c.changed_at <= instant)
        .order_by(h.c.version.desc()).limit(1))).first()
    return _qualification_from_history(row) if row else None


async def approved_as_of(conn: AsyncConnection, *, material_code: str,
                         instant: datetime) -> list[ApprovedSupplier]:
    """Every site approved for the material at `instant`, as recorded by then, with its
    supplier's name; by supplier, then site."""
    h = qualification_history
    last = (select(h.c.supplier_id, h.c.site_id, func.max(h.c.version).label("version"))
            .where(h.c.material_code == material_code, h.c.changed_at <= instant)
            .group_by(h.c.supplier_id, h.c.site_id).subquery())
    rows = await conn.execute(
        select(h, suppliers.c.name.label("supplier_name"),
               sites.c.name.label("site_name"), sites.c.address.label("site_address"),
               sites.c.country.label("site_country"),
               sites.c.created_by.label("site_created_by"),
               sites.c.created_at.label("site_created_at"))
        .join(last, and_(h.c.supplier_id == last.c.supplier_id,
                         h.c.site_id == last.c.site_id, h.c.version == last.c.version))
        .join(suppliers, suppliers.c.supplier_id == h.c.supplier_id)
        .join(sites, and_(sites.c.supplier_id == h.c.supplier_id,
                          sites.c.site_id == h.c.site_id))
        .where(h.c.material_code == material_code,
               h.c.new_status == APPROVED.value,
               h.c.valid_until > instant)
        .order_by(h.c.supplier_id, h.c.site_id))
    return [ApprovedSupplier(
        qualification=_qualification_from_history(row), supplier_name=row.supplier_name,
        site=Site(supplier_id=row.supplier_id, site_id=row.site_id, name=row.site_name,
                  address=row.site_address, country=row.site_country,
                  created_by=row.site_created_by, created_at=row.site_created_at))
        for row in rows]
