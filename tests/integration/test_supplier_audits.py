"""Audits of a supplier's sites over real gRPC: recorded once, never edited, listed by date.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from tests.support import suppliers as support
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.suppliers import (
    failure,
    new_qa,
)

pytestmark = pytest.mark.integration

# The fixtures of tests/support/suppliers.py that these tests use.
suppliers = support.suppliers


# Audits


@pytest.mark.req("SUP-005")
async def test_an_audit_is_recorded_once_and_never_edited(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    audit = await qa.audit(audit_id=ref("AUD"), critical_findings=0, major_findings=2)

    retried = await qa.audit(audit_id=audit.audit_id, critical_findings=0, major_findings=2)
    error = await failure(qa.audit(audit_id=audit.audit_id, critical_findings=0,
                                   major_findings=0))

    assert retried == audit
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = (await suppliers.ListAudits(pb.ListAuditsRequest(
        supplier_id=qa.supplier_id))).audits
    assert list(listed) == [audit]
    assert (audit.type, audit.outcome, audit.major_findings, audit.recorded_by) == (
        pb.AUDIT_TYPE_ON_SITE, pb.AUDIT_OUTCOME_APPROVED, 2, "qa.jane")


@pytest.mark.req("SUP-005")
async def test_audits_are_listed_by_date_and_filtered_by_site(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site("MAIN")
    await qa.site("OTHER")
    today = qa.now.date()
    late = await qa.audit("MAIN", audit_date=(today - timedelta(days=1)).isoformat())
    early = await qa.audit("MAIN", audit_date=(today - timedelta(days=300)).isoformat())
    other = await qa.audit("OTHER", type=pb.AUDIT_TYPE_QUESTIONNAIRE)

    everything = (await suppliers.ListAudits(pb.ListAuditsRequest(
        supplier_id=qa.supplier_id))).audits
    main = (await suppliers.ListAudits(pb.ListAuditsRequest(
        supplier_id=qa.supplier_id, site_id="MAIN"))).audits

    assert [a.audit_id for a in main] == [early.audit_id, late.audit_id]
    assert {a.audit_id for a in everything} == {early.audit_id, late.audit_id, other.audit_id}


@pytest.mark.req("SUP-005")
async def test_an_implausible_audit_names_every_bad_field(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.site()
    tomorrow = (qa.now.date() + timedelta(days=1)).isoformat()

    future = await failure(qa.audit(audit_date=tomorrow, next_audit_due=tomorrow,
                                    critical_findings=1))
    malformed = await failure(qa.audit(audit_date="26/11/2026", type=0, outcome=0,
                                       minor_findings=-1, auditor=""))

    assert future.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(future)) == {"audit_date", "next_audit_due", "outcome"}
    assert set(field_violations(malformed)) == {"audit_date", "type", "outcome",
                                                "minor_findings", "auditor"}
    audits = await suppliers.ListAudits(pb.ListAuditsRequest(supplier_id=qa.supplier_id))
    assert list(audits.audits) == []


@pytest.mark.req("SUP-005")
async def test_an_audit_of_an_unknown_site_is_not_found(suppliers) -> None:
    qa = await new_qa(suppliers)

    error = await failure(qa.audit("NOWHERE"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "NOWHERE" in error.details()
