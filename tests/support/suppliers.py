"""The suppliers service as QA meets it in integration tests: a running service, QA at
work on one supplier, a service whose clock the test moves, and its events."""

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
from lotgate_tools.stack import NatsServer
from shared.clock import ManualClock
from shared.protoconv import to_timestamp
from tests.support import auth
from tests.support.services import ref, start_in_process

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
