"""The suppliers service over real gRPC, with a real database and a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import nats
import pytest

from lotgate.suppliers.v1 import events_pb2
from lotgate.suppliers.v1 import suppliers_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as pb_grpc
from services.suppliers import bootstrap
from shared.config import settings_for
from shared.protoconv import to_timestamp
from shared.stack import NatsServer, free_port
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def suppliers(databases, nats_server) -> AsyncIterator[pb_grpc.SupplierServiceStub]:
    running = await start_in_process("suppliers", databases=databases, nats=nats_server)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield pb_grpc.SupplierServiceStub(channel)
    await running.stop()


def in_days(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


async def new_supplier(stub: pb_grpc.SupplierServiceStub) -> str:
    supplier_id = ref("SUP")
    await stub.CreateSupplier(pb.CreateSupplierRequest(
        supplier_id=supplier_id, name="Acme Biochem", requested_by="qa.jane"))
    return supplier_id


async def qualify(stub, supplier_id: str, material: str, **kw) -> pb.Qualification:
    reply = await stub.QualifySupplier(pb.QualifySupplierRequest(
        supplier_id=supplier_id, material_code=material, valid_until=to_timestamp(in_days(365)),
        reason="on-site audit passed", requested_by="qa.jane", **kw))
    return reply.qualification


async def test_qualification_is_per_material(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)
    await qualify(suppliers, supplier_id, "MAT-A")

    reply = await suppliers.GetSupplier(pb.GetSupplierRequest(supplier_id=supplier_id))
    supplier = reply.supplier

    assert [(q.material_code, q.status) for q in supplier.qualifications] == [
        ("MAT-A", pb.QUALIFICATION_STATUS_QUALIFIED)]


async def test_history_records_who_what_when_why_and_old_and_new_status(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)
    await qualify(suppliers, supplier_id, "MAT-A")
    await suppliers.SuspendQualification(pb.SuspendQualificationRequest(
        supplier_id=supplier_id, material_code="MAT-A", reason="complaint CAPA-12",
        requested_by="qa.bob"))
    await suppliers.DisqualifySupplier(pb.DisqualifySupplierRequest(
        supplier_id=supplier_id, material_code="MAT-A", reason="audit failed",
        requested_by="qa.jane"))

    history = (await suppliers.ListQualificationHistory(
        pb.ListQualificationHistoryRequest(supplier_id=supplier_id))).changes

    assert [(c.version, c.previous_status, c.new_status, c.changed_by, c.reason)
            for c in history] == [
        (1, pb.QUALIFICATION_STATUS_UNSPECIFIED, pb.QUALIFICATION_STATUS_QUALIFIED, "qa.jane",
         "on-site audit passed"),
        (2, pb.QUALIFICATION_STATUS_QUALIFIED, pb.QUALIFICATION_STATUS_SUSPENDED, "qa.bob",
         "complaint CAPA-12"),
        (3, pb.QUALIFICATION_STATUS_SUSPENDED, pb.QUALIFICATION_STATUS_DISQUALIFIED, "qa.jane",
         "audit failed"),
    ]
    assert all(c.changed_at.seconds > 0 and c.event_id for c in history)


async def test_suspending_a_supplier_that_is_not_qualified_is_a_failed_precondition(
        suppliers) -> None:
    supplier_id = await new_supplier(suppliers)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suppliers.SuspendQualification(pb.SuspendQualificationRequest(
            supplier_id=supplier_id, material_code="MAT-A", reason="x", requested_by="qa.bob"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not qualified" in caught.value.details()


async def test_a_disqualified_supplier_cannot_be_qualified_again(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)
    await suppliers.DisqualifySupplier(pb.DisqualifySupplierRequest(
        supplier_id=supplier_id, material_code="MAT-A", reason="fraud", requested_by="qa.jane"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qualify(suppliers, supplier_id, "MAT-A")

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "DISQUALIFIED" in caught.value.details()


async def test_bad_requests_name_every_bad_field_and_change_nothing(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suppliers.QualifySupplier(pb.QualifySupplierRequest(
            supplier_id=supplier_id, material_code="bad code!", reason="",
            requested_by="qa.jane"))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"material_code", "reason", "valid_until"}
    history = await suppliers.ListQualificationHistory(
        pb.ListQualificationHistoryRequest(supplier_id=supplier_id))
    assert list(history.changes) == []


async def test_a_qualification_date_in_the_past_is_refused(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suppliers.QualifySupplier(pb.QualifySupplierRequest(
            supplier_id=supplier_id, material_code="MAT-A", valid_until=to_timestamp(in_days(-1)),
            reason="late paperwork", requested_by="qa.jane"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_supplier_is_not_found(suppliers) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suppliers.GetSupplier(pb.GetSupplierRequest(supplier_id=ref("NOPE")))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stale_expected_version_is_aborted(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)
    await qualify(suppliers, supplier_id, "MAT-A")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qualify(suppliers, supplier_id, "MAT-A", expected_version=0)

    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_creating_a_supplier_twice_returns_the_original_or_conflicts(suppliers) -> None:
    supplier_id = await new_supplier(suppliers)

    again = await suppliers.CreateSupplier(pb.CreateSupplierRequest(
        supplier_id=supplier_id, name="Acme Biochem", requested_by="qa.jane"))
    assert again.supplier.supplier_id == supplier_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suppliers.CreateSupplier(pb.CreateSupplierRequest(
            supplier_id=supplier_id, name="Someone Else", requested_by="qa.jane"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_every_change_is_published_once_with_its_event_id(suppliers, nats_server) -> None:
    supplier_id = await new_supplier(suppliers)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    sub = await js.subscribe("lotgate.suppliers.v1.qualification_changed", ordered_consumer=True)
    try:
        await qualify(suppliers, supplier_id, "MAT-A")
        await suppliers.SuspendQualification(pb.SuspendQualificationRequest(
            supplier_id=supplier_id, material_code="MAT-A", reason="CAPA", requested_by="qa"))
        seen: list[events_pb2.QualificationChanged] = []
        async with asyncio.timeout(10):
            while len(seen) < 2:
                msg = await sub.next_msg(timeout=10)
                event = events_pb2.QualificationChanged.FromString(msg.data)
                if event.qualification.supplier_id == supplier_id:
                    assert msg.headers["Nats-Msg-Id"] == event.event_id
                    seen.append(event)
    finally:
        await nc.close()

    assert [(e.previous_status, e.qualification.status, e.qualification.version)
            for e in seen] == [
        (pb.QUALIFICATION_STATUS_UNSPECIFIED, pb.QUALIFICATION_STATUS_QUALIFIED, 1),
        (pb.QUALIFICATION_STATUS_QUALIFIED, pb.QUALIFICATION_STATUS_SUSPENDED, 2),
    ]


async def test_changes_are_accepted_while_nats_is_down_and_published_once_it_is_up(
        databases, workdir) -> None:
    broker = NatsServer(workdir / f"nats-{ref('late')}", port=free_port())
    settings = settings_for("suppliers", database_url=await databases.create("suppliers"),
                            nats_url=broker.url, grpc_host="127.0.0.1", grpc_port=0,
                            outbox_poll_seconds=0.2)
    running = await bootstrap.start(settings)  # no broker is listening yet
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.SupplierServiceStub(channel)
            supplier_id = await new_supplier(stub)
            accepted = await qualify(stub, supplier_id, "MAT-A")
        assert not running.messaging_ready.is_set()

        await broker.start()
        await asyncio.wait_for(running.messaging_ready.wait(), timeout=30)
        nc = await nats.connect(broker.url)
        try:
            sub = await nc.jetstream().subscribe(
                "lotgate.suppliers.v1.qualification_changed", ordered_consumer=True)
            msg = await sub.next_msg(timeout=10)
        finally:
            await nc.close()
    finally:
        await running.stop()
        await broker.stop()

    event = events_pb2.QualificationChanged.FromString(msg.data)
    assert event.qualification == accepted
