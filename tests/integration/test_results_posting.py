"""Posting a result over real gRPC: how it is judged, and what a bad post is told.
"""

from __future__ import annotations

import math
from datetime import UTC, timedelta

import grpc
import pytest

from lotgate.results.v1 import results_pb2 as pb
from shared.protoconv import from_timestamp, to_timestamp
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    FAILED,
    FTIR,
    HPLC,
    current_spec,
    identity,
    list_results,
    now,
    post,
    precondition,
    purity,
    refused,
    specified_lot,
    specify,
    sterility,
)
from tests.support.services import ref

pytestmark = pytest.mark.integration

# The fixtures of tests/support/results.py: the running service, a stub for it, its
# instruments (registered for the module) and JetStream.
service = support.service
stub = support.stub
instruments = support.instruments
js = support.js


# Posting: judging


@pytest.mark.req("SPEC-003")
async def test_a_result_is_judged_against_the_version_in_force_when_it_was_measured(
        stub, js) -> None:
    material, lot_id = await specified_lot(stub, js, lower=98.0, upper=102.0)
    first = await post(stub, purity(lot_id, 98.5))

    second_version = await specify(stub, material, lower=99.0, upper=101.0, assay=True)
    measured_before = await post(stub, purity(lot_id, 98.5, measured_at=from_timestamp(
        first.measured_at)))
    measured_after = await post(stub, purity(lot_id, 98.5))
    retried = await post(stub, purity(lot_id, 98.5, key=first.instrument_result_id,
                                      measured_at=from_timestamp(first.measured_at)))

    assert first.measured_at.ToDatetime(tzinfo=UTC) < from_timestamp(
        second_version.effective_from)
    assert [(r.spec_version, r.verdict) for r in (first, measured_before, measured_after)] == [
        (1, pb.VERDICT_PASS), (1, pb.VERDICT_PASS), (2, pb.VERDICT_FAIL)]
    assert list(first.required_tests) == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY]
    assert pb.TEST_KIND_ASSAY in measured_after.required_tests
    assert measured_after.verdict_reason == (
        "purity 98.5 % is below the lower limit [99, 101] %")
    assert retried == first
    assert [r.result_id for r in await list_results(stub, lot_id)] == [
        first.result_id, measured_before.result_id, measured_after.result_id]


@pytest.mark.req("SPEC-003")
async def test_a_result_measured_before_any_effective_version_is_refused(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)
    effective = from_timestamp((await current_spec(stub, material)).effective_from)

    error = await refused(post(stub, purity(lot_id, 99.0,
                                            measured_at=effective - timedelta(seconds=1))))

    assert error.code() == FAILED
    assert precondition(error) == ("SPECIFICATION", f"materials/{material}")
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-003", "SPEC-005")
async def test_a_result_keeps_what_was_measured_and_what_was_judged(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)
    measured = now() - timedelta(milliseconds=1)

    result = await post(stub, purity(lot_id, 99.46, measured_at=measured))

    assert (result.lot_id, result.material_code, result.test, result.instrument_id) == (
        lot_id, material, pb.TEST_KIND_PURITY, HPLC)
    assert (result.quantity.value, result.quantity.unit) == (99.46, "%")
    assert (result.judged.value, result.judged.unit) == (99.5, "%")
    assert from_timestamp(result.measured_at) == measured
    assert result.recorded_at.ToDatetime(tzinfo=UTC) >= measured
    assert (result.state, result.retest_of, result.lot_result_number) == (
        pb.RESULT_STATE_VALID, "", 1)
    assert result.sequence > 0


@pytest.mark.req("SPEC-005")
async def test_a_quantity_in_another_unit_is_converted_to_the_specifications(
        stub, js) -> None:
    _, passing_lot = await specified_lot(stub, js, lower=98.0, upper=102.0, unit="%")
    _, failing_lot = await specified_lot(stub, js, lower=98.0, upper=102.0, unit="%")

    passing = await post(stub, purity(passing_lot, 995.4, "mg/g"))
    failing = await post(stub, purity(failing_lot, 979.4, "mg/g"))

    assert (passing.verdict, passing.judged.value, passing.judged.unit) == (
        pb.VERDICT_PASS, 99.5, "%")
    assert (passing.quantity.value, passing.quantity.unit) == (995.4, "mg/g")
    assert (failing.verdict, failing.judged.value) == (pb.VERDICT_FAIL, 97.9)
    assert "97.9 %" in failing.verdict_reason


@pytest.mark.req("SPEC-005")
async def test_a_unit_that_cannot_be_converted_is_refused_on_quantity_unit(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js, unit="%")

    error = await refused(post(stub, purity(lot_id, 0.99, unit="CFU/g")))
    unknown = await refused(post(stub, purity(lot_id, 0.99, unit="fraction")))

    assert error.code() == unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == set(field_violations(unknown)) == {"quantity.unit"}
    assert f"specification version 1 of {material}" in field_violations(error)["quantity.unit"]
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("SPEC-004")
async def test_identity_and_sterility_are_judged_by_their_outcome(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    verdicts = [(await post(stub, request)).verdict for request in (
        identity(lot_id), sterility(lot_id))]
    _, failing_lot = await specified_lot(stub, js)
    failing = [(await post(stub, request)).verdict for request in (
        identity(failing_lot, match=False), sterility(failing_lot, growth=True))]

    assert verdicts == [pb.VERDICT_PASS, pb.VERDICT_PASS]
    assert failing == [pb.VERDICT_FAIL, pb.VERDICT_FAIL]


@pytest.mark.req("SPEC-004")
async def test_a_match_score_is_judged_when_the_specification_asks_for_one(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js, min_score=95.0)
    scored = pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_IDENTITY, instrument_id=FTIR,
        instrument_result_id=ref("RUN"), measured_at=to_timestamp(now()), identity_score=97.5)

    outcome_only = await refused(post(stub, identity(lot_id)))
    result = await post(stub, scored)

    assert set(field_violations(outcome_only)) == {"measurement"}
    assert (result.verdict, result.identity_score) == (pb.VERDICT_PASS, 97.5)


@pytest.mark.req("RES-004")
async def test_a_test_that_the_specification_does_not_have_is_refused(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)

    error = await refused(post(stub, pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_ASSAY, instrument_id=HPLC,
        instrument_result_id=ref("RUN"), measured_at=to_timestamp(now()),
        quantity=pb.Quantity(value=99.0, unit="%"))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"test"}
    assert f"specification version 1 of {material}" in field_violations(error)["test"]


# Posting: bad requests


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_a_non_finite_quantity_is_refused(stub, js, value: float) -> None:
    _, lot_id = await specified_lot(stub, js, lower=None, upper=100.0)

    error = await refused(post(stub, purity(lot_id, value)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"quantity.value"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-004", "INP-001")
async def test_an_empty_result_names_every_missing_field(stub) -> None:
    error = await refused(stub.RecordResult(pb.RecordResultRequest()))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "lot_id", "instrument_id", "instrument_result_id", "test", "measurement",
        "measured_at"}


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("test", [pb.TEST_KIND_UNSPECIFIED, 99])
async def test_an_unspecified_or_unknown_test_is_refused(stub, js, test: int) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = sterility(lot_id)
    request.test = test

    error = await refused(post(stub, request))

    assert set(field_violations(error)) == {"test"}


@pytest.mark.req("RES-004")
async def test_a_measurement_that_does_not_fit_the_test_is_refused(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = sterility(lot_id)
    request.test = pb.TEST_KIND_PURITY

    error = await refused(post(stub, request))

    assert field_violations(error) == {"measurement": "a PURITY result carries quantity, "
                                                      "not sterility"}


@pytest.mark.req("RES-004", "INP-001")
async def test_a_bad_result_names_every_bad_field_and_changes_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id="bad id!",
        instrument_result_id="k" * 129, quantity=pb.Quantity(value=math.nan, unit=""),
        measured_at=to_timestamp(now() + timedelta(minutes=10)), retest_of="not a result!")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "instrument_id", "instrument_result_id", "quantity.value", "quantity.unit",
        "measured_at", "retest_of"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-005")
async def test_a_result_for_an_unknown_lot_is_not_found_and_may_be_retried(stub) -> None:
    error = await refused(post(stub, purity(ref("LOT"), 99.0)))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "not known to the results service yet" in error.details()
    assert set(field_violations(error)) == {"lot_id"}
