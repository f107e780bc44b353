"""The rules of a specification's drafts and approval, as pure functions: one open draft
per material, versions counting up, tests kept in the contract's order, four eyes over
every author, and a repeated approval recognised as such."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.results.domain.specifications import (
    Bound,
    IdentityCriterion,
    RangeCriterion,
    Specification,
    SpecificationStatus,
    SterilityCriterion,
    TestCriterion,
    approved,
    check_approval,
    is_repeated_approval,
    new_draft,
    ordered,
    with_author,
)
from shared.contract import TestKind
from shared.errors import FailedPrecondition

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
IDENTITY = TestCriterion(TestKind.IDENTITY, "FTIR", IdentityCriterion("RS-7"))
PURITY = TestCriterion(TestKind.PURITY, "HPLC", RangeCriterion(Bound(98.0), Bound(102.0), "%"))
STERILITY = TestCriterion(TestKind.STERILITY, "", SterilityCriterion("Ph. Eur. 2.6.1"))
BIOBURDEN = TestCriterion(TestKind.BIOBURDEN, "TAMC", RangeCriterion(None, Bound(100.0),
                                                                      "CFU/g"))


def version(n: int, status: SpecificationStatus = SpecificationStatus.EFFECTIVE
            ) -> Specification:
    return Specification(
        material_code="MAT-A", version=n, status=status, tests=(IDENTITY, PURITY, STERILITY),
        effective_from=NOW - timedelta(days=30 - n) if status.value == "EFFECTIVE" else None,
        created_by="qa.author", created_at=NOW - timedelta(days=40), approved_by="qa.lead",
        approved_at=None, change_reason="CC-1")


def draft(versions: list[Specification], **kw) -> Specification:
    values = dict(material_code="MAT-A", tests=(STERILITY, BIOBURDEN, IDENTITY, PURITY),
                  change_reason="CC-2", created_by="qa.author", now=NOW)
    values.update(kw)
    return new_draft(versions, **values)


@pytest.mark.req("SPEC-002")
def test_a_new_draft_is_the_next_version_with_its_tests_in_the_contracts_order() -> None:
    spec = draft([version(1), version(2)])

    assert (spec.version, spec.status, spec.created_by, spec.created_at) == (
        3, SpecificationStatus.DRAFT, "qa.author", NOW)
    assert spec.test_kinds == (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY,
                               TestKind.BIOBURDEN)
    assert (spec.effective_from, spec.approved_by, spec.approved_at) == (None, "", None)
    assert draft([]).version == 1


@pytest.mark.req("SPEC-002")
def test_only_one_draft_of_a_material_may_be_open() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        draft([version(1), version(2, SpecificationStatus.DRAFT)])

    assert (refused.value.message, refused.value.subject) == (
        "specification MAT-A version 2 is an open DRAFT: change or approve it before another "
        "version is started", "materials/MAT-A/specifications/2")


def test_tests_are_ordered_as_the_contract_lists_them() -> None:
    assert [t.test for t in ordered([BIOBURDEN, STERILITY, PURITY, IDENTITY])] == [
        TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY, TestKind.BIOBURDEN]


@pytest.mark.req("SPEC-001")
def test_everyone_who_changed_a_draft_is_an_author_once() -> None:
    assert with_author(("qa.author",), "qa.second") == ("qa.author", "qa.second")
    assert with_author(("qa.author", "qa.second"), "qa.author") == ("qa.author", "qa.second")


@pytest.mark.req("SPEC-001")
def test_whoever_changed_a_draft_cannot_approve_it() -> None:
    spec = version(3, SpecificationStatus.DRAFT)
    check_approval(spec, approved_by="qa.lead", effective_from=NOW, now=NOW,
                   authors=("qa.author", "qa.second"))

    with pytest.raises(FailedPrecondition) as refused:
        check_approval(spec, approved_by="qa.second", effective_from=NOW, now=NOW,
                       authors=("qa.author", "qa.second"))
    assert (refused.value.message, refused.value.type_, refused.value.subject) == (
        "qa.second changed this draft and cannot also approve it (four eyes)", "APPROVER",
        "materials/MAT-A/specifications/3")
    with pytest.raises(FailedPrecondition) as creator:
        check_approval(spec, approved_by="qa.author", effective_from=NOW, now=NOW,
                       authors=("qa.author",))
    assert creator.value.message == ("qa.author wrote this draft and cannot also approve it "
                                     "(four eyes)")


@pytest.mark.req("SPEC-001")
def test_an_approval_repeated_is_recognised_and_another_is_not() -> None:
    effective = approved(version(3, SpecificationStatus.DRAFT), approved_by="qa.lead",
                         effective_from=NOW + timedelta(days=1), now=NOW)
    assert (effective.status, effective.approved_by, effective.approved_at,
            effective.effective_from) == (SpecificationStatus.EFFECTIVE, "qa.lead", NOW,
                                          NOW + timedelta(days=1))

    assert is_repeated_approval(effective, approved_by="qa.lead", effective_from=None)
    assert is_repeated_approval(effective, approved_by="qa.lead",
                                effective_from=NOW + timedelta(days=1))
    assert not is_repeated_approval(effective, approved_by="qa.other", effective_from=None)
    assert not is_repeated_approval(effective, approved_by="qa.lead", effective_from=NOW)
    assert not is_repeated_approval(replace(effective, status=SpecificationStatus.DRAFT),
                                    approved_by="qa.lead", effective_from=None)
