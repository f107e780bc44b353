"""Translations between the suppliers domain and its protobuf contract: messages, events
and what a signature signs."""

from __future__ import annotations

from datetime import date, datetime

from lotgate.signatures.v1.signatures_pb2 import Signature
from lotgate.suppliers.v1 import events_pb2
from lotgate.suppliers.v1 import suppliers_pb2 as pb
from services.suppliers.domain.audits import Audit, AuditOutcome, AuditType
from services.suppliers.domain.qualification import (
    Evidence,
    Qualification,
    QualificationChange,
    QualificationStatus,
)
from services.suppliers.domain.sites import ApprovedSupplier, Site, Supplier
from shared.protoconv import to_timestamp

_STATUS = {
    None: pb.QUALIFICATION_STATUS_UNSPECIFIED,
    QualificationStatus.PENDING: pb.QUALIFICATION_STATUS_PENDING,
    QualificationStatus.QUALIFIED: pb.QUALIFICATION_STATUS_QUALIFIED,
    QualificationStatus.SUSPENDED: pb.QUALIFICATION_STATUS_SUSPENDED,
    QualificationStatus.DISQUALIFIED: pb.QUALIFICATION_STATUS_DISQUALIFIED,
    QualificationStatus.EXPIRED: pb.QUALIFICATION_STATUS_EXPIRED,
}
AUDIT_TYPES = {
    AuditType.ON_SITE: pb.AUDIT_TYPE_ON_SITE,
    AuditType.REMOTE: pb.AUDIT_TYPE_REMOTE,
    AuditType.QUESTIONNAIRE: pb.AUDIT_TYPE_QUESTIONNAIRE,
}
AUDIT_TYPES_FROM_PROTO = {v: k for k, v in AUDIT_TYPES.items()}
AUDIT_OUTCOMES = {
    AuditOutcome.APPROVED: pb.AUDIT_OUTCOME_APPROVED,
    AuditOutcome.APPROVED_WITH_CONDITIONS: pb.AUDIT_OUTCOME_APPROVED_WITH_CONDITIONS,
    AuditOutcome.NOT_APPROVED: pb.AUDIT_OUTCOME_NOT_APPROVED,
}
AUDIT_OUTCOMES_FROM_PROTO = {v: k for k, v in AUDIT_OUTCOMES.items()}


def status_to_proto(status: QualificationStatus | None) -> int:
    return _STATUS[status]


def _day(value: date | None) -> str:
    return value.isoformat() if value else ""


def evidence_to_proto(e: Evidence) -> pb.Evidence:
    return pb.Evidence(audit_id=e.audit_id, audit_date=_day(e.audit_date),
                       quality_agreement_ref=e.quality_agreement_ref,
                       questionnaire_ref=e.questionnaire_ref)


def evidence_from_proto(e: pb.Evidence) -> Evidence:
    return Evidence(audit_id=e.audit_id.strip(),
                    quality_agreement_ref=e.quality_agreement_ref.strip(),
                    questionnaire_ref=e.questionnaire_ref.strip())


def qualification_to_proto(q: Qualification) -> pb.Qualification:
    return pb.Qualification(
        supplier_id=q.supplier_id, site_id=q.site_id, material_code=q.material_code,
        status=_STATUS[q.status], valid_until=to_timestamp(q.valid_until),
        version=q.version, reason=q.reason, changed_by=q.changed_by,
        changed_at=to_timestamp(q.changed_at), evidence=evidence_to_proto(q.evidence))


def site_to_proto(site: Site) -> pb.Site:
    return pb.Site(supplier_id=site.supplier_id, site_id=site.site_id, name=site.name,
                   address=site.address, country=site.country,
                   created_at=to_timestamp(site.created_at))


def supplier_to_proto(supplier: Supplier) -> pb.Supplier:
    return pb.Supplier(supplier_id=supplier.supplier_id, name=supplier.name,
                       created_at=to_timestamp(supplier.created_at),
                       sites=[site_to_proto(s) for s in supplier.sites],
                       qualifications=[qualification_to_proto(q)
                                       for q in supplier.qualifications])


def approved_to_proto(a: ApprovedSupplier) -> pb.ApprovedSupplier:
    q, site = a.qualification, a.site
    return pb.ApprovedSupplier(
        qualification=qualification_to_proto(q), supplier_name=a.supplier_name,
        site=pb.Site(supplier_id=q.supplier_id, site_id=q.site_id, name=site.name,
                     address=site.address, country=site.country))


def audit_to_proto(a: Audit) -> pb.Audit:
    return pb.Audit(
        audit_id=a.audit_id, supplier_id=a.supplier_id, site_id=a.site_id,
        type=AUDIT_TYPES[a.type], audit_date=_day(a.audit_date), auditor=a.auditor,
        outcome=AUDIT_OUTCOMES[a.outcome], critical_findings=a.critical_findings,
        major_findings=a.major_findings, minor_findings=a.minor_findings,
        next_audit_due=_day(a.next_audit_due), summary=a.summary, recorded_by=a.recorded_by,
        recorded_at=to_timestamp(a.recorded_at))


def change_to_proto(change: QualificationChange) -> pb.QualificationChange:
    q = change.qualification
    return pb.QualificationChange(
        sequence=change.sequence, supplier_id=q.supplier_id, site_id=q.site_id,
        material_code=q.material_code, version=q.version,
        previous_status=_STATUS[change.previous_status], new_status=_STATUS[q.status],
        valid_until=to_timestamp(q.valid_until), reason=q.reason,
        changed_by=q.changed_by, changed_at=to_timestamp(q.changed_at),
        event_id=change.event_id, evidence=evidence_to_proto(q.evidence))


# Events

def qualification_changed(new: Qualification, *, previous: QualificationStatus | None,
                          signature: Signature | None, event_id: str
                          ) -> events_pb2.QualificationChanged:
    """The event of a change; it shows the change's signature, when QA signed it."""
    event = events_pb2.QualificationChanged(
        event_id=event_id, qualification=qualification_to_proto(new),
        previous_status=_STATUS[previous], occurred_at=to_timestamp(new.changed_at))
    if signature is not None:
        event.qualification.signatures.append(signature)
    return event


def qualification_expiring(q: Qualification, *, now: datetime, event_id: str
                           ) -> events_pb2.QualificationExpiring:
    return events_pb2.QualificationExpiring(
        event_id=event_id, qualification=qualification_to_proto(q),
        expires_at=to_timestamp(q.valid_until), occurred_at=to_timestamp(now))


# Electronic signatures of QA's qualification decisions (shared.esign): each signs one
# version of a qualification, as QualificationChange and Qualification both show it.

QUALIFICATION = "qualification"


def signed_record(q: pb.Qualification | pb.QualificationChange) -> str:
    return f"{q.supplier_id}/{q.site_id}/{q.material_code}/{q.version}"


def signed_content(q: pb.Qualification | pb.QualificationChange) -> dict[str, object]:
    status = q.new_status if isinstance(q, pb.QualificationChange) else q.status
    return {"supplier_id": q.supplier_id, "site_id": q.site_id,
            "material_code": q.material_code, "version": q.version,
            "status": pb.QualificationStatus.Name(status),
            "valid_until": q.valid_until.ToJsonString() if q.HasField("valid_until") else "",
            "reason": q.reason, "changed_by": q.changed_by}


def signed_fields(q: Qualification) -> tuple[str, dict[str, object]]:
    """(record id, content) that QA's signature of this version of `q` covers."""
    shown = qualification_to_proto(q)
    return signed_record(shown), signed_content(shown)
