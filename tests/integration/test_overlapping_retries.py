"""A retry that overlaps its original gets the original's answer, over real gRPC.

Instruments, LIMS bridges and warehouse systems retry on timeouts, so a retry can reach a
service while its original is still being handled. Every copy of a keyed call must then
be answered as if it had come after the original: the same OK answer, and one record.
Each test fires identical copies at once in several rounds, so that the copies really
overlap (on PostgreSQL they run in concurrent transactions).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from sqlalchemy import func, select

from lotgate.lots.v1 import lots_pb2 as lpb
from lotgate.lots.v1 import lots_pb2_grpc as lpb_grpc
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.results.v1 import results_pb2_grpc as rpb_grpc
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as spb_grpc
from services.lots.tables import release_policy_history
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from tests.support import auth
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ROUNDS = 6
COPIES = 4
MATERIAL = "CELL-MEDIUM-X"
SITE = "BASEL-1"
HPLC, FTIR, BACT = "HPLC-02", "FTIR-01", "BACT-03"


@dataclass
class Stubs:
    suppliers: spb_grpc.SupplierServiceStub
    lots: lpb_grpc.LotServiceStub
    results: rpb_grpc.ResultServiceStub
    lots_service: RunningService


@pytest.fixture(scope="module")
async def stubs(databases, nats_server) -> AsyncIterator[Stubs]:
    """The three services in this process, on fresh databases, with a specification in
    force and three calibrated instruments."""
    running = [await start_in_process(name, databases=databases, nats=nats_server)
               for name in ("suppliers", "lots", "results")]
    try:
        async with auth.channel(running[0].address) as sc, \
                auth.channel(running[1].address) as lc, \
                auth.channel(running[2].address) as rc:
            found = Stubs(spb_grpc.SupplierServiceStub(sc), lpb_grpc.LotServiceStub(lc),
                          rpb_grpc.ResultServiceStub(rc), running[1])
            await _specify(found.results)
            for instrument_id in (HPLC, FTIR, BACT):
                await found.results.RegisterInstrument(registration(instrument_id))
            yield found
    finally:
        for service in reversed(running):
            await service.stop()


async def _specify(results: rpb_grpc.ResultServiceStub) -> None:
    tests = [
        rpb.TestCriterion(test=rpb.TEST_KIND_IDENTITY, method="FTIR",
                          identity=rpb.IdentityCriterion(reference="FTIR RS-17")),
        rpb.TestCriterion(test=rpb.TEST_KIND_PURITY, method="HPLC", range=rpb.RangeCriterion(
            lower=rpb.Bound(value=98.0), upper=rpb.Bound(value=102.0), unit="%", decimals=1)),
        rpb.TestCriterion(test=rpb.TEST_KIND_STERILITY, method="Ph. Eur. 2.6.1",
                          sterility=rpb.SterilityCriterion(method="membrane filtration")),
    ]
    draft = await results.CreateSpecificationDraft(rpb.CreateSpecificationDraftRequest(
        material_code=MATERIAL, tests=tests, change_reason="CC-2026-031: first specification",
        requested_by="qa.jane"))
    await results.ApproveSpecification(rpb.ApproveSpecificationRequest(
        material_code=MATERIAL, version=draft.specification.version, approved_by="qa.lead"))


def today() -> date:
    return datetime.now(UTC).date()


def registration(instrument_id: str) -> rpb.RegisterInstrumentRequest:
    return rpb.RegisterInstrumentRequest(
        instrument_id=instrument_id, type="HPLC", location="QC lab 2",
        calibrated_on=(today() - timedelta(days=30)).isoformat(),
        calibration_due=(today() + timedelta(days=300)).isoformat(),
        certificate_ref="CAL-2026-118", requested_by="qc.lab")


def receipt(lot_id: str, supplier_id: str = "ACME-BIO", *,
            material: str = MATERIAL) -> lpb.ReceiveLotRequest:
    return lpb.ReceiveLotRequest(
        lot_id=lot_id, material_code=material, supplier_id=supplier_id,
        supplier_site_id=SITE, supplier_lot_number="A-7781",
        quantity=lpb.Quantity(value=25.0, unit="kg"), container_count=4,
        expiry_date="2030-06-30", requested_by="wms")


async def overlapping(method: Callable[[Message], Awaitable[Message]],
                      request: Message) -> Message:
    """Send COPIES of one request at once; every copy must be answered OK, all alike.
    The answer."""
    outcomes: list[Any] = await asyncio.gather(*(method(request) for _ in range(COPIES)),
                                               return_exceptions=True)
    refused = [f"{o.code().name}: {o.details()}" for o in outcomes
               if isinstance(o, grpc.aio.AioRpcError)]
    assert not refused, f"copies of one call were refused: {refused}"
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    assert all(o == outcomes[0] for o in outcomes), outcomes
    return outcomes[0]


async def received_lot(stubs: Stubs) -> str:
    """A lot received by the lots service, once the results service has heard of it."""
    lot_id = ref("LOT")
    await stubs.lots.ReceiveLot(receipt(lot_id))

    async def known() -> bool:
        try:
            await stubs.results.ListLotResults(rpb.ListLotResultsRequest(lot_id=lot_id))
            return True
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False

    await eventually(known, bool)
    return lot_id


async def lot_results(stubs: Stubs, lot_id: str) -> list[rpb.Result]:
    reply = await stubs.results.ListLotResults(rpb.ListLotResultsRequest(lot_id=lot_id))
    return list(reply.results)


def now() -> Any:
    return to_timestamp(datetime.now(UTC))


def purity(lot_id: str, value: float) -> rpb.RecordResultRequest:
    return rpb.RecordResultRequest(
        lot_id=lot_id, test=rpb.TEST_KIND_PURITY, instrument_id=HPLC,
        instrument_result_id=ref("HPLC-02"), quantity=rpb.Quantity(value=value, unit="%"),
        measured_at=now())


def sterility(lot_id: str, outcome: int) -> rpb.RecordResultRequest:
    return rpb.RecordResultRequest(
        lot_id=lot_id, test=rpb.TEST_KIND_STERILITY, instrument_id=BACT,
        instrument_result_id=ref("BACT-03"), sterility=outcome, measured_at=now())


def identity(lot_id: str) -> rpb.RecordResultRequest:
    return rpb.RecordResultRequest(
        lot_id=lot_id, test=rpb.TEST_KIND_IDENTITY, instrument_id=FTIR,
        instrument_result_id=ref("FTIR-01"), identity=rpb.IDENTITY_OUTCOME_MATCH,
        measured_at=now())


# Results: an out-of-specification result must not refuse its own retry.


@pytest.mark.req("DEL-005", "RES-001")
@pytest.mark.parametrize("make", [
    pytest.param(lambda lot_id: sterility(lot_id, rpb.STERILITY_OUTCOME_GROWTH),
                 id="sterility-growth"),
    pytest.param(lambda lot_id: purity(lot_id, 96.0), id="purity-below-range"),
    pytest.param(lambda lot_id: purity(lot_id, 99.4), id="purity-in-range"),
])
async def test_overlapping_copies_of_a_result_all_get_the_original(stubs, make) -> None:
    for _ in range(ROUNDS):
        lot_id = await received_lot(stubs)
        request = make(lot_id)

        reply = await overlapping(stubs.results.RecordResult, request)

        assert [r.result_id for r in await lot_results(stubs, lot_id)] == [
            reply.result.result_id]


@pytest.mark.req("DEL-005", "RES-002")
async def test_overlapping_copies_of_a_failing_batch_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        lot_id = await received_lot(stubs)
        request = rpb.RecordResultsRequest(results=[
            purity(lot_id, 96.0), sterility(lot_id, rpb.STERILITY_OUTCOME_GROWTH),
            identity(lot_id)])
        for entry in request.results:
            entry.instrument_id = HPLC  # a batch comes from one instrument (a LIMS bridge)

        reply = await overlapping(stubs.results.RecordResults, request)

        assert [r.verdict for r in reply.results] == [
            rpb.VERDICT_FAIL, rpb.VERDICT_FAIL, rpb.VERDICT_PASS]
        assert [r.result_id for r in await lot_results(stubs, lot_id)] == [
            r.result_id for r in reply.results]


@pytest.mark.req("DEL-005")
async def test_overlapping_copies_of_a_retest_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        lot_id = await received_lot(stubs)
        failed = (await stubs.results.RecordResult(purity(lot_id, 96.0))).result
        await stubs.results.InvalidateResult(rpb.InvalidateResultRequest(
            result_id=failed.result_id, reason="OOS-2026-17: sample diluted twice",
            requested_by="qa.jane"))
        request = purity(lot_id, 99.4)
        request.retest_of = failed.result_id

        reply = await overlapping(stubs.results.RecordResult, request)

        assert [r.result_id for r in await lot_results(stubs, lot_id)] == [
            failed.result_id, reply.result.result_id]


@pytest.mark.req("DEL-005")
async def test_overlapping_registrations_of_an_instrument_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        request = registration(ref("INS"))

        reply = await overlapping(stubs.results.RegisterInstrument, request)

        found = await stubs.results.GetInstrument(
            rpb.GetInstrumentRequest(instrument_id=request.instrument_id))
        assert found.instrument == reply.instrument
        assert len(found.calibrations) == 1


@pytest.mark.req("DEL-005")
async def test_overlapping_copies_of_a_calibration_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        instrument_id = ref("INS")
        await stubs.results.RegisterInstrument(registration(instrument_id))
        request = rpb.RecordCalibrationRequest(
            instrument_id=instrument_id, calibrated_on=today().isoformat(),
            calibration_due=(today() + timedelta(days=365)).isoformat(),
            certificate_ref="CAL-2026-204", requested_by="qc.lab")

        reply = await overlapping(stubs.results.RecordCalibration, request)

        found = await stubs.results.GetInstrument(
            rpb.GetInstrumentRequest(instrument_id=instrument_id))
        assert found.instrument == reply.instrument
        assert len(found.calibrations) == 2


@pytest.mark.req("DEL-005")
async def test_overlapping_copies_of_qa_decisions_on_results_all_get_the_original(
        stubs) -> None:
    for _ in range(ROUNDS):
        material = ref("MAT")
        draft = await stubs.results.CreateSpecificationDraft(
            rpb.CreateSpecificationDraftRequest(
                material_code=material, tests=(await stubs.results.GetSpecification(
                    rpb.GetSpecificationRequest(material_code=MATERIAL))).specification.tests,
                change_reason="CC-2026-032", requested_by="qa.jane"))
        approval = rpb.ApproveSpecificationRequest(
            material_code=material, version=draft.specification.version, approved_by="qa.lead")
        lot_id = await received_lot(stubs)
        failed = (await stubs.results.RecordResult(purity(lot_id, 96.0))).result
        invalidation = rpb.InvalidateResultRequest(
            result_id=failed.result_id, reason="OOS-2026-17: sample diluted twice",
            requested_by="qa.jane")

        approved = await overlapping(stubs.results.ApproveSpecification, approval)
        invalidated = await overlapping(stubs.results.InvalidateResult, invalidation)

        assert approved.specification.status == rpb.SPECIFICATION_STATUS_EFFECTIVE
        assert await lot_results(stubs, lot_id) == [invalidated.result]


# Lots


@pytest.mark.req("DEL-005")
async def test_overlapping_receipts_of_a_lot_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        supplier_id = ref("SUP")
        request = receipt(ref("LOT"), supplier_id)

        reply = await overlapping(stubs.lots.ReceiveLot, request)

        listed = await stubs.lots.ListLots(lpb.ListLotsRequest(supplier_id=supplier_id))
        assert [lot.lot_id for lot in listed.lots] == [request.lot_id]
        assert reply.lot.release_status.version == 1


@pytest.mark.req("DEL-005")
async def test_overlapping_first_settings_of_a_release_policy_all_get_the_original(
        stubs) -> None:
    for _ in range(ROUNDS):
        material = ref("MAT")
        await stubs.lots.ReceiveLot(receipt(ref("LOT"), material=material))
        request = lpb.SetReleasePolicyRequest(
            material_code=material, policy=lpb.RELEASE_POLICY_QA_RELEASE,
            reason="CC-2026-040: QA releases each lot", requested_by="qa.lead")

        reply = await overlapping(stubs.lots.SetReleasePolicy, request)

        found = await stubs.lots.GetReleasePolicy(
            lpb.GetReleasePolicyRequest(material_code=material))
        assert found.policy == reply.policy
        async with stubs.lots_service.infra.engine.connect() as conn:
            history = (await conn.execute(
                select(func.count()).select_from(release_policy_history)
                .where(release_policy_history.c.material_code == material))).scalar_one()
        assert history == 1


@pytest.mark.req("DEL-005")
async def test_overlapping_copies_of_qa_actions_all_get_the_original(stubs) -> None:
    # The copies that find the action done answer at once; the overlap is narrower here.
    for _ in range(4 * ROUNDS):
        lot_id = ref("LOT")
        await stubs.lots.ReceiveLot(receipt(lot_id))
        hold = lpb.HoldLotRequest(lot_id=lot_id, reason="label mix-up, DEV-12",
                                  requested_by="qa.jane")
        reject = lpb.RejectLotRequest(lot_id=lot_id, reason="containers damaged, DEV-13",
                                      requested_by="qa.jane")

        await overlapping(stubs.lots.HoldLot, hold)
        await overlapping(stubs.lots.RejectLot, reject)

        decisions = await stubs.lots.ListDecisions(lpb.ListDecisionsRequest(lot_id=lot_id))
        assert [d.decision.status for d in decisions.decisions] == [
            lpb.LOT_STATUS_QUARANTINE, lpb.LOT_STATUS_ON_HOLD, lpb.LOT_STATUS_REJECTED]


# Suppliers


@pytest.mark.req("DEL-005")
async def test_overlapping_creations_of_a_supplier_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        request = spb.CreateSupplierRequest(supplier_id=ref("SUP"), name="Acme Biologicals",
                                            requested_by="qa.jane")

        reply = await overlapping(stubs.suppliers.CreateSupplier, request)

        found = await stubs.suppliers.GetSupplier(
            spb.GetSupplierRequest(supplier_id=request.supplier_id))
        assert found.supplier == reply.supplier


@pytest.mark.req("DEL-005")
async def test_overlapping_additions_of_a_site_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        supplier_id = ref("SUP")
        await stubs.suppliers.CreateSupplier(spb.CreateSupplierRequest(
            supplier_id=supplier_id, name="Acme Biologicals", requested_by="qa.jane"))
        request = spb.AddSiteRequest(supplier_id=supplier_id, site_id=SITE,
                                     name="Acme Basel fill plant",
                                     address="Werkstrasse 1, 4057 Basel", country="CH",
                                     requested_by="qa.jane")

        reply = await overlapping(stubs.suppliers.AddSite, request)

        found = await stubs.suppliers.GetSupplier(spb.GetSupplierRequest(supplier_id=supplier_id))
        assert list(found.supplier.sites) == [reply.site]


@pytest.mark.req("DEL-005")
async def test_overlapping_records_of_an_audit_all_get_the_original(stubs) -> None:
    for _ in range(ROUNDS):
        supplier_id = ref("SUP")
        await stubs.suppliers.CreateSupplier(spb.CreateSupplierRequest(
            supplier_id=supplier_id, name="Acme Biologicals", requested_by="qa.jane"))
        await stubs.suppliers.AddSite(spb.AddSiteRequest(
            supplier_id=supplier_id, site_id=SITE, name="Acme Basel fill plant",
            address="Werkstrasse 1, 4057 Basel", country="CH", requested_by="qa.jane"))
        request = spb.RecordAuditRequest(
            audit_id=ref("AUD"), supplier_id=supplier_id, site_id=SITE,
            type=spb.AUDIT_TYPE_ON_SITE, audit_date=today().isoformat(), auditor="max.keller",
            outcome=spb.AUDIT_OUTCOME_APPROVED, minor_findings=3,
            next_audit_due=(today() + timedelta(days=700)).isoformat(),
            summary="fill line and QC lab", requested_by="qa.jane")

        reply = await overlapping(stubs.suppliers.RecordAudit, request)

        found = await stubs.suppliers.ListAudits(spb.ListAuditsRequest(supplier_id=supplier_id))
        assert list(found.audits) == [reply.audit]
