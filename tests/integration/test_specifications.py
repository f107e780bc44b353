"""Specifications over real gRPC: drafts, four eyes, versions and the version in force.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import grpc
import pytest

from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from shared.protoconv import from_timestamp, to_timestamp
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    FAILED,
    SPECIFICATION_APPROVED,
    approve,
    current_spec,
    draft,
    events_until,
    now,
    post,
    precondition,
    purity,
    receive_lot,
    refused,
    spec_tests,
    specify,
)
from tests.support.services import ref

pytestmark = pytest.mark.integration

# The fixtures of tests/support/results.py: the running service, a stub for it, its
# instruments (registered for the module) and JetStream.
service = support.service
stub = support.stub
instruments = support.instruments
js = support.js


# Specifications: drafts, four eyes, versions


@pytest.mark.req("SPEC-001")
async def test_a_draft_judges_nothing_until_a_second_person_approves_it(stub, js) -> None:
    material = ref("MAT")
    before = now()

    written = await draft(stub, material, by="qa.author")
    lot_id = await receive_lot(stub, js, material)
    missing = await refused(current_spec(stub, material))
    too_early = await refused(post(stub, purity(lot_id, 99.0)))
    approved = await approve(stub, material, written.version, by="qa.approver")

    assert (written.version, written.status, written.created_by) == (
        1, pb.SPECIFICATION_STATUS_DRAFT, "qa.author")
    assert not written.HasField("effective_from")
    assert [t.test for t in written.tests] == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY]
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert set(field_violations(missing)) == {"material_code"}
    assert too_early.code() == FAILED
    assert precondition(too_early)[0] == "SPECIFICATION"
    assert (approved.status, approved.approved_by, approved.change_reason) == (
        pb.SPECIFICATION_STATUS_EFFECTIVE, "qa.approver", "CC-2026-101")
    assert before <= from_timestamp(approved.effective_from) <= now()
    assert approved.effective_from == approved.approved_at
    assert await current_spec(stub, material) == approved
    assert (await post(stub, purity(lot_id, 99.0))).spec_version == 1


@pytest.mark.req("SPEC-001")
async def test_the_author_of_a_draft_cannot_approve_it(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material, by="qa.author")

    error = await refused(approve(stub, material, written.version, by="qa.author"))

    assert error.code() == FAILED
    assert "four eyes" in error.details()
    assert precondition(error) == ("APPROVER", f"materials/{material}/specifications/1")
    assert (await current_spec(stub, material, version=1)).status == (
        pb.SPECIFICATION_STATUS_DRAFT)


@pytest.mark.req("SPEC-001")
async def test_whoever_changed_a_draft_cannot_approve_it_either(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material, by="qa.author")
    await stub.UpdateSpecificationDraft(pb.UpdateSpecificationDraftRequest(
        material_code=material, version=written.version, tests=spec_tests(lower=99.0),
        change_reason="tighter purity", requested_by="qa.editor"))

    error = await refused(approve(stub, material, written.version, by="qa.editor"))
    approved = await approve(stub, material, written.version, by="qa.approver")

    assert error.code() == FAILED
    assert precondition(error)[0] == "APPROVER"
    assert approved.tests[1].range.lower.value == 99.0
    assert approved.created_by == "qa.author"


@pytest.mark.req("SPEC-002")
async def test_an_effective_version_is_never_edited(stub) -> None:
    material = ref("MAT")
    effective = await specify(stub, material)

    error = await refused(stub.UpdateSpecificationDraft(pb.UpdateSpecificationDraftRequest(
        material_code=material, version=effective.version, tests=spec_tests(lower=90.0),
        change_reason="loosen", requested_by="qa.author")))

    assert error.code() == FAILED
    assert "never be edited" in error.details()
    assert await current_spec(stub, material, version=effective.version) == effective


@pytest.mark.req("SPEC-002")
async def test_a_draft_can_be_changed_until_it_is_approved(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material)

    changed = (await stub.UpdateSpecificationDraft(pb.UpdateSpecificationDraftRequest(
        material_code=material, version=written.version, tests=spec_tests(assay=True),
        change_reason="CC-2026-102: add an assay", requested_by="qa.author"))).specification

    assert changed.status == pb.SPECIFICATION_STATUS_DRAFT
    assert [t.test for t in changed.tests] == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY, pb.TEST_KIND_ASSAY]
    assert changed.change_reason == "CC-2026-102: add an assay"
    assert await current_spec(stub, material, version=written.version) == changed


@pytest.mark.req("SPEC-002")
async def test_versions_count_up_and_only_one_draft_may_be_open(stub) -> None:
    material = ref("MAT")
    first = await specify(stub, material)
    second = await draft(stub, material, lower=99.0)

    error = await refused(draft(stub, material, lower=97.0))
    versions = (await stub.ListSpecificationVersions(pb.ListSpecificationVersionsRequest(
        material_code=material))).specifications

    assert (first.version, second.version) == (1, 2)
    assert error.code() == FAILED
    assert "version 2 is an open DRAFT" in error.details()
    assert precondition(error)[1] == f"materials/{material}/specifications/2"
    assert list(versions) == [first, second]


@pytest.mark.req("SPEC-002")
async def test_concurrent_drafts_never_share_a_version(stub) -> None:
    material = ref("MAT")
    await specify(stub, material)

    outcomes = await asyncio.gather(*(draft(stub, material, lower=90.0 + i) for i in range(6)),
                                    return_exceptions=True)

    made = [o for o in outcomes if isinstance(o, pb.Specification)]
    lost = [o for o in outcomes if not isinstance(o, pb.Specification)]
    assert [s.version for s in made] == [2]
    assert {e.code() for e in lost} <= {FAILED, grpc.StatusCode.ABORTED}


@pytest.mark.req("SPEC-003")
async def test_the_version_in_force_depends_on_the_instant_asked_about(stub) -> None:
    material = ref("MAT")
    first = await specify(stub, material)
    later = from_timestamp(first.effective_from) + timedelta(hours=1)
    second = await specify(stub, material, lower=99.0, effective_from=later)

    assert await current_spec(stub, material) == first
    assert await current_spec(stub, material, as_of=to_timestamp(later)) == second
    assert await current_spec(stub, material, version=2) == second
    too_early = await refused(current_spec(
        stub, material, as_of=to_timestamp(from_timestamp(first.effective_from)
                                           - timedelta(seconds=1))))
    no_version = await refused(current_spec(stub, material, version=3))
    assert (too_early.code(), set(field_violations(too_early))) == (
        grpc.StatusCode.NOT_FOUND, {"as_of"})
    assert (no_version.code(), set(field_violations(no_version))) == (
        grpc.StatusCode.NOT_FOUND, {"version"})


@pytest.mark.req("DAT-003")
async def test_a_version_cannot_take_effect_in_the_past(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material)

    error = await refused(approve(stub, material, written.version,
                                  effective_from=now() - timedelta(hours=1)))

    assert error.code() == FAILED
    assert precondition(error)[0] == "DATE"
    assert (await current_spec(stub, material, version=1)).status == (
        pb.SPECIFICATION_STATUS_DRAFT)


@pytest.mark.req("SPEC-001", "DEL-005")
async def test_an_approval_retried_is_answered_with_the_effective_version(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material)
    approved = await approve(stub, material, written.version)

    again = await approve(stub, material, written.version)
    other = await refused(approve(stub, material, written.version, by="qa.someone.else"))

    assert again == approved
    assert other.code() == FAILED
    assert "already EFFECTIVE" in other.details()


@pytest.mark.req("SPEC-006")
async def test_a_bad_specification_names_every_bad_field(stub) -> None:
    tests = [
        pb.TestCriterion(test=pb.TEST_KIND_IDENTITY,
                         range=pb.RangeCriterion(lower=pb.Bound(value=1.0), unit="%")),
        pb.TestCriterion(test=pb.TEST_KIND_PURITY, range=pb.RangeCriterion(
            lower=pb.Bound(value=102.0), upper=pb.Bound(value=98.0), unit="%")),
        pb.TestCriterion(test=pb.TEST_KIND_PURITY, range=pb.RangeCriterion(
            upper=pb.Bound(value=math.nan), unit="furlongs")),
    ]

    error = await refused(stub.CreateSpecificationDraft(pb.CreateSpecificationDraftRequest(
        material_code="bad code!", tests=tests)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "material_code", "tests[0]", "tests[1].range.lower.value", "tests[2].test",
        "tests[2].range.upper.value", "tests[2].range.unit", "tests", "change_reason"}
    assert "STERILITY" in field_violations(error)["tests"]


@pytest.mark.req("SPEC-006")
async def test_a_criterion_of_an_unknown_test_or_without_a_kind_is_refused(stub) -> None:
    error = await refused(stub.CreateSpecificationDraft(pb.CreateSpecificationDraftRequest(
        material_code=ref("MAT"), change_reason="x", requested_by="qa.author",
        tests=[pb.TestCriterion(test=99, sterility=pb.SterilityCriterion()),
               pb.TestCriterion(test=pb.TEST_KIND_PURITY)])))

    assert set(field_violations(error)) == {"tests[0].test", "tests[1]"}


@pytest.mark.req("SPEC-001")
async def test_approval_is_announced_with_the_effective_version(stub, nats_server) -> None:
    material = ref("MAT")
    approved = await specify(stub, material)

    seen = await events_until(
        nats_server, {SPECIFICATION_APPROVED: events_pb2.SpecificationApproved},
        lambda e: e.specification.material_code == material, lambda e: True)

    assert [e.specification for _, e in seen] == [approved]
