"""Translations between the suppliers domain and its protobuf contract."""

from __future__ import annotations

from typing import Any

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from services.suppliers.domain import Qualification, QualificationStatus
from shared.protoconv import to_timestamp

_STATUS = {
    None: pb.QUALIFICATION_STATUS_UNSPECIFIED,
    QualificationStatus.PENDING: pb.QUALIFICATION_STATUS_PENDING,
    QualificationStatus.QUALIFIED: pb.QUALIFICATION_STATUS_QUALIFIED,
    QualificationStatus.SUSPENDED: pb.QUALIFICATION_STATUS_SUSPENDED,
    QualificationStatus.DISQUALIFIED: pb.QUALIFICATION_STATUS_DISQUALIFIED,
}


def status_to_proto(status: QualificationStatus | None) -> int:
    return _STATUS[status]


def qualification_to_proto(q: Qualification) -> pb.Qualification:
    return pb.Qualification(
        supplier_id=q.supplier_id, material_code=q.material_code,
        status=_STATUS[q.status], valid_until=to_timestamp(q.valid_until),
        version=q.version, reason=q.reason, changed_by=q.changed_by,
        changed_at=to_timestamp(q.changed_at))


def supplier_to_proto(row: Any, qualifications: list[Qualification]) -> pb.Supplier:
    return pb.Supplier(supplier_id=row.supplier_id, name=row.name,
                       created_at=to_timestamp(row.created_at),
                       qualifications=[qualification_to_proto(q) for q in qualifications])


def change_to_proto(row: Any) -> pb.QualificationChange:
    previous = QualificationStatus(row.previous_status) if row.previous_status else None
    return pb.QualificationChange(
        supplier_id=row.supplier_id, material_code=row.material_code, version=row.version,
        previous_status=_STATUS[previous], new_status=_STATUS[QualificationStatus(row.new_status)],
        valid_until=to_timestamp(row.valid_until), reason=row.reason,
        changed_by=row.changed_by, changed_at=to_timestamp(row.changed_at),
        event_id=row.event_id)
