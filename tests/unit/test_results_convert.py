"""The results service's translations: domain <-> protobuf contract, and the stored JSON of
a specification's tests."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from lotgate.results.v1 import results_pb2 as pb
from services.results.convert import (
    criteria_from_proto,
    criterion_to_proto,
    measurement_from_proto,
    result_to_proto,
    specification_to_proto,
)
from services.results.domain import (
    Bound,
    IdentityCriterion,
    IdentityOutcome,
    IdentityScore,
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
from services.results.domain.results import Result
from services.results.storage_format import criteria_from_json, criteria_to_json
from shared.errors import Violations

AT = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

TESTS = (
    TestCriterion(TestKind.IDENTITY, "FTIR", IdentityCriterion("IR RS-7", min_score=95.0)),
    TestCriterion(TestKind.PURITY, "HPLC",
                  RangeCriterion(Bound(98.0), Bound(102.0, exclusive=True), "%", decimals=1)),
    TestCriterion(TestKind.STERILITY, "", SterilityCriterion("Ph. Eur. 2.6.1")),
    TestCriterion(TestKind.BIOBURDEN, "TAMC", RangeCriterion(None, Bound(100.0), "CFU/g")),
)


def result(test: TestKind, measurement, **kw) -> Result:
    values = dict(
        result_id="r-1", lot_id="LOT-1", material_code="MAT-A", test=test,
        instrument_id="HPLC-01", instrument_result_id="RUN-1", measurement=measurement,
        verdict=Verdict.FAIL, verdict_reason="why", spec_version=4,
        required_tests=(TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY),
        measured_at=AT, recorded_at=AT, sequence=42, lot_result_number=3)
    values.update(kw)
    return Result(**values)


@pytest.mark.req("RES-003")
@pytest.mark.parametrize(("test", "measurement", "field"), [
    (TestKind.IDENTITY, IdentityOutcome.NO_MATCH, "identity"),
    (TestKind.IDENTITY, IdentityScore(91.25), "identity_score"),
    (TestKind.PURITY, Quantity(971.25, "mg/g"), "quantity"),
    (TestKind.STERILITY, SterilityOutcome.GROWTH, "sterility"),
])
def test_a_result_keeps_its_measurement_through_the_contract(test, measurement, field) -> None:
    message = result_to_proto(result(test, measurement))

    assert message.WhichOneof("measurement") == field
    assert measurement_from_proto(message) == measurement


@pytest.mark.req("RES-003")
def test_a_result_carries_what_the_lots_service_decides_on() -> None:
    message = result_to_proto(result(
        TestKind.PURITY, Quantity(971.25, "mg/g"), judged=Quantity(97.1, "%"),
        state=ResultState.INVALIDATED, state_reason="dilution", state_changed_by="qa.jane",
        state_changed_at=AT, retest_of="r-0"))

    assert (message.lot_id, message.material_code, message.test, message.verdict,
            message.spec_version, message.sequence, message.lot_result_number) == (
        "LOT-1", "MAT-A", pb.TEST_KIND_PURITY, pb.VERDICT_FAIL, 4, 42, 3)
    assert list(message.required_tests) == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY]
    assert (message.judged.value, message.judged.unit) == (97.1, "%")
    assert (message.state, message.state_reason, message.state_changed_by,
            message.retest_of) == (pb.RESULT_STATE_INVALIDATED, "dilution", "qa.jane", "r-0")
    assert message.state_changed_at.ToDatetime(tzinfo=UTC) == AT
    assert message.recorded_at.ToDatetime(tzinfo=UTC) == AT


@pytest.mark.req("RES-003")
def test_a_valid_result_has_no_judged_value_or_state_change_unless_it_has_one() -> None:
    message = result_to_proto(result(TestKind.STERILITY, SterilityOutcome.NO_GROWTH))

    assert message.state == pb.RESULT_STATE_VALID
    assert not message.HasField("judged")
    assert not message.HasField("state_changed_at")


@pytest.mark.req("SPEC-006")
def test_criteria_survive_the_contract_both_ways() -> None:
    v = Violations()

    back = criteria_from_proto([criterion_to_proto(t) for t in TESTS], v)

    assert v.items == []
    assert tuple(back) == TESTS


@pytest.mark.req("SPEC-006")
def test_an_open_bound_and_unset_options_stay_absent() -> None:
    purity = criterion_to_proto(TESTS[3]).range
    identity = criterion_to_proto(
        TestCriterion(TestKind.IDENTITY, "", IdentityCriterion("IR"))).identity

    assert not purity.HasField("lower") and purity.upper.value == 100.0
    assert not purity.HasField("decimals")
    assert not identity.HasField("min_score")


@pytest.mark.req("SPEC-006")
def test_unreadable_criteria_are_named_by_their_position() -> None:
    v = Violations()

    found = criteria_from_proto([
        pb.TestCriterion(test=pb.TEST_KIND_UNSPECIFIED, sterility=pb.SterilityCriterion()),
        pb.TestCriterion(test=pb.TEST_KIND_PURITY),
        pb.TestCriterion(test=pb.TEST_KIND_ASSAY, range=pb.RangeCriterion(unit="x" * 33)),
    ], v)

    assert [i.field for i in v.items] == ["tests[0].test", "tests[1]", "tests[2].range.unit"]
    assert [t.test for t in found] == [TestKind.ASSAY]


@pytest.mark.req("SPEC-006")
def test_the_stored_tests_read_back_exactly() -> None:
    awkward = (*TESTS, TestCriterion(TestKind.ASSAY, "titration", RangeCriterion(
        Bound(0.1 + 0.2), Bound(math.nextafter(100.0, 200.0)), "mg/mL")))

    assert criteria_from_json(criteria_to_json(awkward)) == awkward


@pytest.mark.req("SPEC-002")
def test_a_draft_has_no_effective_date_and_an_effective_version_has_one() -> None:
    draft = Specification(
        material_code="MAT-A", version=2, status=SpecificationStatus.DRAFT, tests=TESTS,
        effective_from=None, created_by="qa.author", created_at=AT, approved_by="",
        approved_at=None, change_reason="CC-1")

    message = specification_to_proto(draft)

    assert (message.status, message.version, message.created_by) == (
        pb.SPECIFICATION_STATUS_DRAFT, 2, "qa.author")
    assert not message.HasField("effective_from") and not message.HasField("approved_at")
    assert len(message.tests) == 4
    effective = specification_to_proto(Specification(
        **{**draft.__dict__, "status": SpecificationStatus.EFFECTIVE, "effective_from": AT,
           "approved_by": "qa.approver", "approved_at": AT}))
    assert effective.status == pb.SPECIFICATION_STATUS_EFFECTIVE
    assert effective.effective_from.ToDatetime(tzinfo=UTC) == AT
