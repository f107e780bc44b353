"""Events of other services, as the lots service's facts (domain/projection.py). The only
module that reads other services' messages; `api.py` and `convert.py` handle the lots
service's own.

Anything this service cannot read is refused with ValueError (the inbox parks the event):
a test it does not know could be a required one, and must never be skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from lotgate.suppliers.v1 import suppliers_pb2
from services.lots.domain.lot import Key
from services.lots.domain.projection import LabResult, QualificationChange
from services.lots.domain.rule import ResultFacts, ResultState, TestKind, Verdict
from shared.protoconv import from_timestamp

_TESTS = {
    results_pb2.TEST_KIND_IDENTITY: TestKind.IDENTITY,
    results_pb2.TEST_KIND_PURITY: TestKind.PURITY,
    results_pb2.TEST_KIND_STERILITY: TestKind.STERILITY,
    results_pb2.TEST_KIND_ASSAY: TestKind.ASSAY,
    results_pb2.TEST_KIND_BIOBURDEN: TestKind.BIOBURDEN,
}
_VERDICTS = {results_pb2.VERDICT_PASS: Verdict.PASS, results_pb2.VERDICT_FAIL: Verdict.FAIL}
_STATES = {
    results_pb2.RESULT_STATE_VALID: ResultState.VALID,
    results_pb2.RESULT_STATE_INVALIDATED: ResultState.INVALIDATED,
    results_pb2.RESULT_STATE_CONFIRMED: ResultState.CONFIRMED,
}
_QUALIFICATION = {
    suppliers_pb2.QUALIFICATION_STATUS_PENDING: "PENDING",
    suppliers_pb2.QUALIFICATION_STATUS_QUALIFIED: "QUALIFIED",
    suppliers_pb2.QUALIFICATION_STATUS_SUSPENDED: "SUSPENDED",
    suppliers_pb2.QUALIFICATION_STATUS_DISQUALIFIED: "DISQUALIFIED",
    suppliers_pb2.QUALIFICATION_STATUS_EXPIRED: "EXPIRED",
}


def lab_result(r: results_pb2.Result, state: ResultState | None = None) -> LabResult:
    """A published result; `state` is the one its event stands for (None: the result's
    own, VALID when unset)."""
    if r.test not in _TESTS or r.verdict not in _VERDICTS:
        raise ValueError(f"result {r.result_id} has an unknown test or verdict")
    unknown = [t for t in r.required_tests if t not in _TESTS]
    if unknown:
        raise ValueError(f"result {r.result_id} requires unknown tests {unknown}")
    own = ResultState.VALID if r.state == results_pb2.RESULT_STATE_UNSPECIFIED else (
        _STATES.get(r.state))
    if own is None or (state is not None and own not in (ResultState.VALID, state)):
        raise ValueError(f"result {r.result_id} has state {r.state}, not {state}")
    required = sorted({_TESTS[t] for t in r.required_tests}, key=list(TestKind).index)
    return LabResult(r.lot_id, r.material_code, from_timestamp(r.recorded_at), ResultFacts(
        r.result_id, _TESTS[r.test], _VERDICTS[r.verdict], r.sequence, r.spec_version,
        r.lot_result_number, state=state or own, state_reason=r.state_reason,
        retest_of=r.retest_of, required_tests=tuple(required)))


def recorded(events: Iterable[result_events.ResultRecorded]) -> list[LabResult]:
    """The results of ResultRecorded events, in result id order (two consumers writing
    the same results take their row locks in the same order, never crosswise)."""
    return sorted((lab_result(event.result) for event in events),
                  key=lambda result: result.facts.result_id)


def with_state(events: Iterable[result_events.ResultInvalidated | result_events.ResultConfirmed],
               state: ResultState) -> list[LabResult]:
    """The results QA invalidated (or confirmed), one per result (a batch may hold two
    events of one result), in result id order."""
    by_id = {}
    for event in events:
        result = lab_result(event.result, state)
        by_id[result.facts.result_id] = result
    return [by_id[result_id] for result_id in sorted(by_id)]


def qualification_changes(events: Iterable[supplier_events.QualificationChanged]
                          ) -> dict[Key, list[QualificationChange]]:
    """Per supplier site and material, its announced versions, oldest first (one per
    version)."""
    found: dict[Key, dict[int, QualificationChange]] = {}
    for event in events:
        q = event.qualification
        key = (q.supplier_id, q.site_id, q.material_code)
        valid_until = from_timestamp(q.valid_until) if q.HasField("valid_until") else None
        found.setdefault(key, {})[q.version] = QualificationChange(
            key, _QUALIFICATION.get(q.status, ""), valid_until, q.version, q.reason)
    return {key: [versions[v] for v in sorted(versions)] for key, versions in found.items()}
