"""The lots service over real gRPC, a real database and a real nats-server.

The suppliers service runs for real; results are published to JetStream the way the
results service's relay publishes them, so that order and duplicates can be controlled.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import nats
import pytest
from sqlalchemy import func, select

from lotgate.lots.v1 import events_pb2 as lot_events
from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as spb_grpc
from lotgate_tools.stack import NatsServer
from services.lots.tables import tables as lot_tables
from shared import messaging
from shared.clock import Clock
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from tests.support import auth
from tests.support.databases import Databases
from tests.support.events import harness
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SITE = "MAIN"
TESTS = (rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY, rpb.TEST_KIND_STERILITY)
ResultEvent = (result_events.ResultRecorded | result_events.ResultInvalidated
               | result_events.ResultConfirmed)
SUBJECTS = {
    result_events.ResultRecorded: messaging.RESULT_RECORDED,
    result_events.ResultInvalidated: messaging.RESULT_INVALIDATED,
    result_events.ResultConfirmed: messaging.RESULT_CONFIRMED,
}


@dataclass
class System:
    lots: pb_grpc.LotServiceStub
    suppliers: spb_grpc.SupplierServiceStub
    lots_service: RunningService
    js: nats.js.JetStreamContext
    sequence: int = 0
    numbers: dict[str, int] = field(default_factory=dict)
    # The services' clock when the test controls time; else the system clock.
    clock: Clock | None = None

    def now(self) -> datetime:
        return self.clock.now() if self.clock else datetime.now(UTC)

    async def status(self, lot_id: str) -> pb.ReleaseStatus:
        reply = await self.lots.GetReleaseStatus(pb.GetReleaseStatusRequest(lot_id=lot_id))
        return reply.release_status

    async def wait_status(self, lot_id: str, status: int, **kw) -> pb.ReleaseStatus:
        return await eventually(lambda: self.status(lot_id), lambda s: s.status == status, **kw)

    async def wait_unmet(self, lot_id: str, codes: list[str]) -> pb.ReleaseStatus:
        return await eventually(lambda: self.status(lot_id),
                                lambda s: [u.code for u in s.unmet] == codes)

    async def add_site(self, supplier_id: str, site: str = SITE) -> None:
        """Register the supplier (if new) and one of its sites."""
        await self.suppliers.CreateSupplier(spb.CreateSupplierRequest(
            supplier_id=supplier_id, name="Acme", requested_by="qa.jane"))
        await self.suppliers.AddSite(spb.AddSiteRequest(
            supplier_id=supplier_id, site_id=site, name=f"Acme {site}",
            address="1 Industry Road, Basel", country="CH", requested_by="qa.jane"))

    async def qualify(self, supplier_id: str, material: str, *, site: str = SITE,
                      valid_until: datetime | None = None) -> spb.Qualification:
        """What QA does to approve a site for a material (as lotgate_tools.client.Lotgate.qualify):
        register the supplier and site, record an approving audit, open, qualify."""
        valid_until = valid_until or self.now() + timedelta(days=365)
        await self.add_site(supplier_id, site)
        audit_id = ref("AUD")
        await self.suppliers.RecordAudit(spb.RecordAuditRequest(
            audit_id=audit_id, supplier_id=supplier_id, site_id=site,
            type=spb.AUDIT_TYPE_ON_SITE, audit_date=self.now().date().isoformat(),
            auditor="auditor.max", outcome=spb.AUDIT_OUTCOME_APPROVED,
            next_audit_due=(valid_until.date() + timedelta(days=1)).isoformat(),
            summary="GMP audit of the site; no findings", requested_by="qa.jane"))
        key = dict(supplier_id=supplier_id, site_id=site, material_code=material)
        await self.suppliers.OpenQualification(spb.OpenQualificationRequest(
            reason="new supplier for this material", requested_by="qa.jane", **key))
        reply = await self.suppliers.QualifySupplier(spb.QualifySupplierRequest(
            valid_until=to_timestamp(valid_until), reason="audit passed",
            requested_by="qa.jane",
            evidence=spb.Evidence(audit_id=audit_id, quality_agreement_ref=f"QAG-{supplier_id}"),
            **key))
        return reply.qualification

    async def qualified_supplier(self, material: str, *, site: str = SITE) -> str:
        supplier_id = ref("SUP")
        await self.qualify(supplier_id, material, site=site)
        return supplier_id

    async def suspend(self, supplier_id: str, material: str, *, site: str = SITE,
                      reason: str = "customer complaint under investigation"
                      ) -> spb.Qualification:
        return (await self.suppliers.SuspendQualification(spb.SuspendQualificationRequest(
            supplier_id=supplier_id, site_id=site, material_code=material, reason=reason,
            requested_by="qa.jane"))).qualification

    async def disqualify(self, supplier_id: str, material: str, *, site: str = SITE,
                         reason: str = "critical finding at re-audit") -> spb.Qualification:
        return (await self.suppliers.DisqualifySupplier(spb.DisqualifySupplierRequest(
            supplier_id=supplier_id, site_id=site, material_code=material, reason=reason,
            requested_by="qa.jane"))).qualification

    async def receive(self, supplier_id: str, material: str, lot_id: str | None = None,
                      *, site: str = SITE, **kw: Any) -> pb.Lot:
        request = dict(lot_id=lot_id or ref("LOT"), material_code=material,
                       supplier_id=supplier_id, supplier_site_id=site,
                       supplier_lot_number="S-123",
                       quantity=pb.Quantity(value=25.0, unit="kg"), container_count=4,
                       expiry_date="2030-01-31", requested_by="wms")
        request.update(kw)
        return (await self.lots.ReceiveLot(pb.ReceiveLotRequest(**request))).lot

    async def released_lot(self, supplier_id: str, material: str, *, site: str = SITE) -> str:
        """A lot received from a qualified site, with all three results passing: released."""
        lot = await self.receive(supplier_id, material, site=site)
        await self.post_all_passing(lot.lot_id, material)
        await self.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
        return lot.lot_id

    def result_event(self, lot_id: str, material: str, test: int,
                     verdict: int = rpb.VERDICT_PASS, *, required_tests: Sequence[int] = TESTS,
                     retest_of: str = "", spec_version: int = 1
                     ) -> result_events.ResultRecorded:
        """A ResultRecorded as the results service publishes it: the lot's next result,
        VALID, judged against a specification version requiring `required_tests`."""
        self.sequence += 1
        self.numbers[lot_id] = self.numbers.get(lot_id, 0) + 1
        now = to_timestamp(self.now())
        return result_events.ResultRecorded(
            event_id=str(uuid.uuid4()), occurred_at=now,
            result=rpb.Result(result_id=str(uuid.uuid4()), lot_id=lot_id, material_code=material,
                              test=test, instrument_id="HPLC-1", verdict=verdict,
                              spec_version=spec_version, recorded_at=now,
                              sequence=self.sequence, lot_result_number=self.numbers[lot_id],
                              state=rpb.RESULT_STATE_VALID, retest_of=retest_of,
                              required_tests=list(required_tests)))

    def invalidation(self, recorded: result_events.ResultRecorded,
                     reason: str = "laboratory error: wrong dilution, see INV-1"
                     ) -> result_events.ResultInvalidated:
        """The ResultInvalidated QA's invalidation of this result publishes."""
        return result_events.ResultInvalidated(
            event_id=str(uuid.uuid4()), occurred_at=to_timestamp(self.now()),
            result=self._changed(recorded.result, rpb.RESULT_STATE_INVALIDATED, reason))

    def confirmation(self, recorded: result_events.ResultRecorded,
                     reason: str = "no laboratory error found, see INV-2"
                     ) -> result_events.ResultConfirmed:
        """The ResultConfirmed QA's confirmation of this result publishes."""
        return result_events.ResultConfirmed(
            event_id=str(uuid.uuid4()), occurred_at=to_timestamp(self.now()),
            result=self._changed(recorded.result, rpb.RESULT_STATE_CONFIRMED, reason))

    def _changed(self, result: rpb.Result, state: int, reason: str) -> rpb.Result:
        changed = rpb.Result()
        changed.CopyFrom(result)
        changed.state = state
        changed.state_reason = reason
        changed.state_changed_by = "qa.jane"
        changed.state_changed_at.CopyFrom(to_timestamp(self.now()))
        return changed

    async def publish(self, event: ResultEvent) -> None:
        """Publish as the results service's relay does (on the event's own subject)."""
        await self.js.publish(SUBJECTS[type(event)], event.SerializeToString(),
                              headers={"Nats-Msg-Id": event.event_id})

    async def post_all_passing(self, lot_id: str, material: str) -> None:
        for test in TESTS:
            await self.publish(self.result_event(lot_id, material, test))

    async def lots_where(self, **filters: Any) -> list[str]:
        """Ids of every lot ListLots returns for these filters, through all pages."""
        found: list[str] = []
        token = ""
        while True:
            page = await self.lots.ListLots(pb.ListLotsRequest(page_size=50, page_token=token,
                                                               **filters))
            found += [lot.lot_id for lot in page.lots]
            token = page.next_page_token
            if not token:
                return found


@contextlib.asynccontextmanager
async def running_system(databases: Databases, nats_server: NatsServer, *,
                         clock: Clock | None = None, suppliers: dict[str, Any] | None = None,
                         lots: dict[str, Any] | None = None) -> AsyncIterator[System]:
    """The suppliers and lots services in this process, on fresh databases, with clients;
    `suppliers` and `lots` override settings of each (expiry_check_seconds, ...)."""
    suppliers_service = await start_in_process("suppliers", databases=databases,
                                               nats=nats_server, clock=clock, **(suppliers or {}))
    lots_service = await start_in_process("lots", databases=databases, nats=nats_server,
                                          clock=clock, **(lots or {}))
    events = await harness(nats_server)
    try:
        async with auth.channel(lots_service.address) as lc, \
                auth.channel(suppliers_service.address) as sc:
            yield System(pb_grpc.LotServiceStub(lc), spb_grpc.SupplierServiceStub(sc),
                         lots_service, events.js, clock=clock)
    finally:
        await events.close()
        await lots_service.stop()
        await suppliers_service.stop()


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


@pytest.mark.req("REL-002", "REL-003")
async def test_a_received_lot_is_in_quarantine_and_says_why(system: System) -> None:
    lot = await system.receive(ref("SUP"), "MAT-A")

    assert lot.release_status.status == pb.LOT_STATUS_QUARANTINE
    assert [u.code for u in lot.release_status.unmet] == [
        "SUPPLIER_NOT_QUALIFIED", "IDENTITY_MISSING", "PURITY_MISSING", "STERILITY_MISSING"]
    assert all(u.rule for u in lot.release_status.unmet)


@pytest.mark.req("REL-001")
async def test_a_lot_is_released_once_qualified_and_all_tests_pass(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-A")
    lot = await system.receive(supplier_id, "MAT-A")
    await system.wait_unmet(lot.lot_id, ["IDENTITY_MISSING", "PURITY_MISSING",
                                         "STERILITY_MISSING"])

    await system.post_all_passing(lot.lot_id, "MAT-A")

    released = await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
    assert list(released.unmet) == []


@pytest.mark.req("DEL-004")
async def test_a_qualification_that_arrives_after_the_results_releases_the_lot(
        system: System) -> None:
    supplier_id = ref("SUP")
    await system.add_site(supplier_id)
    lot = await system.receive(supplier_id, "MAT-B")
    await system.post_all_passing(lot.lot_id, "MAT-B")
    await system.wait_unmet(lot.lot_id, ["SUPPLIER_NOT_QUALIFIED"])

    await system.qualify(supplier_id, "MAT-B", valid_until=system.now() + timedelta(days=30))

    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)


@pytest.mark.req("REL-004", "SUP-001")
async def test_lots_are_decided_by_the_qualification_of_their_own_site(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-S", site="BASEL-1")
    await system.add_site(supplier_id, "LYON-2")  # a known site, not qualified for MAT-S
    from_basel = await system.receive(supplier_id, "MAT-S", site="BASEL-1")
    from_lyon = await system.receive(supplier_id, "MAT-S", site="LYON-2")
    assert (from_basel.supplier_site_id, from_lyon.supplier_site_id) == ("BASEL-1", "LYON-2")

    await system.post_all_passing(from_basel.lot_id, "MAT-S")
    await system.post_all_passing(from_lyon.lot_id, "MAT-S")

    await system.wait_status(from_basel.lot_id, pb.LOT_STATUS_RELEASED)
    waiting = await system.wait_unmet(from_lyon.lot_id, ["SUPPLIER_NOT_QUALIFIED"])
    assert waiting.status == pb.LOT_STATUS_QUARANTINE
    assert f"supplier {supplier_id} site LYON-2 for material MAT-S" in waiting.unmet[0].message
    lot = (await system.lots.GetLot(pb.GetLotRequest(lot_id=from_lyon.lot_id))).lot
    assert lot.supplier_site_id == "LYON-2"


@pytest.mark.req("REL-004")
@pytest.mark.parametrize("action,code,says", [
    ("suspend", "SUPPLIER_SUSPENDED", "is suspended"),
    ("disqualify", "SUPPLIER_DISQUALIFIED", "is disqualified"),
])
async def test_a_withdrawn_approval_keeps_open_lots_in_quarantine_with_the_reason(
        system: System, action: str, code: str, says: str) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lot = await system.receive(supplier_id, material)
    await system.wait_unmet(lot.lot_id, ["IDENTITY_MISSING", "PURITY_MISSING",
                                         "STERILITY_MISSING"])

    await getattr(system, action)(supplier_id, material)
    await system.wait_unmet(lot.lot_id, [code, "IDENTITY_MISSING", "PURITY_MISSING",
                                         "STERILITY_MISSING"])
    await system.post_all_passing(lot.lot_id, material)

    status = await system.wait_unmet(lot.lot_id, [code])
    assert status.status == pb.LOT_STATUS_QUARANTINE
    assert status.unmet[0].message == (
        f"supplier {supplier_id} site {SITE} for material {material} {says}")
    assert "ICH Q7" in status.unmet[0].rule


@pytest.mark.req("DEL-004")
async def test_results_that_arrive_before_the_lot_are_not_lost(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-D")
    # The qualification and the results come on different streams; the point here is
    # the results, so the lots service must know the qualification before the receipt.
    await eventually(lambda: _qualification_status(system.lots_service, supplier_id),
                     lambda status: status == "QUALIFIED")
    lot_id = ref("LOT")
    await system.post_all_passing(lot_id, "MAT-D")
    # The results are in the projection before the lot exists.
    await eventually(lambda: _count_results(system.lots_service, lot_id), lambda n: n == 3)

    lot = await system.receive(supplier_id, "MAT-D", lot_id=lot_id)

    assert lot.release_status.status == pb.LOT_STATUS_RELEASED


@pytest.mark.req("OOS-001", "OOS-002")
async def test_a_failing_result_holds_the_lot_and_its_confirmation_rejects_it(
        system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-E")
    lot = await system.receive(supplier_id, "MAT-E")
    failure = system.result_event(lot.lot_id, "MAT-E", rpb.TEST_KIND_STERILITY,
                                  rpb.VERDICT_FAIL)

    await system.publish(failure)
    held = await system.wait_status(lot.lot_id, pb.LOT_STATUS_ON_HOLD)
    assert "STERILITY_OUT_OF_SPECIFICATION" in [u.code for u in held.unmet]
    await system.publish(system.confirmation(failure))

    rejected = await system.wait_status(lot.lot_id, pb.LOT_STATUS_REJECTED)
    assert "STERILITY_FAILED" in [u.code for u in rejected.unmet]


@pytest.mark.req("DEL-004", "DEL-002")
async def test_duplicated_and_reordered_results_end_in_the_same_state(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-F")
    lot = await system.receive(supplier_id, "MAT-F")
    identity = system.result_event(lot.lot_id, "MAT-F", rpb.TEST_KIND_IDENTITY)
    purity = system.result_event(lot.lot_id, "MAT-F", rpb.TEST_KIND_PURITY)
    sterility = system.result_event(lot.lot_id, "MAT-F", rpb.TEST_KIND_STERILITY)

    for event in (sterility, identity, sterility, purity, identity):
        await system.publish(event)
    released = await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
    # A copy published with a new Nats-Msg-Id gets past JetStream's de-duplication;
    # the consumer's inbox must absorb it.
    await system.js.publish("lotgate.results.v1.result_recorded", purity.SerializeToString(),
                            headers={"Nats-Msg-Id": "republished-" + purity.event_id})
    marker = system.result_event(ref("LOT"), "MAT-F", rpb.TEST_KIND_IDENTITY)
    await system.publish(marker)
    await eventually(lambda: _count_results(system.lots_service, marker.result.lot_id),
                     lambda n: n == 1)

    assert (await system.status(lot.lot_id)).version == released.version
    assert await _count_results(system.lots_service, lot.lot_id) == 3


@pytest.mark.req("REL-008")
async def test_a_lot_waits_for_a_result_that_was_recorded_but_has_not_arrived(
        system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-I")
    lot = await system.receive(supplier_id, "MAT-I")
    identity = system.result_event(lot.lot_id, "MAT-I", rpb.TEST_KIND_IDENTITY)
    lost = system.result_event(lot.lot_id, "MAT-I", rpb.TEST_KIND_PURITY, rpb.VERDICT_FAIL)
    retest = system.result_event(lot.lot_id, "MAT-I", rpb.TEST_KIND_PURITY,
                                 retest_of=lost.result.result_id)
    sterility = system.result_event(lot.lot_id, "MAT-I", rpb.TEST_KIND_STERILITY)

    for event in (identity, retest, sterility):  # number 2, a failure, is delayed
        await system.publish(event)
    waiting = await system.wait_unmet(lot.lot_id, ["RESULTS_INCOMPLETE"])
    assert waiting.status == pb.LOT_STATUS_QUARANTINE
    await system.publish(lost)

    # The passing retest does not overrule the failure while it counts ...
    held = await system.wait_status(lot.lot_id, pb.LOT_STATUS_ON_HOLD)
    assert [u.code for u in held.unmet] == ["PURITY_OUT_OF_SPECIFICATION"]
    # ... only QA's invalidation of it does.
    await system.publish(system.invalidation(lost))
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)


@pytest.mark.req("DEL-003")
async def test_a_poison_message_is_parked_and_the_consumer_keeps_going(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-G")
    lot = await system.receive(supplier_id, "MAT-G")

    await system.js.publish("lotgate.results.v1.result_recorded", b"\x08\xff\xff not protobuf",
                            headers={"Nats-Msg-Id": "poison-" + lot.lot_id})
    await system.post_all_passing(lot.lot_id, "MAT-G")

    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
    parked = await eventually(lambda: _parked(system.lots_service, "poison-" + lot.lot_id),
                              lambda n: n == 1)
    assert parked == 1


@pytest.mark.req("DEC-003")
async def test_status_changes_are_published_in_order(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-H")
    sub = await system.js.subscribe("lotgate.lots.v1.status_changed", ordered_consumer=True,
                                    deliver_policy=nats.js.api.DeliverPolicy.NEW)
    lot = await system.receive(supplier_id, "MAT-H")
    await system.post_all_passing(lot.lot_id, "MAT-H")
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)

    seen = []
    while not seen or seen[-1].release_status.status != pb.LOT_STATUS_RELEASED:
        event = lot_events.LotStatusChanged.FromString((await sub.next_msg(timeout=10)).data)
        if event.release_status.lot_id == lot.lot_id:
            seen.append(event)
    await sub.unsubscribe()

    versions = [e.release_status.version for e in seen]
    assert versions == sorted(versions) and versions[0] == 1
    assert seen[0].previous_status == pb.LOT_STATUS_UNSPECIFIED


@pytest.mark.req("WMS-003")
async def test_receiving_the_same_lot_again_returns_it_and_other_details_conflict(
        system: System) -> None:
    first = await system.receive(ref("SUP"), "MAT-A")

    again = await system.receive(first.supplier_id, "MAT-A", lot_id=first.lot_id)
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.receive(first.supplier_id, "MAT-A", lot_id=first.lot_id, container_count=9)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.req("WMS-003", "INP-001")
async def test_a_malformed_lot_is_refused_field_by_field_and_not_stored(system: System) -> None:
    lot_id = ref("LOT")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.receive("", "MAT A", lot_id=lot_id, site="BASEL 1",
                             expiry_date="31/01/2030",
                             quantity=pb.Quantity(value=float("nan"), unit=""),
                             container_count=0)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {
        "supplier_id", "supplier_site_id", "material_code", "expiry_date", "quantity.value",
        "quantity.unit", "container_count"}
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await system.status(lot_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("WMS-003")
async def test_a_lot_without_its_supplier_site_is_refused(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-A")
    lot_id = ref("LOT")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.receive(supplier_id, "MAT-A", lot_id=lot_id, site="")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"supplier_site_id": "is required"}
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await system.status(lot_id)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("WMS-004")
async def test_list_lots_filters_by_supplier_site_and_material(system: System) -> None:
    supplier_id, other_supplier = ref("SUP"), ref("SUP")
    mat_x, mat_y = ref("MAT"), ref("MAT")
    lots = {
        "basel-x": await system.receive(supplier_id, mat_x, site="BASEL-1"),
        "basel-y": await system.receive(supplier_id, mat_y, site="BASEL-1"),
        "lyon-x": await system.receive(supplier_id, mat_x, site="LYON-2"),
        "other-x": await system.receive(other_supplier, mat_x, site="BASEL-1"),
    }
    ids = {name: lot.lot_id for name, lot in lots.items()}

    def named(*names: str) -> list[str]:
        return sorted(ids[n] for n in names)

    assert await system.lots_where(supplier_id=supplier_id) == named(
        "basel-x", "basel-y", "lyon-x")
    assert await system.lots_where(supplier_id=supplier_id, supplier_site_id="BASEL-1") == (
        named("basel-x", "basel-y"))
    assert await system.lots_where(supplier_id=supplier_id, supplier_site_id="LYON-2",
                                   material_code=mat_x) == named("lyon-x")
    assert await system.lots_where(material_code=mat_x) == named(
        "basel-x", "lyon-x", "other-x")
    assert await system.lots_where(material_code=mat_x, status=pb.LOT_STATUS_RELEASED) == []
    assert await system.lots_where(supplier_id=supplier_id, supplier_site_id="NOWHERE") == []
    listed = (await system.lots.ListLots(pb.ListLotsRequest(
        supplier_id=supplier_id, supplier_site_id="LYON-2"))).lots
    assert [(lot.supplier_id, lot.supplier_site_id, lot.material_code) for lot in listed] == [
        (supplier_id, "LYON-2", mat_x)]


@pytest.mark.req("WMS-004")
async def test_list_lots_refuses_a_site_without_its_supplier_and_malformed_filters(
        system: System) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.ListLots(pb.ListLotsRequest(supplier_site_id="BASEL-1"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"supplier_site_id"}

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.ListLots(pb.ListLotsRequest(
            supplier_id="ACME BIO", supplier_site_id="BASEL 1", material_code="MAT X",
            page_size=1001))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {
        "supplier_id", "supplier_site_id", "material_code", "page_size"}


@pytest.mark.req("WMS-004")
async def test_list_lots_pages_through_lots_of_one_status(system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-L")
    received = sorted([(await system.receive(supplier_id, "MAT-L")).lot_id for _ in range(5)])

    seen: list[str] = []
    token = ""
    while True:
        page = await system.lots.ListLots(pb.ListLotsRequest(
            status=pb.LOT_STATUS_QUARANTINE, page_size=2, page_token=token))
        assert len(page.lots) <= 2
        assert all(lot.release_status.status == pb.LOT_STATUS_QUARANTINE for lot in page.lots)
        seen += [lot.lot_id for lot in page.lots]
        token = page.next_page_token
        if not token:
            break

    assert [lot_id for lot_id in seen if lot_id in received] == received
    assert seen == sorted(seen)


async def _qualification_status(service: RunningService, supplier_id: str) -> str | None:
    from services.lots.tables import qualifications

    async with service.infra.engine.connect() as conn:
        return (await conn.execute(select(qualifications.c.status)
                                   .where(qualifications.c.supplier_id == supplier_id))
                ).scalar_one_or_none()


async def _count_results(service: RunningService, lot_id: str) -> int:
    from services.lots.tables import lot_results

    async with service.infra.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(lot_results)
                                   .where(lot_results.c.lot_id == lot_id))).scalar_one()


async def _parked(service: RunningService, event_id: str) -> int:
    dead = lot_tables.dead_letters
    async with service.infra.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(dead)
                                   .where(dead.c.event_id == event_id))).scalar_one()


@pytest.mark.req("DEL-003")
async def test_a_failing_event_is_parked_and_its_batch_mates_are_applied_and_acked(
        databases, workdir) -> None:
    broker = NatsServer(workdir / f"nats-{ref('poison')}")
    await broker.start()
    lots = await start_in_process("lots", databases=databases, nats=broker,
                                  consumer_max_attempts=2)
    events = await harness(broker)
    try:
        async with auth.channel(lots.address) as channel:
            system = System(pb_grpc.LotServiceStub(channel), None, lots, events.js)
            lot = await system.receive(ref("SUP"), "MAT-P")
            bad = system.result_event(lot.lot_id, "MAT-P", rpb.TEST_KIND_UNSPECIFIED)
            good = [system.result_event(lot.lot_id, "MAT-P", test) for test in (
                rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY, rpb.TEST_KIND_STERILITY)]
            for event in (good[0], bad, *good[1:]):
                await system.publish(event)

            await eventually(lambda: _parked(lots, bad.event_id), lambda n: n == 1)
            await system.wait_unmet(lot.lot_id, ["SUPPLIER_NOT_QUALIFIED", "RESULTS_INCOMPLETE"])
            info = await system.js.consumer_info("LOTGATE_RESULTS", "lots-result-recorded")
    finally:
        await events.close()
        await lots.stop()
        await broker.stop()

    # Nothing waits for a redelivery: the good events were acked when they were applied.
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


@pytest.mark.req("WMS-003")
async def test_the_same_lot_received_twice_at_once_is_stored_once(system: System) -> None:
    lot_id, supplier_id = ref("LOT"), ref("SUP")

    outcomes = await asyncio.gather(
        *(system.receive(supplier_id, "MAT-R", lot_id=lot_id) for _ in range(8)))

    assert all(o == outcomes[0] for o in outcomes)  # each copy is answered as a retry
    assert (await system.status(lot_id)).version == 1
