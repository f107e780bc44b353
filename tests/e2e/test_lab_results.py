"""QA, a warehouse and the lab instruments against the running system: versioned
specifications, instrument calibration, out-of-specification handling, as processes over
real gRPC and NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from lotgate_tools.client import Lotgate, identity, purity, sterility
from shared.protoconv import to_timestamp
from tests.support.services import ref
from tests.support.waiting import until_lot

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)


async def settled(lg: Lotgate, lot_id: str, status: int, expected: list[str]
                  ) -> pb.ReleaseStatus:
    """The lot once it is `status` with exactly `expected` unmet; fails naming the last
    status seen when it does not get there."""
    return await until_lot(lg.lots, lot_id, status, expected)


async def lot_with_two_passes(lg: Lotgate) -> tuple[str, str]:
    """A received lot of a qualified supplier with passing identity and sterility results."""
    material, supplier, lot = ref("MAT"), ref("SUP"), ref("LOT")
    await lg.specify(material)
    await lg.qualify(supplier, "Acme", material, NEXT_YEAR)
    await lg.receive(lot, material, supplier)
    await lg.post(identity(lot, "FTIR-1", ref("K")))
    await lg.post(sterility(lot, "BACT-1", ref("K")))
    return lot, material


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.req("OOS-001", "OOS-003")
async def test_oos_holds_the_lot_then_invalidation_and_a_retest_release_it(
        lotgate: Lotgate) -> None:
    lot, _ = await lot_with_two_passes(lotgate)
    oos = await lotgate.post(purity(lot, "HPLC-1", ref("K"), 96.0))

    await settled(lotgate, lot, pb.LOT_STATUS_ON_HOLD, ["PURITY_OUT_OF_SPECIFICATION"])
    # No testing into compliance: another purity result waits for QA's decision.
    early = await failure(lotgate.results.RecordResult(purity(lot, "HPLC-1", ref("K"), 99.9)))
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION

    await lotgate.results.InvalidateResult(rpb.InvalidateResultRequest(
        result_id=oos.result_id, reason="sample diluted twice (lab error, OOS-2026-17)",
        requested_by="qa.jane"))
    await settled(lotgate, lot, pb.LOT_STATUS_QUARANTINE, ["PURITY_RETEST_REQUIRED"])
    retest = purity(lot, "HPLC-1", ref("K"), 99.6)
    retest.retest_of = oos.result_id
    await lotgate.post(retest)

    await settled(lotgate, lot, pb.LOT_STATUS_RELEASED, [])
    history = (await lotgate.results.ListLotResults(rpb.ListLotResultsRequest(
        lot_id=lot))).results
    original = next(r for r in history if r.result_id == oos.result_id)
    assert (original.state, original.verdict, original.quantity.value) == (
        rpb.RESULT_STATE_INVALIDATED, rpb.VERDICT_FAIL, 96.0)
    assert [r.retest_of for r in history if r.test == rpb.TEST_KIND_PURITY] == [
        "", oos.result_id]


@pytest.mark.req("OOS-002")
async def test_oos_confirmed_by_qa_rejects_the_lot(lotgate: Lotgate) -> None:
    lot, _ = await lot_with_two_passes(lotgate)
    oos = await lotgate.post(purity(lot, "HPLC-1", ref("K"), 103.4))
    await settled(lotgate, lot, pb.LOT_STATUS_ON_HOLD, ["PURITY_OUT_OF_SPECIFICATION"])

    confirmed = await lotgate.results.ConfirmResult(rpb.ConfirmResultRequest(
        result_id=oos.result_id, reason="investigation OOS-2026-18: no assignable cause",
        requested_by="qa.jane"))

    await settled(lotgate, lot, pb.LOT_STATUS_REJECTED, ["PURITY_FAILED"])
    assert confirmed.result.state == rpb.RESULT_STATE_CONFIRMED


@pytest.mark.req("SPEC-003")
async def test_a_result_is_judged_by_the_version_in_force_when_it_was_measured(
        lotgate: Lotgate) -> None:
    lot, material = await lot_with_two_passes(lotgate)
    measured = datetime.now(UTC)
    # QA tightens the purity range: 99.0-101.0 % from now on.
    await lotgate.specify(material, lower=99.0, upper=101.0)
    tightened = await lotgate.results.GetSpecification(rpb.GetSpecificationRequest(
        material_code=material))

    old = purity(lot, "HPLC-1", ref("K"), 98.5)
    old.measured_at.CopyFrom(to_timestamp(measured))  # measured before the change
    judged = await lotgate.post(old)

    assert tightened.specification.version == 2
    assert (judged.spec_version, judged.verdict) == (1, rpb.VERDICT_PASS)
    await settled(lotgate, lot, pb.LOT_STATUS_RELEASED, [])


@pytest.mark.req("SPEC-002")
async def test_an_effective_specification_refuses_an_edit(lotgate: Lotgate) -> None:
    material = ref("MAT")
    spec = await lotgate.specify(material)

    error = await failure(lotgate.results.UpdateSpecificationDraft(
        rpb.UpdateSpecificationDraftRequest(
            material_code=material, version=spec.version, tests=spec.tests,
            change_reason="widen purity", requested_by="qa.jane")))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "EFFECTIVE" in error.details()
    after = await lotgate.results.GetSpecification(rpb.GetSpecificationRequest(
        material_code=material))
    assert after.specification == spec


@pytest.mark.req("INS-001")
async def test_an_instrument_out_of_calibration_is_refused(lotgate: Lotgate) -> None:
    lot, _ = await lot_with_two_passes(lotgate)
    instrument = ref("HPLC")
    today = datetime.now(UTC).date()
    await lotgate.results.RegisterInstrument(rpb.RegisterInstrumentRequest(
        instrument_id=instrument, type="HPLC", location="QC lab 2",
        calibrated_on=(today - timedelta(days=400)).isoformat(),
        calibration_due=(today - timedelta(days=35)).isoformat(),
        certificate_ref="CAL-2025-88", requested_by="qc.lab"))

    error = await failure(lotgate.results.RecordResult(purity(lot, instrument, ref("K"), 99.5)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not within calibration" in error.details()
    listed = await lotgate.results.ListLotResults(rpb.ListLotResultsRequest(lot_id=lot))
    assert [r.test for r in listed.results] == [rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_STERILITY]
    await settled(lotgate, lot, pb.LOT_STATUS_QUARANTINE, ["PURITY_MISSING"])
