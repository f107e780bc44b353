"""Translations between the lots domain and its protobuf contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots.domain import (
    DecisionInputs,
    LotStatus,
    ReleasePolicy,
    ReviewState,
    TestKind,
    Unmet,
)
from shared.protoconv import to_timestamp

STATUS_TO_PROTO = {
    None: pb.LOT_STATUS_UNSPECIFIED,
    LotStatus.QUARANTINE: pb.LOT_STATUS_QUARANTINE,
    LotStatus.RELEASED: pb.LOT_STATUS_RELEASED,
    LotStatus.REJECTED: pb.LOT_STATUS_REJECTED,
    LotStatus.ON_HOLD: pb.LOT_STATUS_ON_HOLD,
    LotStatus.RELEASABLE: pb.LOT_STATUS_RELEASABLE,
    LotStatus.EXPIRED: pb.LOT_STATUS_EXPIRED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items() if k is not None}
POLICY_TO_PROTO = {
    ReleasePolicy.AUTOMATIC: pb.RELEASE_POLICY_AUTOMATIC,
    ReleasePolicy.QA_RELEASE: pb.RELEASE_POLICY_QA_RELEASE,
}
POLICY_FROM_PROTO = {v: k for k, v in POLICY_TO_PROTO.items()}
REVIEW_STATE_TO_PROTO = {
    ReviewState.OPEN: pb.REVIEW_STATE_OPEN,
    ReviewState.CLOSED: pb.REVIEW_STATE_CLOSED,
}
REVIEW_STATE_FROM_PROTO = {v: k for k, v in REVIEW_STATE_TO_PROTO.items()}


def release_status(lot_id: str, status: LotStatus, version: int, unmet: tuple[Unmet, ...],
                   decided_at: datetime) -> pb.ReleaseStatus:
    return pb.ReleaseStatus(
        lot_id=lot_id, status=STATUS_TO_PROTO[status], version=version,
        unmet=unmet_to_proto(unmet), decided_at=to_timestamp(decided_at))


def unmet_to_proto(unmet: tuple[Unmet, ...]) -> list[pb.UnmetCondition]:
    return [pb.UnmetCondition(code=u.code, message=u.message, rule=u.rule) for u in unmet]


def inputs_to_proto(inputs: DecisionInputs, *, rule_status: LotStatus | None,
                    required_tests: tuple[TestKind, ...] | None,
                    counted: tuple[str, ...] | None) -> pb.DecisionInputs:
    """What a decision record says the rule was given (and what the rule made of it)."""
    lot, q, qa = inputs.lot, inputs.qualification, inputs.qa
    return pb.DecisionInputs(
        retest_date=lot.retest_date.isoformat() if lot.retest_date else "",
        release_policy=POLICY_TO_PROTO[qa.policy], qa_released=qa.released,
        qa_hold_reason=qa.hold_reason, qa_rejection_reason=qa.rejection_reason,
        now=to_timestamp(inputs.now), expiry_date=lot.expiry_date.isoformat(),
        qualification=None if q is None else pb.QualificationInput(
            status=q.status, version=q.version, valid_until=to_timestamp(q.valid_until)),
        results=[pb.ResultInput(
            result_id=r.result_id, test=r.test.value, verdict=r.verdict.value,
            state=r.state.value, state_reason=r.state_reason, sequence=r.sequence,
            number=r.number, spec_version=r.spec_version,
            required_tests=[t.value for t in r.required_tests], retest_of=r.retest_of)
            for r in inputs.results],
        rule_status=STATUS_TO_PROTO[rule_status],
        required_tests=[t.value for t in required_tests or ()],
        counted_result_ids=list(counted or ()), supplier_id=lot.supplier_id,
        supplier_site_id=lot.supplier_site_id, material_code=lot.material_code)


def decision_to_proto(record: Any, unmet: tuple[Unmet, ...], stored: Any | None) -> pb.Decision:
    """A row of `decisions` with its parsed conditions and inputs (a
    repository.StoredInputs; None when they cannot be read)."""
    previous = LotStatus(record.previous_status) if record.previous_status else None
    return pb.Decision(
        lot_id=record.lot_id, version=record.version,
        previous_status=STATUS_TO_PROTO[previous],
        status=STATUS_TO_PROTO[LotStatus(record.status)], unmet=unmet_to_proto(unmet),
        cause=record.cause, decided_at=to_timestamp(record.decided_at),
        inputs=None if stored is None else inputs_to_proto(
            stored.inputs, rule_status=stored.rule_status,
            required_tests=stored.required_tests, counted=stored.counted))


def lot_to_proto(row: Any, status: pb.ReleaseStatus) -> pb.Lot:
    return pb.Lot(
        lot_id=row.lot_id, material_code=row.material_code, supplier_id=row.supplier_id,
        supplier_site_id=row.supplier_site_id, supplier_lot_number=row.supplier_lot_number,
        quantity=pb.Quantity(value=row.quantity_value, unit=row.quantity_unit),
        container_count=row.container_count, expiry_date=row.expiry_date.isoformat(),
        received_at=to_timestamp(row.received_at), release_status=status,
        retest_date=row.retest_date.isoformat() if row.retest_date else "")


def policy_to_proto(row: Any) -> pb.MaterialReleasePolicy:
    """A row of release_policies as a MaterialReleasePolicy."""
    return pb.MaterialReleasePolicy(
        material_code=row.material_code, policy=POLICY_TO_PROTO[ReleasePolicy(row.policy)],
        reason=row.reason, set_by=row.set_by, set_at=to_timestamp(row.set_at),
        two_signatures=bool(row.two_signatures))


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
