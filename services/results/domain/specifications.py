"""Specifications: the acceptance criteria of a material, one version at a time. A DRAFT
may be changed by its authors; a second person approves it (four eyes) and it becomes
EFFECTIVE from a date, never to change again. The version in force when a result was
measured judges it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from services.results.domain.units import UNITS, canonical_unit
from shared.contract import TestKind
from shared.dates import MAX_SPECIFICATION_LEAD_YEARS, years_after
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

# Every specification has these; release needs every test of the specification.
REQUIRED_TESTS = (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY)


class SpecificationStatus(StrEnum):
    DRAFT = "DRAFT"
    EFFECTIVE = "EFFECTIVE"


@dataclass(frozen=True)
class Bound:
    value: float
    exclusive: bool = False


@dataclass(frozen=True)
class RangeCriterion:
    """A number within [lower, upper] (each bound inclusive unless exclusive) in `unit`.

    With `decimals`, the value is rounded half away from zero to that many decimals
    before it is compared (USP General Notices 7.20).
    """

    lower: Bound | None
    upper: Bound | None
    unit: str
    decimals: int | None = None


@dataclass(frozen=True)
class IdentityCriterion:
    reference: str
    min_score: float | None = None


@dataclass(frozen=True)
class SterilityCriterion:
    method: str = ""


Criterion = IdentityCriterion | RangeCriterion | SterilityCriterion

# Which kind of criterion (and of measurement) each test takes.
CRITERION_OF: dict[TestKind, type[Criterion]] = {
    TestKind.IDENTITY: IdentityCriterion,
    TestKind.PURITY: RangeCriterion,
    TestKind.STERILITY: SterilityCriterion,
    TestKind.ASSAY: RangeCriterion,
    TestKind.BIOBURDEN: RangeCriterion,
}


@dataclass(frozen=True)
class TestCriterion:
    __test__ = False

    test: TestKind
    method: str
    criterion: Criterion


@dataclass(frozen=True)
class Specification:
    """One version of a material's acceptance criteria. An EFFECTIVE version never changes."""

    material_code: str
    version: int
    status: SpecificationStatus
    tests: tuple[TestCriterion, ...]
    effective_from: datetime | None
    created_by: str
    created_at: datetime
    approved_by: str
    approved_at: datetime | None
    change_reason: str

    def criterion(self, test: TestKind) -> TestCriterion | None:
        return next((t for t in self.tests if t.test is test), None)

    @property
    def test_kinds(self) -> tuple[TestKind, ...]:
        return tuple(t.test for t in self.tests)


MAX_DECIMALS = 6


def check_tests(tests: Sequence[TestCriterion]) -> list[tuple[str, str]]:
    """Problems of a specification's tests, as (field, description); fields are
    relative to the request, for example "tests[1].range.lower"."""
    problems: list[tuple[str, str]] = []
    seen: set[TestKind] = set()
    for i, t in enumerate(tests):
        where = f"tests[{i}]"
        if t.test in seen:
            problems.append((f"{where}.test", f"{t.test} appears more than once"))
        seen.add(t.test)
        expected = CRITERION_OF[t.test]
        if not isinstance(t.criterion, expected):
            problems.append((where, f"a {t.test} test needs a "
                                    f"{_CRITERION_NAME[expected]} criterion"))
            continue
        c = t.criterion
        if isinstance(c, RangeCriterion):
            problems += [(f"{where}.range{'.' + f if f else ''}", d)
                         for f, d in range_problems(c)]
        elif isinstance(c, IdentityCriterion):
            if not c.reference.strip():
                problems.append((f"{where}.identity.reference", "is required"))
            if c.min_score is not None and not (math.isfinite(c.min_score)
                                                and 0 <= c.min_score <= 100):
                problems.append((f"{where}.identity.min_score",
                                 "must be a number from 0 to 100"))
    missing = [t.value for t in REQUIRED_TESTS if t not in seen]
    if missing:
        problems.append(("tests", f"must include {', '.join(missing)}: identity, purity and "
                                  "sterility are always required for release"))
    return problems


_CRITERION_NAME = {IdentityCriterion: "identity", RangeCriterion: "range",
                   SterilityCriterion: "sterility"}


def range_problems(c: RangeCriterion) -> list[tuple[str, str]]:
    """What is wrong with a range, as (field, problem); field "" means the range."""
    problems = []
    if c.lower is None and c.upper is None:
        problems.append(("", "needs a lower bound, an upper bound or both"))
    for name, bound in (("lower", c.lower), ("upper", c.upper)):
        if bound is not None and not math.isfinite(bound.value):
            problems.append((f"{name}.value", "must be a finite number"))
    if not c.unit.strip():
        problems.append(("unit", "is required"))
    elif canonical_unit(c.unit) is None:
        problems.append(("unit", f"'{c.unit}' is not a unit Lotgate knows "
                                 f"({', '.join(sorted(UNITS))})"))
    if c.decimals is not None and not 0 <= c.decimals <= MAX_DECIMALS:
        problems.append(("decimals", f"must be between 0 and {MAX_DECIMALS}"))
    if not problems and c.lower is not None and c.upper is not None:
        lo, hi = c.lower, c.upper
        if lo.value > hi.value or (lo.value == hi.value and (lo.exclusive or hi.exclusive)):
            problems.append(("lower.value", f"leaves no value that could pass "
                                            f"({show_range(c)})"))
    return problems


def check_draft_change(spec: Specification | None, *, material_code: str,
                       version: int) -> Specification:
    """The draft that may be changed, or why not (NOT_FOUND is the caller's)."""
    subject = spec_subject(material_code, version)
    if spec is None:
        raise FailedPrecondition(f"specification {material_code} version {version} does not "
                                 "exist", subject=subject)
    if spec.status is SpecificationStatus.EFFECTIVE:
        raise FailedPrecondition(
            f"specification {material_code} version {version} is EFFECTIVE and can never be "
            "edited; create a new version", subject=subject)
    return spec


def check_approval(spec: Specification, *, approved_by: str, effective_from: datetime,
                   now: datetime, authors: Sequence[str] = ()) -> None:
    """Whether `approved_by` may make this draft effective from `effective_from`.

    Four eyes: nobody who wrote the draft (its creator, or any of `authors`, everyone who
    changed it) may approve it.
    """
    subject = spec_subject(spec.material_code, spec.version)
    if spec.status is SpecificationStatus.EFFECTIVE:
        raise FailedPrecondition(
            f"specification {spec.material_code} version {spec.version} is already EFFECTIVE",
            subject=subject)
    if approved_by == spec.created_by:
        raise FailedPrecondition(
            f"{approved_by} wrote this draft and cannot also approve it (four eyes)",
            type_="APPROVER", subject=subject)
    if effective_from < now:
        raise FailedPrecondition("effective_from must not lie in the past", type_="DATE",
                                 subject=subject)
    latest = years_after(now, MAX_SPECIFICATION_LEAD_YEARS)
    if effective_from > latest:
        # A version approved today describes today's knowledge; one effective years ahead
        # is a typo (shared/dates.py).
        raise InvalidArgument([FieldViolation(
            "effective_from", f"must lie at most {MAX_SPECIFICATION_LEAD_YEARS} year ahead "
                              f"(not after {latest.isoformat()})")])
    if approved_by in authors:
        raise FailedPrecondition(
            f"{approved_by} changed this draft and cannot also approve it (four eyes)",
            type_="APPROVER", subject=subject)


def is_repeated_approval(spec: Specification, *, approved_by: str,
                         effective_from: datetime | None) -> bool:
    """Whether an approval asks for what the version already is (a retry)."""
    return (spec.status is SpecificationStatus.EFFECTIVE and spec.approved_by == approved_by
            and effective_from in (None, spec.effective_from))


def approved(spec: Specification, *, approved_by: str, effective_from: datetime,
             now: datetime) -> Specification:
    """The draft made EFFECTIVE (check_approval says whether it may be)."""
    return replace(spec, status=SpecificationStatus.EFFECTIVE, effective_from=effective_from,
                   approved_by=approved_by, approved_at=now)


def new_draft(versions: Sequence[Specification], *, material_code: str,
              tests: Sequence[TestCriterion], change_reason: str, created_by: str,
              now: datetime) -> Specification:
    """The next version of a material's specification, as a DRAFT; only one draft per
    material may be open."""
    draft = next((s for s in versions if s.status is SpecificationStatus.DRAFT), None)
    if draft is not None:
        raise FailedPrecondition(
            f"specification {material_code} version {draft.version} is an open DRAFT: "
            "change or approve it before another version is started",
            subject=spec_subject(material_code, draft.version))
    return Specification(
        material_code=material_code, version=max((s.version for s in versions), default=0) + 1,
        status=SpecificationStatus.DRAFT, tests=ordered(tests), effective_from=None,
        created_by=created_by, created_at=now, approved_by="", approved_at=None,
        change_reason=change_reason)


def changed_draft(spec: Specification, *, tests: Sequence[TestCriterion],
                  change_reason: str) -> Specification:
    return replace(spec, tests=ordered(tests), change_reason=change_reason)


def with_author(authors: Sequence[str], author: str) -> tuple[str, ...]:
    """Everyone who wrote a draft, the creator first, once each."""
    return tuple(authors) if author in authors else (*authors, author)


def ordered(tests: Sequence[TestCriterion]) -> tuple[TestCriterion, ...]:
    """Tests in the order of the contract's enum (TestKind's order)."""
    order = list(TestKind)
    return tuple(sorted(tests, key=lambda t: order.index(t.test)))


def spec_subject(material_code: str, version: int) -> str:
    return f"materials/{material_code}/specifications/{version}"


def in_force(versions: Sequence[Specification], instant: datetime) -> Specification | None:
    """The EFFECTIVE version that judges a result measured at `instant`: the highest
    version whose effective_from is not after it."""
    found = [s for s in versions if s.status is SpecificationStatus.EFFECTIVE
             and s.effective_from is not None and s.effective_from <= instant]
    return max(found, key=lambda s: s.version, default=None)


def show_range(c: RangeCriterion) -> str:
    lo = (f"{'(' if c.lower.exclusive else '['}{c.lower.value:g}" if c.lower else "(-inf")
    hi = (f"{c.upper.value:g}{')' if c.upper.exclusive else ']'}" if c.upper else "+inf)")
    return f"{lo}, {hi} {c.unit}"
