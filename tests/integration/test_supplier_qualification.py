"""A site's qualification for a material over real gRPC: its lifecycle, and the
evidence an approval needs.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from shared.protoconv import from_timestamp, to_timestamp
from tests.support import suppliers as support
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.suppliers import (
    DISQUALIFIED,
    NONE,
    PENDING,
    QUALIFIED,
    SUSPENDED,
    failure,
    new_qa,
    precondition,
)

pytestmark = pytest.mark.integration

# The fixtures of tests/support/suppliers.py that these tests use.
suppliers = support.suppliers


# The lifecycle


@pytest.mark.req("SUP-003")
async def test_the_whole_lifecycle_is_recorded_with_actor_reason_and_evidence(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    audit = await qa.audit()

    opened = await qa.open()
    qualified = await qa.qualify(audit_id=audit.audit_id)
    suspended = await qa.suspend()
    reinstated = await qa.qualify(audit_id=audit.audit_id, reason="CAPA-12 closed")
    disqualified = await qa.disqualify()
    reopened = await qa.open()

    assert [q.status for q in (opened, qualified, suspended, reinstated, disqualified,
                               reopened)] == [PENDING, QUALIFIED, SUSPENDED, QUALIFIED,
                                              DISQUALIFIED, PENDING]
    assert qualified.evidence == pb.Evidence(audit_id=audit.audit_id,
                                             audit_date=audit.audit_date,
                                             quality_agreement_ref="QAG-12")
    history = await qa.history()
    assert [(c.version, c.previous_status, c.new_status, c.changed_by) for c in history] == [
        (1, NONE, PENDING, "qa.jane"),
        (2, PENDING, QUALIFIED, "qa.jane"),
        (3, QUALIFIED, SUSPENDED, "qa.bob"),
        (4, SUSPENDED, QUALIFIED, "qa.jane"),
        (5, QUALIFIED, DISQUALIFIED, "qa.jane"),
        (6, DISQUALIFIED, PENDING, "qa.jane"),
    ]
    assert [c.reason for c in history][2:5] == ["complaint CAPA-12", "CAPA-12 closed",
                                                "data integrity failure"]
    assert history[0].evidence.questionnaire_ref == "SQ-2026-7"
    assert history[1].evidence.audit_id == audit.audit_id
    assert all(c.changed_at.seconds > 0 and c.event_id and c.site_id == "MAIN"
               for c in history)
    assert [c.sequence for c in history] == sorted(c.sequence for c in history)


@pytest.mark.req("SUP-003")
async def test_a_renewal_moves_the_requalification_date(suppliers) -> None:
    qa = await new_qa(suppliers)
    first = await qa.approved(days=100)

    renewed = await qa.qualify(audit_id=first.evidence.audit_id, days=200)

    assert renewed.status == QUALIFIED and renewed.version == first.version + 1
    assert from_timestamp(renewed.valid_until) > from_timestamp(first.valid_until)


@pytest.mark.req("SUP-002")
@pytest.mark.parametrize(("steps", "action", "state", "says"), [
    ([], "qualify", "no qualification", "open one first"),
    ([], "suspend", "no qualification", "open one first"),
    (["open"], "suspend", "PENDING", "only a QUALIFIED qualification can be suspended"),
    (["open"], "open", "PENDING", "already open"),
    (["open", "qualify"], "open", "QUALIFIED", "already open"),
    (["open", "qualify", "suspend"], "suspend", "SUSPENDED", "only a QUALIFIED"),
    (["open", "disqualify"], "qualify", "DISQUALIFIED", "only a newly opened"),
    (["open", "disqualify"], "suspend", "DISQUALIFIED", "only a newly opened"),
    (["open", "disqualify"], "disqualify", "DISQUALIFIED", "only a newly opened"),
])
async def test_an_illegal_transition_is_a_failed_precondition_naming_the_state(
        suppliers, steps, action, state, says) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    audit = await qa.audit()
    run = {"open": qa.open, "suspend": qa.suspend, "disqualify": qa.disqualify,
           "qualify": lambda: qa.qualify(audit_id=audit.audit_id)}
    for step in steps:
        await run[step]()
    before = await qa.history()

    error = await failure(run[action]())

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert state in error.details() and says in error.details()
    assert precondition(error) == (
        "STATE", f"suppliers/{qa.supplier_id}/sites/MAIN/materials/MAT-A")
    assert await qa.history() == before


@pytest.mark.req("SUP-002")
async def test_a_stale_expected_version_is_aborted(suppliers) -> None:
    qa = await new_qa(suppliers)
    q = await qa.approved()

    error = await failure(qa.qualify(audit_id=q.evidence.audit_id, expected_version=1))

    assert error.code() == grpc.StatusCode.ABORTED
    assert (await qa.current()).qualification.version == q.version

# Evidence


@pytest.mark.req("SUP-004")
async def test_qualifying_requires_an_audit_and_a_quality_agreement(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    await qa.open()

    error = await failure(suppliers.QualifySupplier(pb.QualifySupplierRequest(
        valid_until=to_timestamp(qa.now + timedelta(days=30)), reason="ok",
        requested_by="qa.jane", **qa.key())))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"evidence.audit_id",
                                            "evidence.quality_agreement_ref"}
    assert (await qa.current()).qualification.status == PENDING


@pytest.mark.req("SUP-004")
async def test_the_cited_audit_must_exist_approve_and_be_of_the_same_site(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site("MAIN")
    await qa.site("OTHER")
    await qa.open("MAIN")
    other_site = await qa.audit("OTHER")
    refused = await qa.audit("MAIN", outcome=pb.AUDIT_OUTCOME_NOT_APPROVED, critical_findings=2,
                             next_audit_due="")

    for audit_id, says in ((ref("AUD"), "not on record"),
                           (other_site.audit_id, "is of site OTHER"),
                           (refused.audit_id, "did not approve")):
        error = await failure(qa.qualify(audit_id=audit_id))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert says in error.details()
        assert precondition(error)[0] == "EVIDENCE"
    assert (await qa.current()).qualification.status == PENDING


@pytest.mark.req("SUP-004")
async def test_an_approval_cannot_outlast_the_next_audit(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    audit = await qa.audit(due_in_days=180)
    await qa.open()

    error = await failure(qa.qualify(audit_id=audit.audit_id, days=365))
    ok = await qa.qualify(audit_id=audit.audit_id, days=179)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert audit.next_audit_due in error.details()
    assert ok.status == QUALIFIED


@pytest.mark.req("SUP-004")
async def test_a_qualification_date_in_the_past_is_refused(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    audit = await qa.audit()
    await qa.open()

    error = await failure(qa.qualify(audit_id=audit.audit_id, days=-1))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition(error)[0] == "DATE"
