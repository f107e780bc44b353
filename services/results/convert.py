"""Translations between the results domain and the protobuf contracts: requests'
criteria and measurements in; specifications, instruments, results, the events that
announce them and the content QA's signatures sign out; the lots service's LotReceived in.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

from google.protobuf import json_format

from lotgate.lots.v1.events_pb2 import LotReceived
from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from lotgate.signatures.v1.signatures_pb2 import Signature
from services.results.domain.evaluation import (
    IdentityOutcome,
    IdentityScore,
    Measurement,
    Quantity,
    SterilityOutcome,
)
from services.results.domain.instruments import Calibration, Instrument, InstrumentStatus
from services.results.domain.results import KnownLot, Result
from services.results.domain.specifications import (
    Bound,
    Criterion,
    IdentityCriterion,
    RangeCriterion,
    Specification,
    SpecificationStatus,
    SterilityCriterion,
    TestCriterion,
)
from shared.contract import ResultState, TestKind, Verdict
from shared.errors import Violations
from shared.protoconv import from_timestamp, timestamp_is_valid, to_timestamp

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
        criterion: Criterion
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


def check_measurement(request: pb.RecordResultRequest, test: TestKind | None, v: Violations,
                      where: str) -> bool:
    """Whether the request's measurement can be read as one `test` carries (what is
    wrong is noted in `v`)."""
    which = request.WhichOneof("measurement")
    if which is None:
        v.add(f"{where}measurement",
              "is required: identity, identity_score, quantity or sterility")
        return False
    allowed = MEASUREMENT_FIELDS.get(test, ()) if test else ()
    if test is not None and which not in allowed:
        v.add(f"{where}measurement", f"a {test} result carries {' or '.join(allowed)}, "
                                     f"not {which}")
        return False
    if which == "identity" and request.identity not in IDENTITY_FROM_PROTO:
        v.add(f"{where}identity", "must be MATCH or NO_MATCH")
        return False
    if which == "sterility" and request.sterility not in STERILITY_FROM_PROTO:
        v.add(f"{where}sterility", "must be NO_GROWTH or GROWTH")
        return False
    if which == "identity_score" and not math.isfinite(request.identity_score):
        v.add(f"{where}identity_score", "must be a finite number")
        return False
    if which == "quantity":
        before = len(v)
        if not math.isfinite(request.quantity.value):
            v.add(f"{where}quantity.value", "must be a finite number")
        v.text(f"{where}quantity.unit", request.quantity.unit, max_length=MAX_UNIT_LENGTH)
        return len(v) == before
    return True


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


# Events

def specification_approved(spec: Specification, *, signature: Signature | None,
                           event_id: str, now: datetime) -> events_pb2.SpecificationApproved:
    """The event of an approval; it shows the approval's signature."""
    shown = specification_to_proto(spec)
    if signature is not None:
        shown.signatures.append(signature)
    return events_pb2.SpecificationApproved(event_id=event_id, specification=shown,
                                            occurred_at=to_timestamp(now))


def result_recorded(result: Result, *, event_id: str,
                    now: datetime) -> events_pb2.ResultRecorded:
    return events_pb2.ResultRecorded(event_id=event_id, result=result_to_proto(result),
                                     occurred_at=to_timestamp(now))


def result_handled(result: Result, *, signature: Signature | None, event_id: str,
                   now: datetime) -> events_pb2.ResultInvalidated | events_pb2.ResultConfirmed:
    """The event of QA's invalidation or confirmation; it shows QA's signature."""
    shown = result_to_proto(result)
    if signature is not None:
        shown.signatures.append(signature)
    event = (events_pb2.ResultInvalidated if result.state is ResultState.INVALIDATED
             else events_pb2.ResultConfirmed)
    return event(event_id=event_id, result=shown, occurred_at=to_timestamp(now))


def known_lot(event: LotReceived, *, now: datetime) -> KnownLot:
    """The lot a LotReceived announces, received when the lot says (else when the event
    occurred, else `now`); ValueError when it names no lot or material."""
    lot = event.lot
    if not lot.lot_id or not lot.material_code:
        raise ValueError(f"LotReceived {event.event_id} has no lot_id or material_code")
    if lot.HasField("received_at") and timestamp_is_valid(lot.received_at):
        received_at = from_timestamp(lot.received_at)
    elif event.HasField("occurred_at") and timestamp_is_valid(event.occurred_at):
        received_at = from_timestamp(event.occurred_at)
    else:
        received_at = now
    return KnownLot(lot_id=lot.lot_id, material_code=lot.material_code,
                    received_at=received_at)


# Electronic signatures of QA's decisions (shared.esign): the approval of a specification
# version and the invalidation or confirmation of a result. Each signs the fields of its
# record that the decision fixes, as the record's message shows them; a read verifies every
# signature against the record as it is then.

SPECIFICATION = "specification"
RESULT = "result"


def _instant(message: Any, field: str) -> str:
    return getattr(message, field).ToJsonString() if message.HasField(field) else ""


def specification_record(spec: pb.Specification) -> str:
    return f"{spec.material_code}/{spec.version}"


def specification_content(spec: pb.Specification) -> dict[str, Any]:
    """What an approval signs: the version's criteria, who wrote and who approved it, and
    from when it applies (not its status, which a later version supersedes)."""
    return {"material_code": spec.material_code, "version": spec.version,
            "tests": [json_format.MessageToDict(t, preserving_proto_field_name=True)
                      for t in spec.tests],
            "created_by": spec.created_by, "approved_by": spec.approved_by,
            "effective_from": _instant(spec, "effective_from"),
            "approved_at": _instant(spec, "approved_at")}


def result_content(result: pb.Result) -> dict[str, Any]:
    """What QA's handling of a result signs: the result and QA's decision on it."""
    kind = result.WhichOneof("measurement") or ""
    measurement = getattr(result, kind) if kind else ""
    if hasattr(measurement, "DESCRIPTOR"):
        measurement = json_format.MessageToDict(measurement, preserving_proto_field_name=True)
    return {"result_id": result.result_id, "lot_id": result.lot_id,
            "test": pb.TestKind.Name(result.test), "instrument_id": result.instrument_id,
            "measurement": {kind: measurement} if kind else {},
            "verdict": pb.Verdict.Name(result.verdict),
            "measured_at": _instant(result, "measured_at"),
            "state": pb.ResultState.Name(result.state), "state_reason": result.state_reason,
            "state_changed_by": result.state_changed_by,
            "state_changed_at": _instant(result, "state_changed_at")}


def signed_specification(spec: Specification) -> tuple[str, dict[str, Any]]:
    """(record id, content) that QA's signature of an approval covers."""
    shown = specification_to_proto(spec)
    return specification_record(shown), specification_content(shown)


def signed_result(result: Result) -> tuple[str, dict[str, Any]]:
    """(record id, content) that QA's signature of its handling of a result covers."""
    return result.result_id, result_content(result_to_proto(result))
