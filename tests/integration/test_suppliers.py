"""The suppliers service over real gRPC, with a real database and a real nats-server:
suppliers and their sites, bad input, idempotency and the events of every change.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from lotgate.suppliers.v1 import events_pb2
from lotgate.suppliers.v1 import suppliers_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as pb_grpc
from lotgate_tools.stack import NatsServer, free_port
from services.suppliers import bootstrap
from shared import migrations
from shared.config import settings_for
from tests.support import auth
from tests.support import suppliers as support
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.suppliers import (
    NONE,
    PENDING,
    QUALIFIED,
    SUSPENDED,
    Events,
    changed_events,
    failure,
    new_qa,
)

pytestmark = pytest.mark.integration

# The fixtures of tests/support/suppliers.py that these tests use.
suppliers = support.suppliers


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
