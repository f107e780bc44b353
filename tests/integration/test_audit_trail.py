"""The audit trail of every service over real gRPC, real databases and a real nats-server:
every GMP write leaves its entry, and VerifyAuditTrail names each kind of tampering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.lots.v1 import lots_pb2 as lpb
from lotgate.lots.v1 import lots_pb2_grpc as lpb_grpc
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.results.v1 import results_pb2_grpc as rpb_grpc
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as spb_grpc
from shared import access, paging
from shared.clock import ManualClock
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from tests.integration.test_lots import SITE, System
from tests.support import auth
from tests.support import results as results_support
from tests.support.events import harness
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

QA = dict(reason="batch record reviewed, see DEV-12", requested_by="qa.jane")


@dataclass
class Stack:
    system: System
    results: rpb_grpc.ResultServiceStub
    results_js: object
    audit: dict[str, apb_grpc.AuditServiceStub]
    services: dict[str, RunningService]


@pytest.fixture(scope="module")
async def stack(databases, nats_server) -> AsyncIterator[Stack]:
    services = {name: await start_in_process(name, databases=databases, nats=nats_server)
                for name in ("suppliers", "lots", "results")}
    events = await harness(nats_server)
    channels = {name: auth.channel(s.address, "auditor", sub="auditor.max")
                for name, s in services.items()}
    try:
        async with auth.channel(services["lots"].address) as lc, \
                auth.channel(services["suppliers"].address) as sc, \
                auth.channel(services["results"].address) as rc:
            system = System(lpb_grpc.LotServiceStub(lc), spb_grpc.SupplierServiceStub(sc),
                            services["lots"], events.js)
            yield Stack(system, rpb_grpc.ResultServiceStub(rc), events.js,
                        {name: apb_grpc.AuditServiceStub(ch) for name, ch in channels.items()},
                        services)
    finally:
        for ch in channels.values():
            await ch.close()
        await events.close()
        for running in services.values():
            await running.stop()


async def entries(stub: apb_grpc.AuditServiceStub, *, after: int = 0,
                  **filters: object) -> list[apb.AuditEntry]:
    """Every entry after sequence `after` that matches `filters`, through all pages."""
    found: list[apb.AuditEntry] = []
    token = paging.encode_position(after) if after else ""
    while True:
        page = await stub.ListAuditTrail(apb.ListAuditTrailRequest(
            page_size=7, page_token=token, **filters))
        found += page.entries
        token = page.next_page_token
        if not token:
            return found


async def verified(stub: apb_grpc.AuditServiceStub) -> apb.VerifyAuditTrailResponse:
    return await stub.VerifyAuditTrail(apb.VerifyAuditTrailRequest())


# Every write RPC, called once, and the records it must leave one entry each for:
# (record type, record id, True when it creates the record).
Written = list[tuple[str, str, bool]]


def write_rpcs() -> set[str]:
    """The RPCs that change GMP records: those the auditor, who changes nothing, may not
    call (the audit service's own anchor call aside, and the signing secrets of
    shared.esign, which are credentials kept in the signers table, not GMP records: their
    `signer` entries are tested in test_signer_audit)."""
    return {rpc for rpc, roles in access.ACCESS.items()
            if access.AUDITOR not in roles
            and not rpc.startswith(("lotgate.audit.", "lotgate.signatures."))}


async def test_every_gmp_write_leaves_one_entry_per_record_with_old_and_new_values(
        stack: Stack) -> None:
    s, r = stack.system, stack.results
    material = ref("MAT")
    state: dict[str, str] = {}

    # suppliers
    async def create_supplier() -> Written:
        state["supplier"] = ref("SUP")
        await s.suppliers.CreateSupplier(spb.CreateSupplierRequest(
            supplier_id=state["supplier"], name="Acme", requested_by="qa.jane"))
        return [("supplier", state["supplier"], True)]

    async def add_site() -> Written:
        await s.suppliers.AddSite(spb.AddSiteRequest(
            supplier_id=state["supplier"], site_id=SITE, name="Acme Basel",
            address="1 Industry Road, Basel", country="CH", requested_by="qa.jane"))
        return [("site", f"{state['supplier']}/{SITE}", True)]

    async def record_audit() -> Written:
        state["audit"] = ref("AUD")
        await s.suppliers.RecordAudit(spb.RecordAuditRequest(
            audit_id=state["audit"], supplier_id=state["supplier"], site_id=SITE,
            type=spb.AUDIT_TYPE_ON_SITE, audit_date=s.now().date().isoformat(),
            auditor="auditor.max", outcome=spb.AUDIT_OUTCOME_APPROVED,
            next_audit_due=(s.now().date() + timedelta(days=400)).isoformat(),
            summary="GMP audit of the site; no findings", requested_by="qa.jane"))
        return [("audit", state["audit"], True)]

    def qualification() -> str:
        return f"{state['supplier']}/{SITE}/{material}"

    key = lambda: dict(supplier_id=state["supplier"], site_id=SITE,  # noqa: E731
                       material_code=material)

    async def open_qualification() -> Written:
        await s.suppliers.OpenQualification(spb.OpenQualificationRequest(
            reason="new supplier", requested_by="qa.jane", **key()))
        return [("qualification", qualification(), True)]

    async def qualify() -> Written:
        await s.suppliers.QualifySupplier(spb.QualifySupplierRequest(
            valid_until=to_timestamp(s.now() + timedelta(days=365)), reason="audit passed",
            requested_by="qa.jane", **key(),
            evidence=spb.Evidence(audit_id=state["audit"], quality_agreement_ref="QAG-1")))
        return [("qualification", qualification(), False)]

    async def suspend() -> Written:
        await s.suppliers.SuspendQualification(spb.SuspendQualificationRequest(
            reason="complaint under investigation", requested_by="qa.jane", **key()))
        return [("qualification", qualification(), False)]

    async def disqualify() -> Written:
        await s.suppliers.DisqualifySupplier(spb.DisqualifySupplierRequest(
            reason="critical finding", requested_by="qa.jane", **key()))
        return [("qualification", qualification(), False)]

    # lots: a QA_RELEASE material from a site of its own supplier, qualified
    lot_material = ref("MAT")

    async def set_policy() -> Written:
        await s.lots.SetReleasePolicy(lpb.SetReleasePolicyRequest(
            material_code=lot_material, policy=lpb.RELEASE_POLICY_QA_RELEASE, **QA))
        return [("policy", lot_material, True)]

    async def receive() -> Written:
        state["lot_supplier"] = await s.qualified_supplier(lot_material)
        lot = await s.receive(state["lot_supplier"], lot_material)
        state["lot"] = lot.lot_id
        return [("lot", lot.lot_id, True)]

    async def release() -> Written:
        await s.post_all_passing(state["lot"], lot_material)
        await s.wait_status(state["lot"], lpb.LOT_STATUS_RELEASABLE)
        await s.lots.ReleaseLot(lpb.ReleaseLotRequest(lot_id=state["lot"], **QA))
        return [("lot", state["lot"], False)]

    async def close_review() -> Written:
        await s.suspend(state["lot_supplier"], lot_material)
        reviews = await eventually(
            lambda: s.lots.ListLotReviews(lpb.ListLotReviewsRequest(
                supplier_id=state["lot_supplier"])), lambda reply: len(reply.reviews) == 1)
        review_id = reviews.reviews[0].review_id
        await s.lots.CloseLotReview(lpb.CloseLotReviewRequest(
            review_id=review_id, conclusion="no impact on the released lot",
            requested_by="qa.jane"))
        return [("review", review_id, False)]

    async def hold() -> Written:
        await s.lots.HoldLot(lpb.HoldLotRequest(lot_id=state["lot"], **QA))
        return [("lot", state["lot"], False)]

    async def release_hold() -> Written:
        await s.lots.ReleaseHold(lpb.ReleaseHoldRequest(lot_id=state["lot"], **QA))
        return [("lot", state["lot"], False)]

    async def set_retest_date() -> Written:
        await s.lots.SetRetestDate(lpb.SetRetestDateRequest(
            lot_id=state["lot"], retest_date=(s.now().date() + timedelta(days=90)).isoformat(),
            **QA))
        return [("lot", state["lot"], False)]

    async def reject() -> Written:
        await s.lots.RejectLot(lpb.RejectLotRequest(lot_id=state["lot"], **QA))
        return [("lot", state["lot"], False)]

    # results
    spec_material = ref("MAT")

    async def create_draft() -> Written:
        await results_support.draft(r, spec_material)
        return [("specification", f"{spec_material}/1", True)]

    async def update_draft() -> Written:
        await r.UpdateSpecificationDraft(rpb.UpdateSpecificationDraftRequest(
            material_code=spec_material, version=1, tests=results_support.spec_tests(lower=97),
            change_reason="CC-2026-102", requested_by="qa.author"))
        return [("specification", f"{spec_material}/1", False)]

    async def approve() -> Written:
        await results_support.approve(r, spec_material, 1)
        return [("specification", f"{spec_material}/1", False)]

    async def register() -> Written:
        state["instrument"] = ref("INS")
        await results_support.register(r, state["instrument"])
        calibration = json.loads((await entries(
            stack.audit["results"], record_type="calibration"))[-1].new_values_json)
        return [("instrument", state["instrument"], True),
                ("calibration", str(calibration["id"]), True)]

    async def calibrate() -> Written:
        await r.RecordCalibration(rpb.RecordCalibrationRequest(
            instrument_id=state["instrument"], calibrated_on=s.now().date().isoformat(),
            calibration_due=(s.now().date() + timedelta(days=300)).isoformat(),
            certificate_ref="CAL-0002", requested_by="qc.lead"))
        calibration = json.loads((await entries(
            stack.audit["results"], record_type="calibration"))[-1].new_values_json)
        assert calibration["certificate_ref"] == "CAL-0002"
        return [("calibration", str(calibration["id"]), True)]

    async def set_instrument_status() -> Written:
        await r.SetInstrumentStatus(rpb.SetInstrumentStatusRequest(
            instrument_id=state["instrument"], status=rpb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
            reason="pump leaking", requested_by="qc.lead"))
        return [("instrument", state["instrument"], False)]

    async def record_result() -> Written:
        state["result_lot"] = await results_support.receive_lot(r, stack.results_js,
                                                                spec_material)
        result = await results_support.post(r, results_support.purity(
            state["result_lot"], 50.0, instrument=state["instrument"]))
        state["failing"] = result.result_id
        return [("result", result.result_id, True)]

    async def record_results() -> Written:
        [result] = await results_support.post_all(r, results_support.identity(
            state["result_lot"], instrument=state["instrument"]))
        state["passing"] = result.result_id
        return [("result", result.result_id, True)]

    async def invalidate() -> Written:
        await r.InvalidateResult(rpb.InvalidateResultRequest(
            result_id=state["passing"], reason="wrong reference standard",
            requested_by="qa.jane"))
        return [("result", state["passing"], False)]

    async def confirm() -> Written:
        await r.ConfirmResult(rpb.ConfirmResultRequest(
            result_id=state["failing"], reason="no laboratory error found",
            requested_by="qa.jane"))
        return [("result", state["failing"], False)]

    S, L, R = ("suppliers", "lotgate.suppliers.v1.SupplierService"), (
        "lots", "lotgate.lots.v1.LotService"), ("results", "lotgate.results.v1.ResultService")
    cases: list[tuple[tuple[str, str], str, Callable[[], Awaitable[Written]]]] = [
        (S, "CreateSupplier", create_supplier), (S, "AddSite", add_site),
        (S, "RecordAudit", record_audit), (S, "OpenQualification", open_qualification),
        (S, "QualifySupplier", qualify), (S, "SuspendQualification", suspend),
        (S, "DisqualifySupplier", disqualify),
        (L, "SetReleasePolicy", set_policy), (L, "ReceiveLot", receive),
        (L, "ReleaseLot", release), (L, "CloseLotReview", close_review),
        (L, "HoldLot", hold), (L, "ReleaseHold", release_hold),
        (L, "SetRetestDate", set_retest_date), (L, "RejectLot", reject),
        (R, "CreateSpecificationDraft", create_draft),
        (R, "UpdateSpecificationDraft", update_draft), (R, "ApproveSpecification", approve),
        (R, "RegisterInstrument", register), (R, "RecordCalibration", calibrate),
        (R, "RecordResult", record_result), (R, "RecordResults", record_results),
        (R, "InvalidateResult", invalidate), (R, "ConfirmResult", confirm),
        (R, "SetInstrumentStatus", set_instrument_status),
    ]
    assert {f"{svc}/{rpc}" for (_, svc), rpc, _ in cases} == write_rpcs(), (
        "every write RPC must be called here")

    wrong: list[str] = []
    for (service, _), rpc, run in cases:
        before = (await verified(stack.audit[service])).head_sequence
        written = await run()
        # The call's own entries are the caller's; the services' reactions to events
        # (a lot decided again when a result arrives) are the service's.
        found = [e for e in await entries(stack.audit[service], after=before)
                 if not e.principal_subject.startswith("lotgate:")]
        for record_type, record_id, created in written:
            mine = [e for e in found if (e.record_type, e.record_id) == (record_type, record_id)
                    and e.request_id]
            if len(mine) != 1:
                wrong.append(f"{rpc}: {len(mine)} entries for {record_type} {record_id}")
                continue
            e = mine[0]
            if not e.new_values_json or (not e.old_values_json) != created:
                wrong.append(f"{rpc}: old/new values {e.old_values_json!r} -> "
                             f"{e.new_values_json!r}")
            if e.old_values_json == e.new_values_json:
                wrong.append(f"{rpc}: an entry that changes nothing")
            if not e.principal_subject or not e.recorded_at.seconds:
                wrong.append(f"{rpc}: no principal or time")

    assert wrong == []
    for name, stub in stack.audit.items():
        verdict = await verified(stub)
        assert verdict.ok, (name, verdict)
        assert verdict.entries_checked > 0 and verdict.service == name


async def test_event_driven_changes_are_recorded_as_the_service(stack: Stack) -> None:
    s = stack.system
    material = ref("MAT")
    supplier = await s.qualified_supplier(material)
    lot = await s.receive(supplier, material)
    await s.post_all_passing(lot.lot_id, material)
    await s.wait_status(lot.lot_id, lpb.LOT_STATUS_RELEASED)

    trail = await entries(stack.audit["lots"], record_type="lot", record_id=lot.lot_id)

    assert (trail[0].principal_subject, trail[0].action) == ("wms", "receive")
    assert trail[-1].principal_subject == "lotgate:lots"
    assert json.loads(trail[-1].new_values_json)["status"] == "RELEASED"
    assert [json.loads(e.old_values_json) for e in trail[1:]] == [
        json.loads(e.new_values_json) for e in trail[:-1]]


async def test_the_trail_filters_by_record_principal_and_time_and_pages(stack: Stack) -> None:
    s = stack.system
    supplier = ref("SUP")
    await s.suppliers.CreateSupplier(spb.CreateSupplierRequest(
        supplier_id=supplier, name="Acme", requested_by="qa.filter"))
    for site in ("S1", "S2", "S3"):
        await s.add_site(supplier, site)
    audit = stack.audit["suppliers"]

    by_record = await entries(audit, record_type="supplier", record_id=supplier)
    by_principal = await entries(audit, principal="qa.filter")
    everything = await entries(audit)
    since = by_principal[0].recorded_at
    by_time = await entries(audit, since=since)

    assert [(e.record_type, e.record_id) for e in by_record] == [("supplier", supplier)]
    assert [e.record_id for e in by_principal] == [supplier]
    assert [e.sequence for e in everything] == list(range(1, len(everything) + 1))
    assert {e.record_id for e in by_time} >= {supplier, f"{supplier}/S1", f"{supplier}/S3"}
    assert all(e.recorded_at.ToDatetime() >= since.ToDatetime() for e in by_time)


async def test_bad_filters_and_foreign_page_tokens_are_refused_field_by_field(
        stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.audit["lots"].ListAuditTrail(apb.ListAuditTrailRequest(
            record_type="supplier", page_size=5000, page_token="bm90LW91cnM="))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused.value)) == {"record_type", "page_size", "page_token"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.audit["lots"].ListAuditTrail(apb.ListAuditTrailRequest(record_id="L-1"))
    assert set(field_violations(refused.value)) == {"record_id"}


async def test_warehouse_may_not_read_the_trail(stack: Stack) -> None:
    async with auth.channel(stack.services["lots"].address, "warehouse") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await apb_grpc.AuditServiceStub(ch).ListAuditTrail(apb.ListAuditTrailRequest())

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


# Tampering: each on a suppliers service of its own, edited directly in its database.


@pytest.fixture
async def tampered(databases, nats_server) -> AsyncIterator[tuple[RunningService,
                                                                  apb_grpc.AuditServiceStub]]:
    service = await start_in_process("suppliers", databases=databases, nats=nats_server)
    try:
        async with auth.channel(service.address) as ch, \
                auth.channel(service.address, "auditor") as auditor:
            stub = spb_grpc.SupplierServiceStub(ch)
            for supplier in ("SUP-A", "SUP-B", "SUP-C"):
                await stub.CreateSupplier(spb.CreateSupplierRequest(
                    supplier_id=supplier, name=f"{supplier} Ltd", requested_by="qa.jane"))
            trail = apb_grpc.AuditServiceStub(auditor)
            assert (await verified(trail)).ok
            yield service, trail
    finally:
        await service.stop()


async def around_the_trigger(conn: AsyncConnection) -> None:
    """Let this transaction edit the trail, as only an administrator of the database
    could (PostgreSQL: replica mode skips triggers; SQLite: drop them)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
    else:
        await conn.execute(text("DROP TRIGGER IF EXISTS audit_trail_no_update"))
        await conn.execute(text("DROP TRIGGER IF EXISTS audit_trail_no_delete"))


async def as_superuser(service: RunningService, *statements: str) -> None:
    """Run `statements` around the append-only trigger."""
    async with service.infra.engine.begin() as conn:
        await around_the_trigger(conn)
        for statement in statements:
            await conn.execute(text(statement))


async def test_an_edited_entry_is_named_by_its_content_hash(tampered) -> None:
    service, trail = tampered
    await as_superuser(service, "UPDATE audit_trail SET reason = 'nothing to see' "
                                "WHERE sequence = 2")

    verdict = await verified(trail)

    assert not verdict.ok
    assert (verdict.problem, verdict.sequence) == (
        apb.AUDIT_PROBLEM_CONTENT_HASH_MISMATCH, 2)
    assert verdict.record_id == "SUP-B"


async def test_a_deleted_entry_is_named_as_a_gap(tampered) -> None:
    service, trail = tampered
    await as_superuser(service, "DELETE FROM audit_trail WHERE sequence = 2")

    verdict = await verified(trail)

    assert (verdict.ok, verdict.problem, verdict.sequence) == (
        False, apb.AUDIT_PROBLEM_SEQUENCE_GAP, 3)
    assert "2..2 are missing" in verdict.detail


async def test_a_reordered_chain_is_named_as_a_broken_link(tampered) -> None:
    service, trail = tampered
    await as_superuser(service,
                       "UPDATE audit_trail SET sequence = 100 WHERE sequence = 2",
                       "UPDATE audit_trail SET sequence = 2 WHERE sequence = 3",
                       "UPDATE audit_trail SET sequence = 3 WHERE sequence = 100")

    verdict = await verified(trail)

    assert (verdict.ok, verdict.problem, verdict.sequence) == (
        False, apb.AUDIT_PROBLEM_BROKEN_LINK, 2)


async def test_a_gmp_row_edited_outside_the_service_is_named(tampered) -> None:
    service, trail = tampered
    async with service.infra.engine.begin() as conn:
        await conn.execute(text("UPDATE suppliers SET name = 'Other Ltd' "
                                "WHERE supplier_id = 'SUP-C'"))

    verdict = await verified(trail)

    assert (verdict.ok, verdict.problem, verdict.record_type, verdict.record_id) == (
        False, apb.AUDIT_PROBLEM_RECORD_CHANGED, "supplier", "SUP-C")
    assert "name is 'Other Ltd'" in verdict.detail


async def test_a_gmp_row_written_or_deleted_outside_the_service_is_named(tampered) -> None:
    service, trail = tampered
    async with service.infra.engine.begin() as conn:
        await conn.execute(text("DELETE FROM suppliers WHERE supplier_id = 'SUP-A'"))

    verdict = await verified(trail)

    assert (verdict.problem, verdict.record_id) == (apb.AUDIT_PROBLEM_RECORD_MISSING, "SUP-A")
    async with service.infra.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO suppliers (supplier_id, name, created_by, created_at) "
            "SELECT 'SUP-A', name, created_by, created_at FROM suppliers "
            "WHERE supplier_id = 'SUP-B'"))
    verdict = await verified(trail)
    assert (verdict.problem, verdict.record_id) == (apb.AUDIT_PROBLEM_RECORD_CHANGED, "SUP-A")


@pytest.mark.parametrize("statement", [
    "UPDATE audit_trail SET reason = 'rewritten'",
    "DELETE FROM audit_trail WHERE sequence = 1",
])
async def test_the_service_cannot_update_or_delete_its_trail(tampered, statement) -> None:
    service, trail = tampered

    with pytest.raises(DBAPIError, match="append-only"):
        async with service.infra.engine.begin() as conn:
            await conn.execute(text(statement))

    assert (await verified(trail)).ok


async def test_the_service_cannot_truncate_its_trail_on_postgresql(tampered) -> None:
    service, trail = tampered
    statement = ("TRUNCATE audit_trail" if service.infra.engine.dialect.name == "postgresql"
                 else "DELETE FROM audit_trail")  # SQLite's TRUNCATE

    with pytest.raises(DBAPIError, match="append-only"):
        async with service.infra.engine.begin() as conn:
            await conn.execute(text(statement))

    assert (await verified(trail)).entries_checked == 3


async def test_an_expiry_by_the_scheduler_is_recorded_as_the_service(
        databases, nats_server) -> None:
    clock = ManualClock()
    service = await start_in_process("suppliers", databases=databases, nats=nats_server,
                                     clock=clock, expiry_check_seconds=0.05)
    try:
        async with auth.channel(service.address) as ch, \
                auth.channel(service.address, "auditor") as auditor:
            system = System(None, spb_grpc.SupplierServiceStub(ch), service, None,  # type: ignore[arg-type]
                            clock=clock)
            supplier = await system.qualified_supplier("MAT-EXPIRY")
            clock.advance(timedelta(days=400))
            trail = apb_grpc.AuditServiceStub(auditor)
            expired = await eventually(
                lambda: entries(trail, record_type="qualification",
                                record_id=f"{supplier}/{SITE}/MAT-EXPIRY"),
                lambda found: found[-1].action == "set EXPIRED")

            assert expired[-1].principal_subject == "lotgate:suppliers"
            assert json.loads(expired[-1].old_values_json)["status"] == "QUALIFIED"
            assert json.loads(expired[-1].new_values_json)["status"] == "EXPIRED"
            assert (await verified(trail)).ok
    finally:
        await service.stop()


async def test_concurrent_writes_append_one_unbroken_chain(tampered) -> None:
    service, trail = tampered
    async with auth.channel(service.address) as ch:
        stub = spb_grpc.SupplierServiceStub(ch)
        await asyncio.gather(*(stub.CreateSupplier(spb.CreateSupplierRequest(
            supplier_id=f"SUP-P{i}", name="Parallel Ltd", requested_by="qa.jane"))
            for i in range(30)))

    verdict = await verified(trail)

    assert verdict.ok, verdict
    assert (verdict.entries_checked, verdict.head_sequence, verdict.records_checked) == (
        33, 33, 33)
