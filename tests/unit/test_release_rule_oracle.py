"""The release rule against an independent oracle, over tens of thousands of histories.

`expected` below is written from the README's rule table and status paragraph ("The
release rule"), not from `decide`: it does not share its helpers, its order of checks or
its data flow. Each case is a history a lot can have: several results per test with
invalidations, confirmations and retests, results numbered with gaps (or unnumbered),
assay and bioburden required by a specification version, every standing of the supplier
site (each with its own code), QA's facts (policy, release, hold, rejection) and the
lot's dates. The cases are enumerated where the space is small and drawn from a seeded
generator where it is not, so every run checks the same cases.

The comparison is on the status and on the multiset of condition codes; the README does
not fix the order in which conditions are listed.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest

from services.lots.domain import (
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Verdict,
    decide,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
# Cases drawn per chunk of the sampled test (20 chunks); the default gives 20,000 cases.
PER_CHUNK = int(os.environ.get("LOTGATE_ORACLE_CASES_PER_CHUNK", "1000"))

IDT, PUR, STE, ASY, BIO = (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY,
                           TestKind.ASSAY, TestKind.BIOBURDEN)
ALWAYS = {IDT, PUR, STE}

# Every standing of the supplier site the lots service can hold, with the one code the
# README gives it ("" when the site is approved). valid_until one day away either side,
# never the exact instant (the README says "has passed", not where the instant falls).
STANDINGS: dict[str, tuple[QualificationFacts | None, str]] = {
    "unknown": (None, "SUPPLIER_NOT_QUALIFIED"),
    "blank": (QualificationFacts("", None, 0), "SUPPLIER_NOT_QUALIFIED"),
    "pending": (QualificationFacts("PENDING", None, 1), "SUPPLIER_NOT_QUALIFIED"),
    "qualified": (QualificationFacts("QUALIFIED", NOW + timedelta(days=1), 2), ""),
    "qualified-lapsed": (QualificationFacts("QUALIFIED", NOW - timedelta(days=1), 2),
                         "QUALIFICATION_EXPIRED"),
    "qualified-no-date": (QualificationFacts("QUALIFIED", None, 2), "QUALIFICATION_EXPIRED"),
    "suspended": (QualificationFacts("SUSPENDED", NOW + timedelta(days=1), 3),
                  "SUPPLIER_SUSPENDED"),
    "disqualified": (QualificationFacts("DISQUALIFIED", NOW + timedelta(days=1), 4),
                     "SUPPLIER_DISQUALIFIED"),
    "expired": (QualificationFacts("EXPIRED", NOW - timedelta(days=1), 5),
                "QUALIFICATION_EXPIRED"),
    "expired-future-date": (QualificationFacts("EXPIRED", NOW + timedelta(days=1), 5),
                            "QUALIFICATION_EXPIRED"),
}

# What a result can be: its verdict and where QA's handling left it. A pass is never
# confirmed (only an out-of-specification result is).
KINDS = [(Verdict.PASS, ResultState.VALID), (Verdict.PASS, ResultState.INVALIDATED),
         (Verdict.FAIL, ResultState.VALID), (Verdict.FAIL, ResultState.INVALIDATED),
         (Verdict.FAIL, ResultState.CONFIRMED)]


@dataclass(frozen=True)
class Case:
    standing: str
    results: tuple[ResultFacts, ...]
    expiry: date
    retest: date | None
    qa: QaFacts


def expected(case: Case) -> tuple[LotStatus, Counter[str]]:
    """The status and the condition codes the README's rule table gives for `case`."""
    codes: list[str] = []
    _, supplier_code = STANDINGS[case.standing]
    if supplier_code:
        codes.append(supplier_code)
    # "Every test of the specification version a result was judged against is required
    # (identity, purity and sterility always are)."
    required = set(ALWAYS)
    for r in case.results:
        required |= set(r.required_tests)
    for test in required:
        mine = [r for r in case.results if r.test is test]
        if not mine:
            codes.append(f"{test.value}_MISSING")
            continue
        # An invalidated result no longer counts. A confirmed failure rejects, one under
        # investigation holds, and (one condition per test, the gravest) a confirmation
        # outranks an investigation of the same test. A passing retest does not overrule a
        # failure that still counts.
        if any(r.state is ResultState.CONFIRMED for r in mine):
            codes.append(f"{test.value}_FAILED")
        elif any(r.verdict is Verdict.FAIL and r.state is ResultState.VALID for r in mine):
            codes.append(f"{test.value}_OUT_OF_SPECIFICATION")
        elif all(r.state is ResultState.INVALIDATED for r in mine):
            codes.append(f"{test.value}_RETEST_REQUIRED")
    # Results are numbered 1, 2, 3, ...: n+1 here and n not is incomplete.
    numbers = {r.number for r in case.results if r.number}
    if numbers and numbers != set(range(1, max(numbers) + 1)):
        codes.append("RESULTS_INCOMPLETE")
    past_expiry = TODAY > case.expiry
    if past_expiry:
        codes.append("LOT_EXPIRED")
    if case.retest is not None and case.retest <= TODAY:
        codes.append("RETEST_DATE_REACHED")
    if case.qa.hold_reason:
        codes.append("QA_HOLD")
    if case.qa.rejection_reason:
        codes.append("QA_REJECTED")
    if past_expiry:
        status = LotStatus.EXPIRED
    elif any(c.endswith("_FAILED") or c == "QA_REJECTED" for c in codes):
        status = LotStatus.REJECTED
    elif any(c.endswith("_OUT_OF_SPECIFICATION") or c == "QA_HOLD" for c in codes):
        status = LotStatus.ON_HOLD
    elif codes:
        status = LotStatus.QUARANTINE
    elif case.qa.policy is ReleasePolicy.QA_RELEASE and not case.qa.released:
        status = LotStatus.RELEASABLE
        codes.append("QA_RELEASE_REQUIRED")
    else:
        status = LotStatus.RELEASED
    return status, Counter(codes)


def actual(case: Case) -> tuple[LotStatus, Counter[str]]:
    lot = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", case.expiry, case.retest)
    qualification, _ = STANDINGS[case.standing]
    decision = decide(lot, qualification, case.results, NOW, case.qa)
    return decision.status, Counter(u.code for u in decision.unmet)


def check(cases: list[Case]) -> None:
    """Every case agrees with the oracle; else how many do not, and the first few."""
    wrong = []
    for case in cases:
        want, got = expected(case), actual(case)
        if want != got:
            wrong.append((case, want, got))
    assert not wrong, (f"{len(wrong)} of {len(cases)} cases disagree with the README; first: "
                       + "\n".join(f"{c}\n  README: {w}\n  decide: {g}" for c, w, g in wrong[:3]))


# Histories built from per-test sequences of result kinds, in the order they were recorded.

def history(per_test: dict[TestKind, list[tuple[Verdict, ResultState]]], *,
            spec: tuple[TestKind, ...] = (), numbering: str = "complete",
            rng: random.Random | None = None) -> tuple[ResultFacts, ...]:
    """Results for `per_test`, interleaved (round-robin over the tests), each retest
    naming the invalidated result before it; `spec`: the tests the specification version
    requires beyond the three; `numbering`: "complete", "gap" (one number missing, when
    there are two results or more), "unnumbered" (0, as before numbering existed)."""
    queues = {test: list(kinds) for test, kinds in per_test.items()}
    ordered: list[tuple[TestKind, Verdict, ResultState]] = []
    while any(queues.values()):
        for test in list(queues):
            if queues[test]:
                ordered.append((test, *queues[test].pop(0)))
    numbers = list(range(1, len(ordered) + 1))
    if numbering == "gap" and len(ordered) >= 2:
        drop = (rng.randrange(len(ordered)) if rng else 0) + 1
        numbers = [n if n < drop else n + 1 for n in numbers]  # `drop` is still on its way
    elif numbering == "unnumbered":
        numbers = [0] * len(ordered)
    required = tuple(sorted(ALWAYS | set(spec), key=list(TestKind).index))
    results: list[ResultFacts] = []
    last_invalidated: dict[TestKind, str] = {}
    for i, (test, verdict, state) in enumerate(ordered):
        result_id = f"R{i + 1:03d}-{test.value}"
        results.append(ResultFacts(
            result_id, test, verdict, sequence=100 + i, spec_version=2 if spec else 1,
            number=numbers[i], state=state,
            state_reason="laboratory error" if state is ResultState.INVALIDATED else "",
            retest_of=last_invalidated.pop(test, ""), required_tests=required))
        if state is ResultState.INVALIDATED:
            last_invalidated[test] = result_id
    return tuple(results)


PASS = (Verdict.PASS, ResultState.VALID)
PASS_INVALIDATED = (Verdict.PASS, ResultState.INVALIDATED)
OOS = (Verdict.FAIL, ResultState.VALID)
OOS_INVALIDATED = (Verdict.FAIL, ResultState.INVALIDATED)
OOS_CONFIRMED = (Verdict.FAIL, ResultState.CONFIRMED)

# Representative histories for the exhaustive product below.
HISTORIES = {
    "all pass": history({IDT: [PASS], PUR: [PASS], STE: [PASS]}),
    "sterility missing": history({IDT: [PASS], PUR: [PASS]}),
    "purity out of specification": history({IDT: [PASS], PUR: [OOS], STE: [PASS]}),
    "sterility confirmed failure": history({IDT: [PASS], PUR: [PASS], STE: [OOS_CONFIRMED]}),
    "identity invalidated, no retest": history({IDT: [OOS_INVALIDATED], PUR: [PASS],
                                                STE: [PASS]}),
    "purity invalidated and retested": history({IDT: [PASS], PUR: [OOS_INVALIDATED, PASS],
                                                STE: [PASS]}),
    "passing retest after a failure that counts": history({IDT: [PASS], PUR: [OOS, PASS],
                                                           STE: [PASS]}),
    "a gap in the numbering": history({IDT: [PASS], PUR: [PASS, PASS], STE: [PASS]},
                                      numbering="gap"),
    "assay required and missing": history({IDT: [PASS], PUR: [PASS], STE: [PASS]},
                                          spec=(ASY,)),
    "bioburden required and passed": history({IDT: [PASS], PUR: [PASS], STE: [PASS],
                                              BIO: [PASS]}, spec=(BIO,)),
    "nothing yet": (),
}
EXPIRIES = {"expired yesterday": TODAY - timedelta(days=1), "expires today": TODAY,
            "expires next year": TODAY + timedelta(days=365)}
RETESTS = {"no retest date": None, "retest date passed": TODAY - timedelta(days=1),
           "retest date today": TODAY, "retest date tomorrow": TODAY + timedelta(days=1)}
QAS = [QaFacts(policy, released, hold, rejection)
       for policy, released, hold, rejection in itertools.product(
           ReleasePolicy, (False, True), ("", "label mix-up"), ("", "container damaged"))]


@pytest.mark.parametrize("standing", STANDINGS)
def test_every_standing_qa_fact_and_date_with_representative_histories_follows_the_readme(
        standing: str) -> None:
    # 11 histories x 3 expiries x 4 retest dates x 16 QA facts = 2,112 cases per standing.
    cases = [Case(standing, results, expiry, retest, qa)
             for results in HISTORIES.values() for expiry in EXPIRIES.values()
             for retest in RETESTS.values() for qa in QAS]

    check(cases)


def _drawn_case(rng: random.Random) -> Case:
    """A case drawn with weights that make every status common enough: most results pass,
    most sites are qualified, most lots are within their dates."""
    spec = tuple(t for t in (ASY, BIO) if rng.random() < 0.3)
    per_test = {}
    for test in (IDT, PUR, STE, ASY, BIO):
        if test in (ASY, BIO) and test not in spec and rng.random() < 0.8:
            continue  # a result of a test nobody requires is possible, but rare
        count = rng.choice((0, 1, 1, 1, 1, 1, 2, 2, 3))
        per_test[test] = rng.choices(KINDS, weights=(12, 1, 1, 1, 1), k=count)
    numbering = rng.choices(("complete", "gap", "unnumbered"), weights=(6, 1, 1))[0]
    results = history(per_test, spec=spec, numbering=numbering, rng=rng)
    expiry = rng.choices(list(EXPIRIES.values()), weights=(1, 1, 8))[0]
    retest = rng.choices(list(RETESTS.values()), weights=(6, 1, 1, 2))[0]
    qa = QaFacts(rng.choice(list(ReleasePolicy)), rng.random() < 0.5,
                 "label mix-up" if rng.random() < 0.1 else "",
                 "container damaged" if rng.random() < 0.05 else "")
    standing = "qualified" if rng.random() < 0.5 else rng.choice(list(STANDINGS))
    return Case(standing, results, expiry, retest, qa)


@pytest.mark.parametrize("chunk", range(20))
def test_drawn_histories_follow_the_readme(chunk: int) -> None:
    rng = random.Random(17_000 + chunk)
    cases = [_drawn_case(rng) for _ in range(PER_CHUNK)]

    check(cases)


def test_the_drawn_histories_reach_every_status_and_condition() -> None:
    """The generator is not blind: the drawn cases produce every status and every code."""
    seen_status: Counter[LotStatus] = Counter()
    seen_codes: Counter[str] = Counter()
    for chunk in range(20):
        rng = random.Random(17_000 + chunk)
        for _ in range(PER_CHUNK):
            status, codes = expected(_drawn_case(rng))
            seen_status[status] += 1
            seen_codes.update(codes)

    assert set(seen_status) == set(LotStatus), seen_status
    assert min(seen_status.values()) >= PER_CHUNK // 10, seen_status
    suffixes = ("MISSING", "OUT_OF_SPECIFICATION", "RETEST_REQUIRED", "FAILED")
    wanted = {f"{t.value}_{s}" for t in TestKind for s in suffixes} | {
        "SUPPLIER_NOT_QUALIFIED", "SUPPLIER_SUSPENDED", "SUPPLIER_DISQUALIFIED",
        "QUALIFICATION_EXPIRED", "RESULTS_INCOMPLETE", "LOT_EXPIRED", "RETEST_DATE_REACHED",
        "QA_HOLD", "QA_REJECTED", "QA_RELEASE_REQUIRED"}
    assert wanted <= set(seen_codes), sorted(wanted - set(seen_codes))
