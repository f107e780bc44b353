"""Translations between the lots domain and its protobuf contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots.domain import LotStatus, ReviewState, Unmet
from shared.protoconv import to_timestamp

STATUS_TO_PROTO = {
    None: pb.LOT_STATUS_UNSPECIFIED,
    LotStatus.QUARANTINE: pb.LOT_STATUS_QUARANTINE,
    LotStatus.RELEASED: pb.LOT_STATUS_RELEASED,
    LotStatus.REJECTED: pb.LOT_STATUS_REJECTED,
    LotStatus.ON_HOLD: pb.LOT_STATUS_ON_HOLD,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items() if k is not None}
REVIEW_STATE_TO_PROTO = {
    ReviewState.OPEN: pb.REVIEW_STATE_OPEN,
    ReviewState.CLOSED: pb.REVIEW_STATE_CLOSED,
}
REVIEW_STATE_FROM_PROTO = {v: k for k, v in REVIEW_STATE_TO_PROTO.items()}


def release_status(lot_id: str, status: LotStatus, version: int, unmet: tuple[Unmet, ...],
                   decided_at: datetime) -> pb.ReleaseStatus:
    return pb.ReleaseStatus(
        lot_id=lot_id, status=STATUS_TO_PROTO[status], version=version,
        unmet=[pb.UnmetCondition(code=u.code, message=u.message, rule=u.rule) for u in unmet],
        decided_at=to_timestamp(decided_at))


def lot_to_proto(row: Any, status: pb.ReleaseStatus) -> pb.Lot:
    return pb.Lot(
        lot_id=row.lot_id, material_code=row.material_code, supplier_id=row.supplier_id,
        supplier_site_id=row.supplier_site_id, supplier_lot_number=row.supplier_lot_number,
        quantity=pb.Quantity(value=row.quantity_value, unit=row.quantity_unit),
        container_count=row.container_count, expiry_date=row.expiry_date.isoformat(),
        received_at=to_timestamp(row.received_at), release_status=status)


def review_to_proto(row: Any) -> pb.LotReview:
    """A row of lot_reviews (or a dict-like with its columns) as a LotReview."""
    return pb.LotReview(
        review_id=row.review_id, lot_id=row.lot_id, supplier_id=row.supplier_id,
        supplier_site_id=row.supplier_site_id, material_code=row.material_code,
        qualification_status=row.qualification_status,
        qualification_version=row.qualification_version, reason=row.reason,
        opened_at=to_timestamp(row.opened_at),
        state=REVIEW_STATE_TO_PROTO[ReviewState(row.state)],
        conclusion=row.conclusion or "", closed_by=row.closed_by or "",
        closed_at=to_timestamp(row.closed_at))
