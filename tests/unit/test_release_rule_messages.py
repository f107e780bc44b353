"""What a warehouse or QA person reads for each unmet condition: the exact message and the
regulation it cites, and what a replay says when a stored decision differs. The oracle
test checks the codes; this one checks the words that come with them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from services.lots.domain import (
    DecisionInputs,
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    ReviewState,
    TestKind,
    Unmet,
    Verdict,
    decide,
    missing_results,
    must_close,
    replay,
    replay_difference,
)
from shared.errors import FailedPrecondition

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LOT = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=date(2027, 6, 30))
QUALIFIED = QualificationFacts("QUALIFIED", NOW + timedelta(days=30), 3)
WHO = "supplier SUP-1 site SITE-1 for material MAT-1"
SUPPLIER_RULE = "ICH Q7 7.12, 7.31; EU GMP Part I 5.27-5.30"
T = TestKind


def r(test: TestKind, number: int, verdict: Verdict = Verdict.PASS,
      state: ResultState = ResultState.VALID, reason: str = "") -> ResultFacts:
    return ResultFacts(f"R-{number}", test, verdict, sequence=number, spec_version=2,
                       number=number, state=state, state_reason=reason)


PASSING = [r(T.IDENTITY, 1), r(T.PURITY, 2), r(T.STERILITY, 3)]


def only(decision) -> Unmet:
    [unmet] = decision.unmet
    return unmet


@pytest.mark.parametrize("qualification,expected", [
    (None, Unmet("SUPPLIER_NOT_QUALIFIED", f"{WHO} is not qualified", SUPPLIER_RULE)),
    (QualificationFacts("SUSPENDED", None, 4),
     Unmet("SUPPLIER_SUSPENDED", f"{WHO} is suspended", SUPPLIER_RULE)),
    (QualificationFacts("DISQUALIFIED", None, 4),
     Unmet("SUPPLIER_DISQUALIFIED", f"{WHO} is disqualified", SUPPLIER_RULE)),
    (QualificationFacts("EXPIRED", datetime(2026, 11, 1, tzinfo=UTC), 4),
     Unmet("QUALIFICATION_EXPIRED",
           f"the qualification of {WHO} lapsed on 2026-11-01T00:00:00+00:00", SUPPLIER_RULE)),
    (QualificationFacts("QUALIFIED", None, 4),
     Unmet("QUALIFICATION_EXPIRED", f"the qualification of {WHO} lapsed on an unknown date",
           SUPPLIER_RULE)),
])
def test_each_supplier_condition_names_the_site_and_cites_the_gmp_rule(
        qualification: QualificationFacts | None, expected: Unmet) -> None:
    assert only(decide(LOT, qualification, PASSING, NOW)) == expected


@pytest.mark.parametrize("results,expected", [
    ([replace(p, number=n) for n, p in enumerate(PASSING[1:], 1)],
     Unmet("IDENTITY_MISSING", "no identity result yet",
                        "21 CFR 211.84(d)(1); ICH Q7 7.30")),
    ([PASSING[0], r(T.PURITY, 2, Verdict.FAIL), PASSING[2]],
     Unmet("PURITY_OUT_OF_SPECIFICATION",
           "purity result R-2 is out of specification and under investigation",
           "21 CFR 211.192; FDA guidance on investigating OOS results (2006)")),
    ([PASSING[0], PASSING[1], r(T.STERILITY, 3, Verdict.FAIL, ResultState.CONFIRMED),
      r(T.STERILITY, 4, Verdict.FAIL, ResultState.CONFIRMED)],
     Unmet("STERILITY_FAILED",
           "sterility result R-3, R-4 fails its specification (version 2); confirmed by QA",
           "21 CFR 211.84(d)(6); 21 CFR 211.84(e)")),
    ([PASSING[0], r(T.PURITY, 2, state=ResultState.INVALIDATED, reason="diluted twice"),
      PASSING[2]],
     Unmet("PURITY_RETEST_REQUIRED",
           "purity result R-2 was invalidated (diluted twice); a retest is expected",
           "21 CFR 211.84(d)(2)")),
    ([PASSING[0], r(T.PURITY, 2, state=ResultState.INVALIDATED), PASSING[2]],
     Unmet("PURITY_RETEST_REQUIRED", "purity result R-2 was invalidated; a retest is expected",
           "21 CFR 211.84(d)(2)")),
    ([PASSING[0], PASSING[1], r(T.STERILITY, 5)],
     Unmet("RESULTS_INCOMPLETE", "result(s) 3, 4 of this lot have been recorded but have not "
                                 "arrived here yet",
           "21 CFR 211.194(a); EU GMP Annex 11 section 4.8")),
])
def test_each_result_condition_says_which_result_and_cites_its_rule(
        results: list[ResultFacts], expected: Unmet) -> None:
    assert only(decide(LOT, QUALIFIED, results, NOW)) == expected


def test_many_missing_results_are_shown_ten_at_a_time() -> None:
    def incomplete(last: int) -> str:
        return only(decide(LOT, QUALIFIED, [*PASSING, r(T.PURITY, last)], NOW)).message

    assert incomplete(14) == ("result(s) 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 of this lot have "
                              "been recorded but have not arrived here yet")
    assert incomplete(15) == ("result(s) 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 ... of this lot "
                              "have been recorded but have not arrived here yet")


def test_missing_results_start_at_number_one_and_ignore_unnumbered_results() -> None:
    assert missing_results([r(T.PURITY, 2), r(T.PURITY, 3)]) == [1]
    assert missing_results([replace(PASSING[0], number=0)]) == []
    assert missing_results([]) == []


def test_the_lots_own_conditions_cite_their_rules() -> None:
    lot = replace(LOT, retest_date=NOW.date())
    past_expiry = datetime(2027, 7, 1, tzinfo=UTC)

    assert only(decide(lot, QUALIFIED, PASSING, NOW)) == Unmet(
        "RETEST_DATE_REACHED", f"the lot's retest date {NOW.date().isoformat()} has come; it "
        "must be re-tested before use", "ICH Q7 11.6; 21 CFR 211.87")
    expired = decide(LOT, QualificationFacts("QUALIFIED", past_expiry + timedelta(days=1), 1),
                     PASSING, past_expiry)
    assert only(expired) == Unmet("LOT_EXPIRED", "the lot expired on 2027-06-30",
                                  "21 CFR 211.87; ICH Q7 7.5")
    qa = "EU GMP Part I 1.4(xv); 21 CFR 211.22(a)"
    assert only(decide(LOT, QUALIFIED, PASSING, NOW, QaFacts(hold_reason="label"))) == Unmet(
        "QA_HOLD", "held by QA: label", qa)
    assert only(decide(LOT, QUALIFIED, PASSING, NOW, QaFacts(rejection_reason="dented"))) == (
        Unmet("QA_REJECTED", "rejected by QA: dented", qa))
    assert only(decide(LOT, QUALIFIED, PASSING, NOW, QaFacts(ReleasePolicy.QA_RELEASE))) == (
        Unmet("QA_RELEASE_REQUIRED", "every condition holds; lots of material MAT-1 are "
              "released by QA, and QA has not released this one",
              "21 CFR 211.22(a); EU GMP Annex 16"))


def test_a_closed_review_closed_again_otherwise_is_refused_with_who_closed_it() -> None:
    assert must_close("LOT-1/3", ReviewState.OPEN, None, None, new_conclusion="ok",
                      requested_by="qa.jane")
    assert not must_close("LOT-1/3", ReviewState.CLOSED, "ok", "qa.jane", new_conclusion="ok",
                          requested_by="qa.jane")
    with pytest.raises(FailedPrecondition) as refused:
        must_close("LOT-1/3", ReviewState.CLOSED, "ok", "qa.jane", new_conclusion="not ok",
                   requested_by="qa.jane")

    assert (refused.value.message, refused.value.subject) == (
        "review LOT-1/3 is CLOSED (by qa.jane); a closed review cannot be closed again with "
        "another conclusion", "lot_reviews/LOT-1/3")


# Replay differences

def _replayed(qualification: QualificationFacts | None = QUALIFIED):
    return replay(DecisionInputs(LOT, qualification, tuple(PASSING[:2]), NOW), None, ())


def test_a_replay_that_agrees_says_nothing() -> None:
    replayed = _replayed()

    assert replay_difference(replayed, status=LotStatus.QUARANTINE, unmet=replayed.unmet,
                             rule_status=LotStatus.QUARANTINE,
                             required_tests=replayed.required_tests,
                             counted=replayed.counted) == ""


def test_every_difference_of_a_replay_is_named_and_joined() -> None:
    replayed = _replayed(None)
    other_message = (Unmet("SUPPLIER_NOT_QUALIFIED", "fine", replayed.unmet[0].rule),
                     *replayed.unmet[1:])

    difference = replay_difference(
        replayed, status=LotStatus.RELEASED, unmet=other_message, rule_status=None,
        required_tests=(T.IDENTITY,), counted=["R-1"])

    assert difference == "; ".join([
        "status: stored RELEASED, replayed QUARANTINE",
        "rule_status: not stored",
        f"unmet SUPPLIER_NOT_QUALIFIED: stored [SUPPLIER_NOT_QUALIFIED: fine ({SUPPLIER_RULE})]"
        f", replayed [SUPPLIER_NOT_QUALIFIED: {WHO} is not qualified ({SUPPLIER_RULE})]",
        "required_tests: stored ['IDENTITY'], replayed ['IDENTITY', 'PURITY', 'STERILITY']",
        "counted results: stored ['R-1'], replayed ['R-1', 'R-2']",
    ])
