"""Translations between the results domain and its protobuf contract."""

from __future__ import annotations

from datetime import date

from lotgate.results.v1 import results_pb2 as pb
from services.results.domain import (
    Bound,
    IdentityCriterion,
    IdentityOutcome,
    IdentityScore,
    InstrumentStatus,
    Measurement,
    Quantity,
    RangeCriterion,
    ResultState,
    Specification,
    SpecificationStatus,
    SterilityCriterion,
    SterilityOutcome,
    TestCriterion,
    TestKind,
    Verdict,
)
from services.results.records import Calibration, Instrument, Result
from shared.errors import Violations
from shared.protoconv import to_timestamp

MAX_UNIT_LENGTH = 32
MAX_METHOD_LENGTH = 500

TEST_FROM_PROTO = {
    pb.TEST_KIND_IDENTITY: TestKind.IDENTITY,
    pb.TEST_KIND_PURITY: TestKind.PURITY,
    pb.TEST_KIND_STERILITY: TestKind.STERILITY,
    pb.TEST_KIND_ASSAY: TestKind.ASSAY,
    pb.TEST_KIND_BIOBURDEN: TestKind.BIOBURDEN,
}
TEST_TO_PROTO = {kind: number for number, kind in TEST_FROM_PROTO.items()}

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

_SPEC_STATUS_TO_PROTO = {
    SpecificationStatus.DRAFT: pb.SPECIFICATION_STATUS_DRAFT,
    SpecificationStatus.EFFECTIVE: pb.SPECIFICATION_STATUS_EFFECTIVE,
}

INSTRUMENT_STATUS_FROM_PROTO = {
    pb.INSTRUMENT_STATUS_ACTIVE: InstrumentStatus.ACTIVE,
    pb.INSTRUMENT_STATUS_OUT_OF_SERVICE: InstrumentStatus.OUT_OF_SERVICE,
    pb.INSTRUMENT_STATUS_RETIRED: InstrumentStatus.RETIRED,
}
_INSTRUMENT_STATUS_TO_PROTO = {s: n for n, s in INSTRUMENT_STATUS_FROM_PROTO.items()}

_STATE_TO_PROTO = {
    ResultState.VALID: pb.RESULT_STATE_VALID,
    ResultState.INVALIDATED: pb.RESULT_STATE_INVALIDATED,
    ResultState.CONFIRMED: pb.RESULT_STATE_CONFIRMED,
}

# The request's `measurement` oneof members each test may carry (the specification
# decides between an identity outcome and a match score).
MEASUREMENT_FIELDS: dict[TestKind, tuple[str, ...]] = {
    TestKind.IDENTITY: ("identity", "identity_score"),
    TestKind.PURITY: ("quantity",),
    TestKind.STERILITY: ("sterility",),
    TestKind.ASSAY: ("quantity",),
    TestKind.BIOBURDEN: ("quantity",),
}


def test_order(kind: TestKind) -> int:
    """Tests are listed in the order of the contract's enum."""
    return TEST_TO_PROTO[kind]


# Specifications

def criteria_from_proto(tests: list[pb.TestCriterion] | object, v: Violations, *,
                     field: str = "tests") -> list[TestCriterion]:
    """The tests of a request, in request order; what cannot be read is noted in `v`
    and left out (domain.check_tests judges the rest)."""
    found: list[TestCriterion] = []
    for i, t in enumerate(tests):  # type: ignore[call-overload]
        where = f"{field}[{i}]"
        kind = TEST_FROM_PROTO.get(t.test)
        if kind is None:
            v.add(f"{where}.test", "must be IDENTITY, PURITY, STERILITY, ASSAY or BIOBURDEN")
        v.text(f"{where}.method", t.method, max_length=MAX_METHOD_LENGTH, required=False)
        which = t.WhichOneof("criterion")
        criterion: IdentityCriterion | RangeCriterion | SterilityCriterion
        if which == "identity":
            v.text(f"{where}.identity.reference", t.identity.reference, max_length=500,
                   required=False)
            criterion = IdentityCriterion(
                reference=t.identity.reference.strip(),
                min_score=t.identity.min_score if t.identity.HasField("min_score") else None)
        elif which == "range":
            r = t.range
            v.text(f"{where}.range.unit", r.unit, max_length=MAX_UNIT_LENGTH, required=False)
            criterion = RangeCriterion(
                lower=(Bound(r.lower.value, r.lower.exclusive) if r.HasField("lower")
                       else None),
                upper=(Bound(r.upper.value, r.upper.exclusive) if r.HasField("upper")
                       else None),
                unit=r.unit.strip(),
                decimals=r.decimals if r.HasField("decimals") else None)
        elif which == "sterility":
            v.text(f"{where}.sterility.method", t.sterility.method,
                   max_length=MAX_METHOD_LENGTH, required=False)
            criterion = SterilityCriterion(method=t.sterility.method.strip())
        else:
            v.add(where, "needs a criterion: identity, range or sterility")
            continue
        if kind is not None:
            found.append(TestCriterion(test=kind, method=t.method.strip(), criterion=criterion))
    return found


def _bound(b: Bound | None) -> pb.Bound | None:
    return pb.Bound(value=b.value, exclusive=b.exclusive) if b is not None else None


def criterion_to_proto(t: TestCriterion) -> pb.TestCriterion:
    message = pb.TestCriterion(test=TEST_TO_PROTO[t.test], method=t.method)
    c = t.criterion
    if isinstance(c, IdentityCriterion):
        message.identity.reference = c.reference
        if c.min_score is not None:
            message.identity.min_score = c.min_score
    elif isinstance(c, RangeCriterion):
        message.range.unit = c.unit
        if c.lower is not None:
            message.range.lower.CopyFrom(_bound(c.lower))
        if c.upper is not None:
            message.range.upper.CopyFrom(_bound(c.upper))
        if c.decimals is not None:
            message.range.decimals = c.decimals
    else:
        message.sterility.method = c.method
    return message


def specification_to_proto(spec: Specification) -> pb.Specification:
    return pb.Specification(
        material_code=spec.material_code, version=spec.version,
        status=_SPEC_STATUS_TO_PROTO[spec.status],
        tests=[criterion_to_proto(t) for t in spec.tests],
        effective_from=to_timestamp(spec.effective_from), created_by=spec.created_by,
        created_at=to_timestamp(spec.created_at), approved_by=spec.approved_by,
        approved_at=to_timestamp(spec.approved_at), change_reason=spec.change_reason)


# Instruments

def _day(value: date) -> str:
    return value.isoformat()


def instrument_to_proto(i: Instrument) -> pb.Instrument:
    return pb.Instrument(
        instrument_id=i.instrument_id, type=i.type, location=i.location,
        status=_INSTRUMENT_STATUS_TO_PROTO[i.status], calibration_due=_day(i.calibration_due),
        status_reason=i.status_reason, registered_by=i.registered_by,
        registered_at=to_timestamp(i.registered_at))


def calibration_to_proto(c: Calibration) -> pb.Calibration:
    return pb.Calibration(
        calibrated_on=_day(c.calibrated_on), calibration_due=_day(c.calibration_due),
        certificate_ref=c.certificate_ref, recorded_by=c.recorded_by,
        recorded_at=to_timestamp(c.recorded_at))


# Results

def measurement_from_proto(message: pb.RecordResultRequest | pb.Result) -> Measurement:
    """The measurement of a message whose oneof has been validated."""
    which = message.WhichOneof("measurement")
    if which == "identity":
        return IDENTITY_FROM_PROTO[message.identity]
    if which == "sterility":
        return STERILITY_FROM_PROTO[message.sterility]
    if which == "identity_score":
        return IdentityScore(message.identity_score)
    return Quantity(value=message.quantity.value, unit=message.quantity.unit)


def result_to_proto(result: Result) -> pb.Result:
    message = pb.Result(
        result_id=result.result_id, lot_id=result.lot_id, material_code=result.material_code,
        test=TEST_TO_PROTO[result.test], instrument_id=result.instrument_id,
        instrument_result_id=result.instrument_result_id,
        verdict=_VERDICT_TO_PROTO[result.verdict], verdict_reason=result.verdict_reason,
        spec_version=result.spec_version, measured_at=to_timestamp(result.measured_at),
        recorded_at=to_timestamp(result.recorded_at), sequence=result.sequence,
        lot_result_number=result.lot_result_number, state=_STATE_TO_PROTO[result.state],
        state_reason=result.state_reason, state_changed_by=result.state_changed_by,
        state_changed_at=to_timestamp(result.state_changed_at), retest_of=result.retest_of,
        required_tests=[TEST_TO_PROTO[t] for t in result.required_tests])
    m = result.measurement
    if isinstance(m, IdentityOutcome):
        message.identity = _IDENTITY_TO_PROTO[m]
    elif isinstance(m, SterilityOutcome):
        message.sterility = _STERILITY_TO_PROTO[m]
    elif isinstance(m, IdentityScore):
        message.identity_score = m.score
    else:
        message.quantity.CopyFrom(pb.Quantity(value=m.value, unit=m.unit))
    if result.judged is not None:
        message.judged.CopyFrom(pb.Quantity(value=result.judged.value, unit=result.judged.unit))
    return message
