"""Translations between the results domain and its protobuf contract."""

from __future__ import annotations

from lotgate.results.v1 import results_pb2 as pb
from services.results.domain import (
    IdentityOutcome,
    Measurement,
    Quantity,
    Result,
    Specification,
    SterilityOutcome,
    TestKind,
    Verdict,
)
from shared.protoconv import to_timestamp

TEST_FROM_PROTO = {
    pb.TEST_KIND_IDENTITY: TestKind.IDENTITY,
    pb.TEST_KIND_PURITY: TestKind.PURITY,
    pb.TEST_KIND_STERILITY: TestKind.STERILITY,
}
_TEST_TO_PROTO = {kind: number for number, kind in TEST_FROM_PROTO.items()}

IDENTITY_FROM_PROTO = {
    pb.IDENTITY_OUTCOME_MATCH: IdentityOutcome.MATCH,
    pb.IDENTITY_OUTCOME_NO_MATCH: IdentityOutcome.NO_MATCH,
}
_IDENTITY_TO_PROTO = {outcome: number for number, outcome in IDENTITY_FROM_PROTO.items()}

STERILITY_FROM_PROTO = {
    pb.STERILITY_OUTCOME_NO_GROWTH: SterilityOutcome.NO_GROWTH,
    pb.STERILITY_OUTCOME_GROWTH: SterilityOutcome.GROWTH,
}
_STERILITY_TO_PROTO = {outcome: number for number, outcome in STERILITY_FROM_PROTO.items()}

_VERDICT_TO_PROTO = {Verdict.PASS: pb.VERDICT_PASS, Verdict.FAIL: pb.VERDICT_FAIL}

# The request's `measurement` oneof member that each test carries.
MEASUREMENT_FIELD = {
    TestKind.IDENTITY: "identity",
    TestKind.PURITY: "quantity",
    TestKind.STERILITY: "sterility",
}


def measurement_from_proto(message: pb.RecordResultRequest | pb.Result) -> Measurement:
    """The measurement of a request whose oneof has been validated."""
    which = message.WhichOneof("measurement")
    if which == "identity":
        return IDENTITY_FROM_PROTO[message.identity]
    if which == "sterility":
        return STERILITY_FROM_PROTO[message.sterility]
    return Quantity(value=message.quantity.value, unit=message.quantity.unit)


def specification_to_proto(spec: Specification) -> pb.Specification:
    purity = pb.RangeCriterion(unit=spec.purity.unit)
    if spec.purity.lower is not None:
        purity.lower = spec.purity.lower
    if spec.purity.upper is not None:
        purity.upper = spec.purity.upper
    return pb.Specification(
        material_code=spec.material_code, version=spec.version,
        identity=pb.IdentityCriterion(reference=spec.identity_reference), purity=purity,
        sterility=pb.SterilityCriterion(method=spec.sterility_method),
        effective_from=to_timestamp(spec.effective_from), approved_by=spec.approved_by)


def result_to_proto(result: Result) -> pb.Result:
    message = pb.Result(
        result_id=result.result_id, lot_id=result.lot_id, material_code=result.material_code,
        test=_TEST_TO_PROTO[result.test], instrument_id=result.instrument_id,
        idempotency_key=result.idempotency_key, verdict=_VERDICT_TO_PROTO[result.verdict],
        verdict_reason=result.verdict_reason, spec_version=result.spec_version,
        measured_at=to_timestamp(result.measured_at),
        recorded_at=to_timestamp(result.recorded_at), sequence=result.sequence,
        lot_result_number=result.lot_result_number)
    m = result.measurement
    if isinstance(m, IdentityOutcome):
        message.identity = _IDENTITY_TO_PROTO[m]
    elif isinstance(m, SterilityOutcome):
        message.sterility = _STERILITY_TO_PROTO[m]
    else:
        message.quantity.CopyFrom(pb.Quantity(value=m.value, unit=m.unit))
    return message
