"""Instruments over real gRPC: registration, calibrations, retirement, and which
instrument may post a result.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest

from lotgate.results.v1 import results_pb2 as pb
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    FAILED,
    HPLC,
    list_results,
    new_instrument,
    post,
    precondition,
    purity,
    refused,
    register,
    specified_lot,
    today,
)
from tests.support.services import ref

pytestmark = pytest.mark.integration

# The fixtures of tests/support/results.py: the running service, a stub for it, its
# instruments (registered for the module) and JetStream.
service = support.service
stub = support.stub
instruments = support.instruments
js = support.js


# Instruments and calibrations


@pytest.mark.req("INS-002")
async def test_an_instrument_is_registered_once_with_its_first_calibration(stub) -> None:
    instrument_id = ref("INS")
    first = await register(stub, instrument_id)

    again = await register(stub, instrument_id)
    other = await refused(register(stub, instrument_id, location="another lab"))
    found = await stub.GetInstrument(pb.GetInstrumentRequest(instrument_id=instrument_id))

    assert again == first
    assert (first.status, first.type, first.registered_by) == (
        pb.INSTRUMENT_STATUS_ACTIVE, "HPLC", "qc.lead")
    assert first.calibration_due == (today() + timedelta(days=335)).isoformat()
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    assert found.instrument == first
    assert [(c.calibrated_on, c.certificate_ref) for c in found.calibrations] == [
        ((today() - timedelta(days=30)).isoformat(), "CAL-0001")]


@pytest.mark.req("INS-002")
async def test_calibrations_are_kept_and_the_latest_sets_the_due_date(stub) -> None:
    instrument_id = await new_instrument(stub, calibrated_on=today() - timedelta(days=300),
                                         due=today() + timedelta(days=65))
    calibration = pb.RecordCalibrationRequest(
        instrument_id=instrument_id, calibrated_on=today().isoformat(),
        calibration_due=(today() + timedelta(days=365)).isoformat(),
        certificate_ref="CAL-0002", requested_by="qc.lead")

    updated = (await stub.RecordCalibration(calibration)).instrument
    await stub.RecordCalibration(calibration)  # a retry: recorded once
    history = (await stub.GetInstrument(pb.GetInstrumentRequest(
        instrument_id=instrument_id))).calibrations

    assert updated.calibration_due == (today() + timedelta(days=365)).isoformat()
    assert [c.certificate_ref for c in history] == ["CAL-0001", "CAL-0002"]
    assert history[1].recorded_by == "qc.lead"


@pytest.mark.req("INS-002", "DAT-001")
async def test_impossible_calibration_dates_are_refused(stub) -> None:
    error = await refused(register(stub, ref("INS"), calibrated_on=today() + timedelta(days=1),
                                   due=today()))
    malformed = await refused(stub.RecordCalibration(pb.RecordCalibrationRequest(
        instrument_id=HPLC, calibrated_on="2026-13-01", calibration_due="soon",
        requested_by="qc.lead")))

    assert set(field_violations(error)) == {"calibrated_on", "calibration_due"}
    assert set(field_violations(malformed)) == {"calibrated_on", "calibration_due",
                                                "certificate_ref"}


@pytest.mark.req("INS-001")
async def test_a_retired_instrument_stays_retired(stub) -> None:
    instrument_id = await new_instrument(stub)

    def status(value: int, reason: str) -> Any:
        return stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
            instrument_id=instrument_id, status=value, reason=reason, requested_by="qc.lead"))

    out = (await status(pb.INSTRUMENT_STATUS_OUT_OF_SERVICE, "lamp failure")).instrument
    back = (await status(pb.INSTRUMENT_STATUS_ACTIVE, "lamp replaced")).instrument
    retired = (await status(pb.INSTRUMENT_STATUS_RETIRED, "end of life")).instrument
    error = await refused(status(pb.INSTRUMENT_STATUS_ACTIVE, "oops"))

    assert (out.status, out.status_reason) == (pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
                                               "lamp failure")
    assert back.status == pb.INSTRUMENT_STATUS_ACTIVE
    assert retired.status == pb.INSTRUMENT_STATUS_RETIRED
    assert error.code() == FAILED
    assert "RETIRED" in error.details()


@pytest.mark.req("INS-001")
async def test_an_unregistered_instrument_is_not_found(stub) -> None:
    error = await refused(stub.GetInstrument(pb.GetInstrumentRequest(instrument_id=ref("INS"))))

    assert (error.code(), set(field_violations(error))) == (grpc.StatusCode.NOT_FOUND,
                                                             {"instrument_id"})


# Posting: which instrument may post


@pytest.mark.req("INS-001")
async def test_only_a_registered_active_calibrated_instrument_may_post(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    unregistered = ref("INS")
    out_of_service = await new_instrument(stub)
    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=out_of_service, status=pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
        reason="leak", requested_by="qc.lead"))
    lapsed = await new_instrument(stub, calibrated_on=today() - timedelta(days=400),
                                  due=today() - timedelta(days=35))

    errors = [await refused(post(stub, purity(lot_id, 99.0, instrument=i)))
              for i in (unregistered, out_of_service, lapsed)]

    assert [e.code() for e in errors] == [FAILED] * 3
    assert [precondition(e)[0] for e in errors] == ["INSTRUMENT"] * 3
    assert f"instrument {unregistered} is not registered" in errors[0].details()
    assert "OUT_OF_SERVICE" in errors[1].details()
    assert "was not within calibration" in errors[2].details()
    assert (today() - timedelta(days=35)).isoformat() in errors[2].details()
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("INS-001", "INS-002")
async def test_an_instrument_calibrated_again_may_post_again(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    lapsed = await new_instrument(stub, calibrated_on=today() - timedelta(days=400),
                                  due=today() - timedelta(days=35))
    await refused(post(stub, purity(lot_id, 99.0, instrument=lapsed)))

    await stub.RecordCalibration(pb.RecordCalibrationRequest(
        instrument_id=lapsed, calibrated_on=today().isoformat(),
        calibration_due=(today() + timedelta(days=30)).isoformat(),
        certificate_ref="CAL-0002", requested_by="qc.lead"))

    assert (await post(stub, purity(lot_id, 99.0, instrument=lapsed))).verdict == (
        pb.VERDICT_PASS)


@pytest.mark.req("INS-003")
async def test_an_instrument_may_post_only_as_itself(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(post(stub, purity(lot_id, 99.0, instrument=HPLC),
                               metadata=(("x-lotgate-instrument", "HPLC-99"),)))
    batch = await refused(stub.RecordResults(
        pb.RecordResultsRequest(results=[purity(lot_id, 99.0, instrument=HPLC)]),
        metadata=(("x-lotgate-instrument", "HPLC-99"),)))
    itself = await post(stub, purity(lot_id, 99.0, instrument=HPLC),
                        metadata=(("x-lotgate-instrument", HPLC),))

    assert error.code() == batch.code() == grpc.StatusCode.PERMISSION_DENIED
    assert itself.instrument_id == HPLC
    assert len(await list_results(stub, lot_id)) == 1
