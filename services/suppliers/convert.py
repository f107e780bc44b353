"""Translations between the suppliers domain and its protobuf contract."""

from __future__ import annotations

from datetime import date
from typing import Any

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from services.suppliers.domain import (
    Audit,
    AuditOutcome,
    AuditType,
    Evidence,
    Qualification,
    QualificationStatus,
)
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


def site_to_proto(row: Any) -> pb.Site:
    return pb.Site(supplier_id=row.supplier_id, site_id=row.site_id, name=row.name,
                   address=row.address, country=row.country,
                   created_at=to_timestamp(row.created_at))


def supplier_to_proto(row: Any, sites: list[Any],
                      qualifications: list[Qualification]) -> pb.Supplier:
    return pb.Supplier(supplier_id=row.supplier_id, name=row.name,
                       created_at=to_timestamp(row.created_at),
                       sites=[site_to_proto(s) for s in sites],
                       qualifications=[qualification_to_proto(q) for q in qualifications])


def audit_to_proto(a: Audit) -> pb.Audit:
    return pb.Audit(
        audit_id=a.audit_id, supplier_id=a.supplier_id, site_id=a.site_id,
        type=AUDIT_TYPES[a.type], audit_date=_day(a.audit_date), auditor=a.auditor,
        outcome=AUDIT_OUTCOMES[a.outcome], critical_findings=a.critical_findings,
        major_findings=a.major_findings, minor_findings=a.minor_findings,
        next_audit_due=_day(a.next_audit_due), summary=a.summary, recorded_by=a.recorded_by,
        recorded_at=to_timestamp(a.recorded_at))


def change_to_proto(row: Any) -> pb.QualificationChange:
    previous = QualificationStatus(row.previous_status) if row.previous_status else None
    return pb.QualificationChange(
        sequence=row.id, supplier_id=row.supplier_id, site_id=row.site_id,
        material_code=row.material_code, version=row.version,
        previous_status=_STATUS[previous], new_status=_STATUS[QualificationStatus(row.new_status)],
        valid_until=to_timestamp(row.valid_until), reason=row.reason,
        changed_by=row.changed_by, changed_at=to_timestamp(row.changed_at),
        event_id=row.event_id,
        evidence=pb.Evidence(audit_id=row.audit_id or "", audit_date=_day(row.audit_date),
                             quality_agreement_ref=row.quality_agreement_ref or "",
                             questionnaire_ref=row.questionnaire_ref or ""))
