"""Posting results as pure functions (domain/posting.py): the judging of a post once what
it needs is loaded, numbering per lot, no testing into compliance within a batch either,
every bad entry named as results[i]; and QA's handling of a result (domain/oos.py)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from services.results.commands import RecordResult
from services.results.domain.evaluation import IdentityOutcome, Quantity, SterilityOutcome
from services.results.domain.instruments import InstrumentStatus
from services.results.domain.oos import PriorResult, check_handling, is_repeated_handling
from services.results.domain.posting import Judging, check_instrument, check_original, judge
from services.results.domain.specifications import (
    Bound,
    IdentityCriterion,
    RangeCriterion,
    Specification,
    SpecificationStatus,
    SterilityCriterion,
    TestCriterion,
)
from shared.contract import ResultState, TestKind, Verdict
from shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SPEC = Specification(
    material_code="MAT-A", version=2, status=SpecificationStatus.EFFECTIVE,
    tests=(TestCriterion(TestKind.IDENTITY, "FTIR", IdentityCriterion("RS-7")),
           TestCriterion(TestKind.PURITY, "HPLC",
                         RangeCriterion(Bound(98.0), Bound(102.0), "%", decimals=1)),
           TestCriterion(TestKind.STERILITY, "", SterilityCriterion("Ph. Eur. 2.6.1"))),
    effective_from=NOW - timedelta(days=10), created_by="qa.author",
    created_at=NOW - timedelta(days=20), approved_by="qa.lead",
    approved_at=NOW - timedelta(days=10), change_reason="CC-1")


def post(lot_id: str = "LOT-1", *, value: float | None = 99.5, unit: str = "%",
         test: TestKind = TestKind.PURITY, retest_of: str = "",
         measured_at: datetime = NOW - timedelta(hours=1), key: str = "") -> RecordResult:
    measurement = (Quantity(value, unit) if value is not None else SterilityOutcome.GROWTH)
    return RecordResult(lot_id=lot_id, test=test, instrument_id="HPLC-01",
                        instrument_result_id=key or f"{lot_id}-{value}-{retest_of}",
                        measurement=measurement, measured_at=measured_at,
                        retest_of=retest_of, fingerprint=f"fp-{key}")


def run(commands: list[RecordResult], *, priors=None, batch: bool = True,
        first: dict[str, int] | None = None):
    ids = (f"R{n}" for n in itertools.count(1))
    return judge(commands, range(len(commands)),
                 materials={c.lot_id: "MAT-A" for c in commands},
                 first_numbers=first or {c.lot_id: 1 for c in commands},
                 specs={"MAT-A": [SPEC]}, priors=priors or {}, now=NOW, batch=batch,
                 new_id=lambda: next(ids))


@pytest.mark.req("RES-003", "SPEC-003")
def test_new_results_are_judged_rounded_and_numbered_per_lot_in_the_order_posted() -> None:
    new = run([post("LOT-1", value=99.96), post("LOT-2", value=97.0), post("LOT-1", value=98.0)],
              first={"LOT-1": 4, "LOT-2": 1})

    assert [(i, r.result_id, r.lot_id, r.lot_result_number, r.verdict) for i, r in new] == [
        (0, "R1", "LOT-1", 4, Verdict.PASS), (1, "R2", "LOT-2", 1, Verdict.FAIL),
        (2, "R3", "LOT-1", 5, Verdict.PASS)]
    first = new[0][1]
    assert (first.spec_version, first.required_tests, first.recorded_at, first.judged) == (
        2, (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY), NOW, Quantity(100.0, "%"))
    assert first.measurement == Quantity(99.96, "%")


@pytest.mark.req("SPEC-003", "RES-002")
def test_an_entry_measured_before_any_effective_version_names_itself() -> None:
    early = post(measured_at=NOW - timedelta(days=11))
    with pytest.raises(FailedPrecondition) as refused:
        run([post(), early])

    assert (refused.value.type_, refused.value.subject) == ("SPECIFICATION", "materials/MAT-A")
    assert refused.value.message.startswith("results[1]: material MAT-A had no EFFECTIVE "
                                            "specification in force at ")
    with pytest.raises(FailedPrecondition) as single:
        run([early], batch=False)
    assert single.value.message.startswith("material MAT-A had no EFFECTIVE")


@pytest.mark.req("RES-002", "RES-004")
def test_every_bad_entry_of_a_batch_is_named() -> None:
    with pytest.raises(InvalidArgument) as refused:
        run([post(test=TestKind.ASSAY), post(), post(unit="CFU/g")])

    assert [(v.field, v.description) for v in refused.value.violations] == [
        ("results[0].test", "ASSAY is not a test of specification version 2 of MAT-A (its "
                            "tests: IDENTITY, PURITY, STERILITY)"),
        ("results[2].quantity.unit", "'CFU/g' cannot be converted to '%', the unit of "
                                     "specification version 2 of MAT-A")]


@pytest.mark.req("OOS-004")
def test_testing_into_compliance_is_refused_within_a_batch() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        run([post(value=97.0), post(value=99.0)])

    assert (refused.value.type_, refused.value.subject) == ("INVESTIGATION", "results/R1")
    assert refused.value.message.startswith("results[1]: PURITY result R1 of this lot is out "
                                            "of specification")
    # Another lot, or another test of the same lot, is not held up.
    assert len(run([post(value=97.0), post("LOT-2", value=99.0),
                    post(value=None, test=TestKind.STERILITY)])) == 3


@pytest.mark.req("OOS-003")
def test_a_retest_in_a_batch_counts_for_the_entries_after_it() -> None:
    invalidated = {("LOT-1", TestKind.PURITY): [
        PriorResult("R0", Verdict.FAIL, ResultState.INVALIDATED, retested=False)]}

    with pytest.raises(FailedPrecondition) as refused:
        run([post(value=99.0, retest_of="R0"), post(value=99.1, retest_of="R0")],
            priors=invalidated)
    assert refused.value.message == "results[1]: result R0 has been retested already"
    # The priors given are not changed: the same check again sees R0 awaiting its retest.
    assert invalidated[("LOT-1", TestKind.PURITY)][0].retested is False
    assert len(run([post(value=99.0, retest_of="R0")], priors=invalidated)) == 1


@pytest.mark.req("RES-003", "OOS-004")
def test_posts_judged_together_see_the_posts_before_them() -> None:
    ids = (f"R{n}" for n in itertools.count(1))
    judging = Judging(materials={"LOT-1": "MAT-A", "LOT-2": "MAT-A"},
                      first_numbers={"LOT-1": 3, "LOT-2": 1}, specs={"MAT-A": [SPEC]},
                      priors={}, now=NOW, new_id=lambda: next(ids))

    first = judging.judge([post(value=97.0), post("LOT-2", value=99.0)], [0, 1], batch=True)
    second = judging.judge([post("LOT-2", value=99.5, key="b")], [0], batch=False)
    # Numbered after the earlier post's results of the same lot.
    assert [(r.lot_id, r.lot_result_number) for _, r in [*first, *second]] == [
        ("LOT-1", 3), ("LOT-2", 1), ("LOT-2", 2)]
    # The earlier post's failing result holds up this one's, as alone after it.
    with pytest.raises(FailedPrecondition) as refused:
        judging.judge([post(value=99.0, key="c")], [0], batch=False)
    assert (refused.value.type_, refused.value.subject) == ("INVESTIGATION", "results/R1")
    assert not refused.value.message.startswith("results[")


@pytest.mark.req("INS-001", "RES-002")
def test_an_instrument_out_of_calibration_is_refused_naming_the_entry() -> None:
    calibrated = [(date(2026, 1, 1), date(2026, 11, 24))]
    check_instrument(InstrumentStatus.ACTIVE, calibrated, instrument_id="HPLC-01",
                     measured=[(0, NOW - timedelta(days=1))], batch=True)
    with pytest.raises(FailedPrecondition) as refused:
        check_instrument(InstrumentStatus.ACTIVE, calibrated, instrument_id="HPLC-01",
                         measured=[(0, NOW - timedelta(days=1)), (1, NOW)], batch=True)
    assert (refused.value.message, refused.value.type_, refused.value.subject) == (
        "results[1]: instrument HPLC-01 was not within calibration on 2026-11-25; its "
        "calibration was due 2026-11-24", "INSTRUMENT", "instruments/HPLC-01")


@pytest.mark.req("RES-001")
def test_a_repeated_post_gets_the_original_only_with_the_same_content() -> None:
    [(_, stored)] = run([post(key="K-1")])
    assert check_original(stored, "fp-K-1", post(key="K-1"), "") is stored

    with pytest.raises(AlreadyExists) as conflict:
        check_original(stored, "fp-other", post(key="K-1"), "results[3]: ")
    assert conflict.value.message == (
        "results[3]: instrument HPLC-01 already recorded result R1 under instrument_result_id "
        "K-1 with other content; a new result needs a new id")


@pytest.mark.req("OOS-002", "OOS-003")
@pytest.mark.parametrize(("state", "verdict", "target", "refusal"), [
    (ResultState.VALID, Verdict.FAIL, ResultState.INVALIDATED, None),
    (ResultState.VALID, Verdict.PASS, ResultState.INVALIDATED, None),
    (ResultState.VALID, Verdict.FAIL, ResultState.CONFIRMED, None),
    (ResultState.VALID, Verdict.PASS, ResultState.CONFIRMED,
     "result R1 passes its specification; only an out-of-specification result is confirmed"),
    (ResultState.CONFIRMED, Verdict.FAIL, ResultState.INVALIDATED,
     "result R1 is CONFIRMED; only a VALID result can be invalidated"),
    (ResultState.INVALIDATED, Verdict.FAIL, ResultState.CONFIRMED,
     "result R1 is INVALIDATED; only a VALID result can be confirmed"),
])
def test_qa_handles_only_a_valid_result_and_confirms_only_a_failure(
        state, verdict, target, refusal) -> None:
    if refusal is None:
        check_handling(state, verdict, target, result_id="R1")
        return
    with pytest.raises(FailedPrecondition) as refused:
        check_handling(state, verdict, target, result_id="R1")
    assert (refused.value.message, refused.value.subject) == (refusal, "results/R1")


def test_the_same_decision_again_is_a_retry_and_another_is_not() -> None:
    done = dict(target=ResultState.INVALIDATED, asked_reason="LIR-7", asked_by="qa.jane")
    assert is_repeated_handling(ResultState.INVALIDATED, "LIR-7", "qa.jane", **done)
    assert not is_repeated_handling(ResultState.INVALIDATED, "LIR-8", "qa.jane", **done)
    assert not is_repeated_handling(ResultState.INVALIDATED, "LIR-7", "qa.bob", **done)
    assert not is_repeated_handling(ResultState.VALID, "", "", **done)


def test_identity_outcomes_are_judged_too() -> None:
    [(_, r)] = run([RecordResult(lot_id="LOT-1", test=TestKind.IDENTITY, instrument_id="FTIR",
                                 instrument_result_id="I-1",
                                 measurement=IdentityOutcome.NO_MATCH,
                                 measured_at=NOW, retest_of="", fingerprint="f")])
    assert (r.verdict, r.verdict_reason) == (
        Verdict.FAIL, "identity does not match the reference RS-7")
