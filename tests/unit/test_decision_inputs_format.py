"""The stored format of a decision's inputs: results by reference, and the first format.

A decision record names the results the rule saw (their ids, and QA's state of each at
decision time) and reads their facts back from the lot's results; records written in the
first format, which copied every result's facts, must still explain and replay exactly
as they did. `first_format` (tests/support) is that format's writer as it was;
FIRST_RECORD is one such record as it was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import mean
from types import SimpleNamespace

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots.decision_record import inputs_from_json
from services.lots.domain import ResultState
from tests.support.first_format import first_format
from tests.unit.test_decision_replay import (
    SCENARIOS,
    LiveLot,
    explain,
    oos_then_confirmation_then_more,
    released_then_supplier_lapse_then_invalidation,
)

# The last decision of `released_then_supplier_lapse_then_invalidation`, as the first
# format stored it.
FIRST_RECORD = (
    '{"now":"2026-11-25T12:00:00+00:00","expiry_date":"2027-06-30","retest_date":null,'
    '"release_policy":"AUTOMATIC","qa_released":false,"qa_hold_reason":"",'
    '"qa_rejection_reason":"","supplier_id":"SUP-1","supplier_site_id":"SITE-1",'
    '"material_code":"MAT-1","qualification":{"status":"SUSPENDED","version":4,'
    '"valid_until":"2026-12-25T12:00:00+00:00"},"results":[{"result_id":"R-IDENTITY-1",'
    '"test":"IDENTITY","verdict":"PASS","sequence":1,"number":0,"spec_version":2,'
    '"state":"VALID","state_reason":"","retest_of":"","required_tests":[]},'
    '{"result_id":"R-PURITY-2","test":"PURITY","verdict":"PASS","sequence":2,"number":0,'
    '"spec_version":2,"state":"INVALIDATED","state_reason":"wrong dilution",'
    '"retest_of":"","required_tests":[]},{"result_id":"R-STERILITY-3","test":"STERILITY",'
    '"verdict":"PASS","sequence":3,"number":0,"spec_version":2,"state":"VALID",'
    '"state_reason":"","retest_of":"","required_tests":[]}],'
    '"required_tests":["IDENTITY","PURITY","STERILITY"],'
    '"counted":["R-IDENTITY-1","R-STERILITY-3"],"rule_status":"QUARANTINE"}')


def _in_first_format(record: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(record), "inputs": first_format(*record.given)})


@pytest.mark.req("DEC-001", "DEC-002")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_a_decision_explains_and_replays_the_same_in_either_format(
        scenario: Callable[[], LiveLot]) -> None:
    live = scenario()
    first = [_in_first_format(r) for r in live.records]

    # A record of the first format needs nothing but itself; one of the compact format
    # reads the lot's results, which hold each result's latest state.
    by_reference = live.explained()
    copied = [explain(r, first[i - 1] if i else None, {}) for i, r in enumerate(first)]

    assert by_reference == copied
    assert all(e.replay.agrees for e in by_reference)


@pytest.mark.req("DEC-002")
def test_a_record_stored_in_the_first_format_still_explains_and_replays() -> None:
    live = released_then_supplier_lapse_then_invalidation()
    assert first_format(*live.records[-1].given) == FIRST_RECORD
    stored = SimpleNamespace(**{**vars(live.records[-1]), "inputs": FIRST_RECORD})

    explained = explain(stored, live.records[-2], {})

    assert explained == live.explained()[-1]
    assert explained.replay.agrees
    assert [(r.result_id, r.state, r.state_reason) for r in explained.decision.inputs.results
            ] == [("R-IDENTITY-1", "VALID", ""), ("R-PURITY-2", "INVALIDATED", "wrong dilution"),
                  ("R-STERILITY-3", "VALID", "")]


@pytest.mark.req("DEC-001")
def test_a_decision_shows_each_result_in_the_state_it_had_when_it_was_taken() -> None:
    live = oos_then_confirmation_then_more()
    # The lot's sterility failure is CONFIRMED now; the decision that held the lot saw it
    # under investigation.
    failure = next(r for r in live.results.values() if r.test.value == "STERILITY")
    assert failure.state is ResultState.CONFIRMED

    explained = live.explained()
    held = next(e for e in explained if e.decision.status == pb.LOT_STATUS_ON_HOLD)
    rejected = next(e for e in explained if e.decision.status == pb.LOT_STATUS_REJECTED)

    def state_of_failure(e: pb.ExplainedDecision) -> str:
        return next(r.state for r in e.decision.inputs.results
                    if r.result_id == failure.result_id)

    assert state_of_failure(held) == "VALID"
    assert state_of_failure(rejected) == "CONFIRMED"
    assert held.replay.agrees and rejected.replay.agrees


@pytest.mark.req("DEC-001")
def test_the_inputs_name_the_results_instead_of_copying_them() -> None:
    lots = [scenario() for scenario in SCENARIOS]
    records = [r for live in lots for r in live.records]

    compact = mean(len(r.inputs) for r in records)
    copied = mean(len(first_format(*r.given)) for r in records)

    assert compact < copied / 3, (compact, copied)
    assert not any('"verdict"' in r.inputs or '"spec_version"' in r.inputs for r in records)


@pytest.mark.req("DEC-002")
def test_a_record_of_an_unknown_format_is_not_replayed_and_says_why() -> None:
    live = LiveLot()
    live.decide(None, [])
    record = live.records[0]

    newer = SimpleNamespace(**{**vars(record), "inputs": record.inputs.replace(
        '"v":2', '"v":3')})
    explained = explain(newer, None, live.results)

    assert not explained.replay.agrees
    assert explained.replay.difference == "inputs cannot be replayed: unknown inputs format 3"
    with pytest.raises(ValueError, match="unknown inputs format 3"):
        inputs_from_json(record.lot_id, newer.inputs)
