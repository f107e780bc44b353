"""The suppliers service over real gRPC, with a real database and a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lotgate.suppliers.v1 import events_pb2
from lotgate.suppliers.v1 import suppliers_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as pb_grpc
from services.suppliers import bootstrap
from shared import migrations
from shared.clock import ManualClock
from shared.config import settings_for
from shared.protoconv import from_timestamp, to_timestamp
from shared.stack import NatsServer, free_port
from tests.support import auth
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

QUALIFIED = pb.QUALIFICATION_STATUS_QUALIFIED
PENDING = pb.QUALIFICATION_STATUS_PENDING
SUSPENDED = pb.QUALIFICATION_STATUS_SUSPENDED
DISQUALIFIED = pb.QUALIFICATION_STATUS_DISQUALIFIED
EXPIRED = pb.QUALIFICATION_STATUS_EXPIRED
NONE = pb.QUALIFICATION_STATUS_UNSPECIFIED


@dataclass
class QA:
    """QA at work on one supplier: its sites, audits and qualifications."""

    stub: pb_grpc.SupplierServiceStub
    supplier_id: str
    now: datetime

    async def site(self, site_id: str = "MAIN") -> pb.Site:
        return (await self.stub.AddSite(pb.AddSiteRequest(
            supplier_id=self.supplier_id, site_id=site_id, name=f"Plant {site_id}",
            address="Werkstrasse 1, 4000 Basel", country="CH", requested_by="qa.jane"))).site

    async def audit(self, site_id: str = "MAIN", *, audit_id: str | None = None,
                    outcome: int = pb.AUDIT_OUTCOME_APPROVED, due_in_days: int = 730,
                    **kw) -> pb.Audit:
        today = self.now.date()
        request = dict(
            audit_id=audit_id or ref("AUD"), supplier_id=self.supplier_id, site_id=site_id,
            type=pb.AUDIT_TYPE_ON_SITE, audit_date=(today - timedelta(days=3)).isoformat(),
            auditor="auditor.max", outcome=outcome, critical_findings=0, major_findings=1,
            minor_findings=4, next_audit_due=(today + timedelta(days=due_in_days)).isoformat(),
            summary="GMP audit of the fill line", requested_by="qa.jane")
        request.update(kw)
        return (await self.stub.RecordAudit(pb.RecordAuditRequest(**request))).audit

    def key(self, site_id: str = "MAIN", material: str = "MAT-A") -> dict[str, str]:
        return {"supplier_id": self.supplier_id, "site_id": site_id, "material_code": material}

    async def open(self, site_id: str = "MAIN", material: str = "MAT-A") -> pb.Qualification:
        return (await self.stub.OpenQualification(pb.OpenQualificationRequest(
            reason="new source of supply", requested_by="qa.jane",
            evidence=pb.Evidence(questionnaire_ref="SQ-2026-7"),
            **self.key(site_id, material)))).qualification

    async def qualify(self, site_id: str = "MAIN", material: str = "MAT-A", *,
                      audit_id: str, days: float = 365, qag: str = "QAG-12",
                      reason: str = "audit passed", **kw) -> pb.Qualification:
        return (await self.stub.QualifySupplier(pb.QualifySupplierRequest(
            valid_until=to_timestamp(self.now + timedelta(days=days)),
            reason=reason, requested_by="qa.jane",
            evidence=pb.Evidence(audit_id=audit_id, quality_agreement_ref=qag),
            **self.key(site_id, material), **kw))).qualification

    async def suspend(self, site_id: str = "MAIN", material: str = "MAT-A",
                      reason: str = "complaint CAPA-12") -> pb.Qualification:
        return (await self.stub.SuspendQualification(pb.SuspendQualificationRequest(
            reason=reason, requested_by="qa.bob", **self.key(site_id, material)))).qualification

    async def disqualify(self, site_id: str = "MAIN", material: str = "MAT-A",
                         reason: str = "data integrity failure") -> pb.Qualification:
        return (await self.stub.DisqualifySupplier(pb.DisqualifySupplierRequest(
            reason=reason, requested_by="qa.jane", **self.key(site_id, material)))).qualification

    async def approved(self, site_id: str = "MAIN", material: str = "MAT-A",
                       **kw) -> pb.Qualification:
        """A site with an audit, qualified for the material."""
        await self.site(site_id)
        audit = await self.audit(site_id)
        await self.open(site_id, material)
        return await self.qualify(site_id, material, audit_id=audit.audit_id, **kw)

    async def current(self, site_id: str = "MAIN", material: str = "MAT-A",
                      as_of: datetime | None = None) -> pb.GetQualificationResponse:
        return await self.stub.GetQualification(pb.GetQualificationRequest(
            as_of=to_timestamp(as_of), **self.key(site_id, material)))

    async def history(self, **kw) -> list[pb.QualificationChange]:
        reply = await self.stub.ListQualificationHistory(pb.ListQualificationHistoryRequest(
            supplier_id=self.supplier_id, **kw))
        return list(reply.changes)


async def new_qa(stub: pb_grpc.SupplierServiceStub, now: datetime | None = None) -> QA:
    supplier_id = ref("SUP")
    await stub.CreateSupplier(pb.CreateSupplierRequest(
        supplier_id=supplier_id, name="Acme Biochem", requested_by="qa.jane"))
    return QA(stub, supplier_id, now or datetime.now(UTC))


@pytest.fixture(scope="module")
async def suppliers(databases, nats_server) -> AsyncIterator[pb_grpc.SupplierServiceStub]:
    running = await start_in_process("suppliers", databases=databases, nats=nats_server)
    async with auth.channel(running.address) as channel:
        yield pb_grpc.SupplierServiceStub(channel)
    await running.stop()


@dataclass
class Timed:
    """A suppliers service whose clock the test moves; its scheduler looks every 50 ms."""

    stub: pb_grpc.SupplierServiceStub
    clock: ManualClock
    database_url: str


@pytest.fixture
async def timed(databases, nats_server) -> AsyncIterator[Timed]:
    clock = ManualClock()
    running = await start_in_process("suppliers", databases=databases, nats=nats_server,
                                     clock=clock, expiry_check_seconds=0.05,
                                     expiry_warning_days=30)
    async with auth.channel(running.address) as channel:
        yield Timed(pb_grpc.SupplierServiceStub(channel), clock,
                    running.infra.settings.database_url)
    await running.stop()


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def precondition(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(type, subject) of the PreconditionFailure detail of a failed call."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            found = error_details_pb2.PreconditionFailure()
            detail.Unpack(found)
            return found.violations[0].type, found.violations[0].subject
    raise AssertionError("no PreconditionFailure detail")


class Events:
    """Reads one subject of the suppliers stream from its start."""

    def __init__(self, server: NatsServer, subject: str, message_type) -> None:
        self.server, self.subject, self.type = server, subject, message_type

    async def collect(self, match, *, count: int, to_end: bool = False) -> list:
        """The first `count` matching events; with `to_end`, every matching event on the
        stream up to its last message (so that one too many is seen, not waited out)."""
        nc = await self.server.connect()
        found = []
        try:
            sub = await nc.jetstream().subscribe(self.subject, ordered_consumer=True)
            pending = 0
            async with asyncio.timeout(20):
                while len(found) < count or (to_end and pending):
                    msg = await sub.next_msg(timeout=20)
                    pending = msg.metadata.num_pending
                    event = self.type.FromString(msg.data)
                    if match(event):
                        assert msg.headers["Nats-Msg-Id"] == event.event_id
                        found.append(event)
        finally:
            await nc.close()
        return found


def changed_events(nats_server) -> Events:
    return Events(nats_server, "lotgate.suppliers.v1.qualification_changed",
                  events_pb2.QualificationChanged)


# Sites and the approved supplier list per site and material


@pytest.mark.req("SUP-001")
async def test_a_qualification_is_for_one_site_and_one_material(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.approved("MAIN", "MAT-A")
    await qa.site("SECOND")

    supplier = (await suppliers.GetSupplier(
        pb.GetSupplierRequest(supplier_id=qa.supplier_id))).supplier

    assert [s.site_id for s in supplier.sites] == ["MAIN", "SECOND"]
    assert [(q.site_id, q.material_code, q.status) for q in supplier.qualifications] == [
        ("MAIN", "MAT-A", QUALIFIED)]
    for site, material in (("SECOND", "MAT-A"), ("MAIN", "MAT-B")):
        error = await failure(qa.current(site, material))
        assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("SUP-001")
async def test_adding_a_site_twice_returns_it_and_other_details_conflict(suppliers) -> None:
    qa = await new_qa(suppliers)
    first = await qa.site("MAIN")

    assert await qa.site("MAIN") == first
    error = await failure(suppliers.AddSite(pb.AddSiteRequest(
        supplier_id=qa.supplier_id, site_id="MAIN", name="Another plant", address="Elsewhere 2",
        country="DE", requested_by="qa.jane")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.req("SUP-001", "INP-001")
async def test_a_site_of_an_unknown_supplier_or_a_bad_country_is_refused(suppliers) -> None:
    unknown = await failure(suppliers.AddSite(pb.AddSiteRequest(
        supplier_id=ref("NOPE"), site_id="MAIN", name="Plant", address="Road 1", country="CH",
        requested_by="qa.jane")))
    bad = await failure(suppliers.AddSite(pb.AddSiteRequest(
        supplier_id=ref("SUP"), site_id="bad site!", name="", address="Road 1",
        country="Switzerland", requested_by="qa.jane")))

    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(bad)) == {"site_id", "name", "country"}


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


# Auditor queries


@pytest.mark.req("AUD-001")
async def test_history_is_paginated_in_a_stable_order_and_filtered(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.approved("MAIN", "MAT-A")
    await qa.approved("OTHER", "MAT-B")
    await qa.suspend("MAIN", "MAT-A")
    await qa.disqualify("OTHER", "MAT-B")
    everything = await qa.history()

    pages, token = [], ""
    while True:
        reply = await suppliers.ListQualificationHistory(pb.ListQualificationHistoryRequest(
            supplier_id=qa.supplier_id, page_size=2, page_token=token))
        pages.append(list(reply.changes))
        token = reply.next_page_token
        if not token:
            break

    assert len(everything) == 6
    assert [c for page in pages for c in page] == everything
    assert all(len(page) <= 2 for page in pages)
    by_material = await qa.history(material_code="MAT-B")
    by_site = await qa.history(site_id="MAIN")
    assert [c.new_status for c in by_material] == [PENDING, QUALIFIED, DISQUALIFIED]
    assert [c.new_status for c in by_site] == [PENDING, QUALIFIED, SUSPENDED]
    third = everything[2].changed_at
    since_third = await qa.history(changed_from=third)
    before_third = await qa.history(changed_before=third)
    assert since_third + before_third == everything or (
        # two changes recorded in the same microsecond fall on the same side
        sorted(c.sequence for c in since_third + before_third)
        == [c.sequence for c in everything])


@pytest.mark.req("AUD-001")
async def test_bad_history_queries_name_the_field(suppliers) -> None:
    qa = await new_qa(suppliers)
    now = to_timestamp(qa.now)

    error = await failure(suppliers.ListQualificationHistory(pb.ListQualificationHistoryRequest(
        supplier_id=qa.supplier_id, page_size=5000, page_token="not-ours", site_id="bad site",
        changed_from=now, changed_before=now)))
    unknown = await failure(qa.stub.ListQualificationHistory(
        pb.ListQualificationHistoryRequest(supplier_id=ref("NOPE"))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"page_size", "page_token", "site_id",
                                            "changed_before"}
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("AUD-002")
async def test_the_status_as_known_on_a_past_date(timed) -> None:
    qa = await new_qa(timed.stub, timed.clock.now())
    start = timed.clock.now()
    await qa.approved(days=400)
    timed.clock.advance(timedelta(days=30))
    await qa.suspend()
    timed.clock.advance(timedelta(days=1))

    before_anything = await failure(qa.current(as_of=start - timedelta(days=1)))
    while_qualified = await qa.current(as_of=start + timedelta(days=10))
    after_suspension = await qa.current(as_of=start + timedelta(days=30, seconds=1))
    now = await qa.current()

    assert before_anything.code() == grpc.StatusCode.NOT_FOUND
    assert (while_qualified.qualification.status, while_qualified.status_in_force) == (
        QUALIFIED, QUALIFIED)
    assert while_qualified.qualification.version == 2
    assert after_suspension.qualification.status == SUSPENDED
    assert now.qualification == after_suspension.qualification


@pytest.mark.req("AUD-002")
async def test_the_approved_supplier_list_of_a_material_on_a_date(timed) -> None:
    material = ref("MAT")
    acme = await new_qa(timed.stub, timed.clock.now())
    beta = await new_qa(timed.stub, timed.clock.now())
    start = timed.clock.now()
    await acme.approved("MAIN", material, days=100)
    await acme.approved("SECOND", material, days=100)
    await beta.approved("MAIN", material, days=20)
    timed.clock.advance(timedelta(days=10))
    await acme.suspend("SECOND", material)
    timed.clock.advance(timedelta(days=15))

    async def listed(as_of: datetime | None) -> list[tuple[str, str]]:
        reply = await timed.stub.ListApprovedSuppliers(pb.ListApprovedSuppliersRequest(
            material_code=material, as_of=to_timestamp(as_of)))
        return [(s.qualification.supplier_id, s.site.site_id) for s in reply.suppliers]

    both = sorted([(acme.supplier_id, "MAIN"), (acme.supplier_id, "SECOND"),
                   (beta.supplier_id, "MAIN")])
    assert await listed(start + timedelta(days=5)) == both
    assert await listed(start + timedelta(days=12)) == sorted(
        [(acme.supplier_id, "MAIN"), (beta.supplier_id, "MAIN")])
    # beta's approval ran out on day 20: off the list whether or not the expiry was recorded
    assert await listed(start + timedelta(days=21)) == [(acme.supplier_id, "MAIN")]
    assert await listed(None) == [(acme.supplier_id, "MAIN")]
    assert await listed(start - timedelta(days=1)) == []
    reply = await timed.stub.ListApprovedSuppliers(pb.ListApprovedSuppliersRequest(
        material_code=material))
    assert reply.suppliers[0].supplier_name == "Acme Biochem"
    assert reply.suppliers[0].site.country == "CH"


# Expiry as time


@pytest.mark.req("SUP-006")
async def test_an_approval_expires_by_itself_when_its_date_passes(timed, nats_server) -> None:
    qa = await new_qa(timed.stub, timed.clock.now())
    q = await qa.approved(days=10)
    due = from_timestamp(q.valid_until)

    timed.clock.advance(timedelta(days=10, seconds=1))
    expired = await eventually(qa.current, lambda r: r.qualification.status == EXPIRED)

    assert expired.qualification.changed_by == "lotgate:expiry"
    assert expired.qualification.evidence == q.evidence
    last = (await qa.history())[-1]
    assert (last.previous_status, last.new_status) == (QUALIFIED, EXPIRED)
    [event] = await changed_events(nats_server).collect(
        lambda e: e.qualification.supplier_id == qa.supplier_id
        and e.qualification.status == EXPIRED, count=1)
    assert event.previous_status == QUALIFIED
    # As known just after the date and before the expiry was recorded: already lapsed.
    asof = await qa.current(as_of=due)
    assert (asof.qualification.status, asof.status_in_force) == (QUALIFIED, EXPIRED)
    # EXPIRED may be requalified with fresh evidence, or disqualified; not suspended.
    error = await failure(qa.suspend())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "EXPIRED" in error.details()
    audit = await qa.audit(audit_date=timed.clock.now().date().isoformat())
    requalified = await qa.qualify(audit_id=audit.audit_id, days=300)
    assert requalified.status == QUALIFIED


@pytest.mark.req("SUP-006")
async def test_two_replicas_expire_each_approval_exactly_once(
        timed, databases, nats_server) -> None:
    second = await start_in_process("suppliers", databases=databases, nats=nats_server,
                                    clock=timed.clock, database_url=timed.database_url,
                                    expiry_check_seconds=0.05)
    try:
        qa = await new_qa(timed.stub, timed.clock.now())
        materials = [f"MAT-{i}" for i in range(12)]
        await qa.site()
        audit = await qa.audit()
        for material in materials:
            await qa.open("MAIN", material)
            await qa.qualify("MAIN", material, audit_id=audit.audit_id, days=5)

        timed.clock.advance(timedelta(days=6))
        await eventually(qa.history, lambda h: sum(c.new_status == EXPIRED for c in h) == 12)
        events = await changed_events(nats_server).collect(
            lambda e: e.qualification.supplier_id == qa.supplier_id
            and e.qualification.status == EXPIRED, count=12, to_end=True)
    finally:
        await second.stop()

    history = await qa.history()
    assert sum(c.new_status == EXPIRED for c in history) == 12
    assert sorted(e.qualification.material_code for e in events) == sorted(materials)


@pytest.mark.req("SUP-006")
async def test_a_warning_is_sent_once_ahead_of_expiry(timed, nats_server) -> None:
    qa = await new_qa(timed.stub, timed.clock.now())
    q = await qa.approved(days=40)
    warnings = Events(nats_server, "lotgate.suppliers.v1.qualification_expiring",
                      events_pb2.QualificationExpiring)

    timed.clock.advance(timedelta(days=11))  # 29 days left: inside the 30-day warning
    [warning] = await warnings.collect(lambda e: e.qualification.supplier_id == qa.supplier_id,
                                       count=1)
    timed.clock.advance(timedelta(days=1))
    renewed = await qa.qualify(audit_id=q.evidence.audit_id, days=25)  # a new date: warn again
    again = await warnings.collect(lambda e: e.qualification.supplier_id == qa.supplier_id,
                                   count=2, to_end=True)

    assert warning.expires_at == q.valid_until
    assert [e.expires_at for e in again] == [q.valid_until, renewed.valid_until]
    assert (await qa.current()).qualification.status == QUALIFIED


# Validation, idempotency, events


@pytest.mark.req("INP-001")
async def test_bad_requests_name_every_bad_field_and_change_nothing(suppliers) -> None:
    qa = await new_qa(suppliers)

    error = await failure(suppliers.QualifySupplier(pb.QualifySupplierRequest(
        supplier_id=qa.supplier_id, material_code="bad code!", reason="",
        requested_by="qa.jane")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "material_code", "site_id", "reason", "valid_until", "evidence.audit_id",
        "evidence.quality_agreement_ref"}
    assert await qa.history() == []


@pytest.mark.req("INP-001")
async def test_unknown_supplier_or_site_is_not_found(suppliers) -> None:
    missing = await failure(suppliers.GetSupplier(pb.GetSupplierRequest(
        supplier_id=ref("NOPE"))))
    qa = await new_qa(suppliers)
    no_site = await failure(qa.open("NOWHERE"))

    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert no_site.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("SUP-001")
async def test_creating_a_supplier_twice_returns_the_original_or_conflicts(suppliers) -> None:
    qa = await new_qa(suppliers)

    again = await suppliers.CreateSupplier(pb.CreateSupplierRequest(
        supplier_id=qa.supplier_id, name="Acme Biochem", requested_by="qa.jane"))
    error = await failure(suppliers.CreateSupplier(pb.CreateSupplierRequest(
        supplier_id=qa.supplier_id, name="Someone Else", requested_by="qa.jane")))

    assert again.supplier.supplier_id == qa.supplier_id
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.req("SUP-003", "DEL-001")
async def test_every_change_is_published_once_with_its_event_id(suppliers, nats_server) -> None:
    qa = await new_qa(suppliers)
    await qa.approved()
    await qa.suspend()

    seen = await changed_events(nats_server).collect(
        lambda e: e.qualification.supplier_id == qa.supplier_id, count=3, to_end=True)

    assert [(e.previous_status, e.qualification.status, e.qualification.version,
             e.qualification.site_id) for e in seen] == [
        (NONE, PENDING, 1, "MAIN"), (PENDING, QUALIFIED, 2, "MAIN"),
        (QUALIFIED, SUSPENDED, 3, "MAIN")]


@pytest.mark.req("DEL-001")
async def test_changes_are_accepted_while_nats_is_down_and_published_once_it_is_up(
        databases, workdir) -> None:
    broker = NatsServer(workdir / f"nats-{ref('late')}", port=free_port())
    url = await databases.create("suppliers")
    await migrations.migrate("suppliers", url)
    settings = settings_for("suppliers", database_url=url, nats_url=broker.url,
                            grpc_host="127.0.0.1", grpc_port=0, outbox_poll_seconds=0.2,
                            **auth.settings_overrides(),
                            **broker.secrets.service_settings("suppliers"))
    running = await bootstrap.start(settings)  # no broker is listening yet
    try:
        async with auth.channel(running.address) as channel:
            qa = await new_qa(pb_grpc.SupplierServiceStub(channel))
            accepted = await qa.approved()
        assert not running.messaging_ready.is_set()

        await broker.start()
        await asyncio.wait_for(running.messaging_ready.wait(), timeout=30)
        seen = await Events(broker, "lotgate.suppliers.v1.qualification_changed",
                            events_pb2.QualificationChanged).collect(lambda e: True, count=2)
    finally:
        await running.stop()
        await broker.stop()

    assert seen[-1].qualification == accepted

