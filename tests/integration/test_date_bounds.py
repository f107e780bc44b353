"""Absurd dates are refused over real gRPC, a real database and a real nats-server: each is
INVALID_ARGUMENT naming its field, and nothing is written (README, "Dates").

The suppliers, lots and results services share one ManualClock, so that a retried
receipt can be sent on a later day.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.results.v1 import results_pb2_grpc as rpb_grpc
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from shared.clock import ManualClock
from shared.dates import years_after
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from tests.integration.test_lots import System, running_system
from tests.support import auth
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
QA = dict(reason="re-tested, see QC-7", requested_by="qa.jane")


@dataclass
class Dates:
    system: System
    results: rpb_grpc.ResultServiceStub
    clock: ManualClock

    def day(self, days: int = 0) -> str:
        return (self.clock.now().date() + timedelta(days=days)).isoformat()

    def years(self, years: int, days: int = 0) -> str:
        return (years_after(self.clock.now().date(), years) + timedelta(days=days)).isoformat()

    def when(self, value: Any) -> str:
        """A day in a parametrized case: as written, `days` from today, or (years, days)."""
        if isinstance(value, int):
            return self.day(value)
        if isinstance(value, tuple):
            return self.years(*value)
        return value


@pytest.fixture(scope="module")
async def dates(databases, nats_server) -> AsyncIterator[Dates]:
    clock = ManualClock()
    async with running_system(databases, nats_server, clock=clock) as system:
        results: RunningService = await start_in_process(
            "results", databases=databases, nats=nats_server, clock=clock)
        try:
            async with auth.channel(results.address) as channel:
                yield Dates(system, rpb_grpc.ResultServiceStub(channel), clock)
        finally:
            await results.stop()


async def refused(call: Awaitable[Any], code: grpc.StatusCode = INVALID) -> dict[str, str]:
    """The field violations of a call that must fail with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return field_violations(caught.value)


async def not_found(call: Awaitable[Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# Lots


@pytest.mark.req("DAT-001", "DAT-002")
@pytest.mark.parametrize(("dates_", "field", "says"), [
    ({"retest_date": "0001-01-01"}, "retest_date", "must not lie before 2000-01-01"),
    ({"expiry_date": "0001-01-01"}, "expiry_date", "must not lie before 2000-01-01"),
    ({"expiry_date": "9999-12-31"}, "expiry_date", "must not lie more than 10 years ahead"),
    ({"expiry_date": (10, 1)}, "expiry_date", "must not lie more than 10 years ahead"),
    ({"expiry_date": -1}, "expiry_date", "a lot at or past its expiry date is not received"),
    ({"expiry_date": 0}, "expiry_date", "a lot at or past its expiry date is not received"),
    ({"retest_date": 0}, "retest_date", "must lie after today"),
])
async def test_a_receipt_with_an_absurd_date_is_refused_and_not_stored(
        dates: Dates, dates_: dict[str, Any], field: str, says: str) -> None:
    supplier_id, lot_id = ref("SUP"), ref("LOT")
    request = {k: dates.when(v) for k, v in dates_.items()}

    violations = await refused(dates.system.receive(supplier_id, "MAT-A", lot_id=lot_id,
                                                    **request))

    assert list(violations) == [field]
    assert says in violations[field]
    await not_found(dates.system.lots.GetLot(pb.GetLotRequest(lot_id=lot_id)))
    assert await dates.system.lots_where(supplier_id=supplier_id) == []


@pytest.mark.req("DAT-002")
async def test_expiry_and_retest_dates_at_their_bounds_are_received(dates: Dates) -> None:
    latest = dates.years(10)
    lot = await dates.system.receive(ref("SUP"), "MAT-A", expiry_date=latest,
                                     retest_date=latest)
    soonest = await dates.system.receive(ref("SUP"), "MAT-A", expiry_date=dates.day(1),
                                         retest_date=dates.day(1))

    assert (lot.expiry_date, lot.retest_date) == (latest, latest)
    assert soonest.release_status.status == pb.LOT_STATUS_QUARANTINE


@pytest.mark.req("DAT-002")
@pytest.mark.parametrize(("retest", "expiry"), [(0, 30), (-1, 30), (31, 30)])
async def test_receipt_and_set_retest_date_hold_a_retest_date_to_the_same_rule(
        dates: Dates, retest: int, expiry: int) -> None:
    supplier_id = ref("SUP")
    on_receipt = await refused(dates.system.receive(
        supplier_id, "MAT-A", expiry_date=dates.day(expiry), retest_date=dates.day(retest)))
    lot = await dates.system.receive(supplier_id, "MAT-A", expiry_date=dates.day(expiry))
    before = await dates.system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot.lot_id))

    set_later = await refused(dates.system.lots.SetRetestDate(pb.SetRetestDateRequest(
        lot_id=lot.lot_id, retest_date=dates.day(retest), **QA)))

    assert on_receipt == set_later
    assert list(set_later) == ["retest_date"]
    after = await dates.system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot.lot_id))
    assert after == before
    assert (await dates.system.lots.GetLot(pb.GetLotRequest(lot_id=lot.lot_id))
            ).lot.retest_date == ""


@pytest.mark.req("DAT-002")
async def test_both_accept_a_retest_date_from_tomorrow_to_the_expiry_date(dates: Dates) -> None:
    for retest in (dates.day(1), dates.day(30)):
        lot = await dates.system.receive(ref("SUP"), "MAT-A", expiry_date=dates.day(30),
                                         retest_date=retest)
        status = (await dates.system.lots.SetRetestDate(pb.SetRetestDateRequest(
            lot_id=lot.lot_id, retest_date=retest, **QA))).release_status
        assert lot.retest_date == retest
        assert status.status == pb.LOT_STATUS_QUARANTINE


@pytest.mark.req("DAT-002")
async def test_a_retried_receipt_keeps_its_answer_on_a_later_day(dates: Dates) -> None:
    """Day-relative bounds are checked only for a lot not received yet: a warehouse
    system that retries an accepted receipt days later must not be told it is invalid."""
    request = pb.ReceiveLotRequest(
        lot_id=ref("LOT"), material_code="MAT-A", supplier_id=ref("SUP"),
        supplier_site_id="MAIN", supplier_lot_number="S-1",
        quantity=pb.Quantity(value=25.0, unit="kg"), container_count=4,
        expiry_date=dates.day(2), retest_date=dates.day(1), requested_by="wms")
    first = (await dates.system.lots.ReceiveLot(request)).lot

    dates.clock.advance(timedelta(days=3))  # retest date and expiry date both passed
    again = (await dates.system.lots.ReceiveLot(request)).lot

    # The same lot as received (its status is the one of today, which time may have moved).
    first.ClearField("release_status")
    again.ClearField("release_status")
    assert again == first
    assert again.received_at.ToDatetime(tzinfo=UTC) < dates.clock.now() - timedelta(days=2)


# Suppliers: audits and the approvals they support


async def _site(dates: Dates) -> str:
    supplier_id = ref("SUP")
    await dates.system.add_site(supplier_id)
    return supplier_id


def _audit(supplier_id: str, **kw: str) -> spb.RecordAuditRequest:
    values = dict(audit_id=ref("AUD"), supplier_id=supplier_id, site_id="MAIN",
                  type=spb.AUDIT_TYPE_ON_SITE, auditor="auditor.max",
                  outcome=spb.AUDIT_OUTCOME_APPROVED, summary="GMP audit",
                  requested_by="qa.jane")
    values.update(kw)
    return spb.RecordAuditRequest(**values)


@pytest.mark.req("DAT-001")
@pytest.mark.parametrize(("audit_date", "next_due", "field", "says"), [
    (0, "9999-12-31", "next_audit_due", "must lie at most 5 years after audit_date"),
    (-30, (5, 1), "next_audit_due", "must lie at most 5 years after audit_date"),
    ("0001-01-01", (1, 0), "audit_date", "must not lie before 2000-01-01"),
    (0, "0001-01-01", "next_audit_due", "must not lie before 2000-01-01"),
])
async def test_an_audit_with_an_absurd_date_is_refused_and_not_recorded(
        dates: Dates, audit_date: Any, next_due: Any, field: str, says: str) -> None:
    supplier_id = await _site(dates)
    audit_day, due = dates.when(audit_date), dates.when(next_due)

    violations = await refused(dates.system.suppliers.RecordAudit(
        _audit(supplier_id, audit_date=audit_day, next_audit_due=due)))

    assert list(violations) == [field]
    assert says in violations[field]
    audits = await dates.system.suppliers.ListAudits(spb.ListAuditsRequest(
        supplier_id=supplier_id))
    assert list(audits.audits) == []


@pytest.mark.req("SUP-004", "DAT-003")
async def test_a_qualification_cannot_run_past_the_audit_cycle(dates: Dates) -> None:
    supplier_id = await _site(dates)
    longest = dates.years(5)
    audit = (await dates.system.suppliers.RecordAudit(_audit(
        supplier_id, audit_date=dates.day(), next_audit_due=longest))).audit
    key = dict(supplier_id=supplier_id, site_id="MAIN", material_code=ref("MAT"))
    await dates.system.suppliers.OpenQualification(spb.OpenQualificationRequest(
        reason="new source", requested_by="qa.jane", **key))
    evidence = spb.Evidence(audit_id=audit.audit_id, quality_agreement_ref="QAG-1")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await dates.system.suppliers.QualifySupplier(spb.QualifySupplierRequest(
            valid_until=to_timestamp(datetime(9999, 12, 31, tzinfo=UTC)), reason="audit passed",
            requested_by="qa.jane", evidence=evidence, **key))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"due {longest}" in caught.value.details()
    current = (await dates.system.suppliers.GetQualification(spb.GetQualificationRequest(
        **key))).qualification
    assert current.status == spb.QUALIFICATION_STATUS_PENDING
    qualified = (await dates.system.suppliers.QualifySupplier(spb.QualifySupplierRequest(
        valid_until=to_timestamp(datetime.fromisoformat(f"{longest}T00:00:00+00:00")),
        reason="audit passed", requested_by="qa.jane", evidence=evidence, **key))
    ).qualification
    assert qualified.status == spb.QUALIFICATION_STATUS_QUALIFIED


# Results: calibrations and specifications


def _calibration(instrument_id: str, on: str, due: str) -> dict[str, str]:
    return dict(instrument_id=instrument_id, calibrated_on=on, calibration_due=due,
                certificate_ref="CAL-9", requested_by="qc.lead")


@pytest.mark.req("DAT-001")
@pytest.mark.parametrize(("on", "due", "field", "says"), [
    ("0001-01-01", "9999-12-31", "calibrated_on", "must not lie before 2000-01-01"),
    (-30, "9999-12-31", "calibration_due", "must lie at most 5 years after calibrated_on"),
    (-30, (5, 0), "calibration_due", "must lie at most 5 years after calibrated_on"),
    (-30, "0001-01-01", "calibration_due", "must not lie before 2000-01-01"),
])
async def test_a_calibration_with_an_absurd_date_is_refused_and_not_stored(
        dates: Dates, on: Any, due: Any, field: str, says: str) -> None:
    on_day, due_day = dates.when(on), dates.when(due)
    instrument_id = ref("INS")

    registered = await refused(dates.results.RegisterInstrument(rpb.RegisterInstrumentRequest(
        type="HPLC", location="QC lab 2", **_calibration(instrument_id, on_day,
                                                          due_day))))
    await not_found(dates.results.GetInstrument(rpb.GetInstrumentRequest(
        instrument_id=instrument_id)))
    await dates.results.RegisterInstrument(rpb.RegisterInstrumentRequest(
        type="HPLC", location="QC lab 2",
        **_calibration(instrument_id, dates.day(-30), dates.day(300))))
    recalibrated = await refused(dates.results.RecordCalibration(rpb.RecordCalibrationRequest(
        **_calibration(instrument_id, on_day, due_day))))

    assert list(registered) == list(recalibrated) == [field]
    assert says in registered[field]
    found = await dates.results.GetInstrument(rpb.GetInstrumentRequest(
        instrument_id=instrument_id))
    assert [c.calibration_due for c in found.calibrations] == [dates.day(300)]
    assert found.instrument.calibration_due == dates.day(300)


@pytest.mark.req("DAT-003")
async def test_a_calibration_of_five_years_is_taken(dates: Dates) -> None:
    on, due = dates.years(-1), dates.years(4)

    instrument = (await dates.results.RegisterInstrument(rpb.RegisterInstrumentRequest(
        type="HPLC", location="QC lab 2", **_calibration(ref("INS"), on, due)))
    ).instrument

    assert instrument.calibration_due == due


@pytest.mark.req("DAT-003")
async def test_a_specification_takes_effect_at_most_a_year_ahead(dates: Dates) -> None:
    material = ref("MAT")
    draft = (await dates.results.CreateSpecificationDraft(rpb.CreateSpecificationDraftRequest(
        material_code=material, change_reason="CC-2026-9", requested_by="qa.author",
        tests=[rpb.TestCriterion(test=rpb.TEST_KIND_IDENTITY, method="FTIR",
                                 identity=rpb.IdentityCriterion(reference="RS-7")),
               rpb.TestCriterion(test=rpb.TEST_KIND_PURITY, method="HPLC",
                                 range=rpb.RangeCriterion(lower=rpb.Bound(value=98.0),
                                                          unit="%")),
               rpb.TestCriterion(test=rpb.TEST_KIND_STERILITY, method="Ph. Eur. 2.6.1",
                                 sterility=rpb.SterilityCriterion(method="filtration"))])
    )).specification
    now = dates.clock.now()

    def approval(at: datetime) -> rpb.ApproveSpecificationRequest:
        return rpb.ApproveSpecificationRequest(material_code=material, version=draft.version,
                                               approved_by="qa.lead",
                                               effective_from=to_timestamp(at))

    far = await refused(dates.results.ApproveSpecification(
        approval(datetime(9999, 12, 31, tzinfo=UTC))))
    just_over = await refused(dates.results.ApproveSpecification(
        approval(years_after(now, 1) + timedelta(seconds=1))))

    assert list(far) == list(just_over) == ["effective_from"]
    assert "at most 1 year ahead" in far["effective_from"]
    spec = (await dates.results.GetSpecification(rpb.GetSpecificationRequest(
        material_code=material, version=draft.version))).specification
    assert spec.status == rpb.SPECIFICATION_STATUS_DRAFT
    approved = (await dates.results.ApproveSpecification(
        approval(now + timedelta(days=300)))).specification
    assert approved.status == rpb.SPECIFICATION_STATUS_EFFECTIVE


@pytest.mark.req("DAT-001")
async def test_a_result_measured_before_the_epoch_is_refused(dates: Dates) -> None:
    instrument_id = ref("INS")
    await dates.results.RegisterInstrument(rpb.RegisterInstrumentRequest(
        type="HPLC", location="QC lab 2",
        **_calibration(instrument_id, dates.day(-30), dates.day(300))))
    post = rpb.RecordResultRequest(
        lot_id=ref("LOT"), test=rpb.TEST_KIND_PURITY, instrument_id=instrument_id,
        instrument_result_id=ref("RES"), quantity=rpb.Quantity(value=99.5, unit="%"),
        measured_at=to_timestamp(datetime(1, 1, 1, tzinfo=UTC)))

    violations = await refused(dates.results.RecordResult(post))
    batch = await refused(dates.results.RecordResults(rpb.RecordResultsRequest(
        results=[post])))

    assert violations == {"measured_at": "must not lie before 2000-01-01"}
    assert batch == {"results[0].measured_at": "must not lie before 2000-01-01"}
