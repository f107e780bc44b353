"""A Python client for the three services, as a warehouse, an instrument or QA uses them.

The demo, the end-to-end tests and the benchmark drive Lotgate through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import TracebackType

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc
from lotgate.results.v1 import results_pb2, results_pb2_grpc
from lotgate.suppliers.v1 import suppliers_pb2, suppliers_pb2_grpc
from lotgate_tools import autosign
from lotgate_tools.tokens import ActingTokens, TokenSource, bearer_interceptors, channel
from shared.protoconv import to_timestamp

# Worth retrying with the same request: the service was briefly unreachable,
# or the lot was received a moment ago and the results service has not heard yet.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}


class ConditionNotMet(TimeoutError):
    """A wait ended without its condition: `last` is what was seen last."""

    def __init__(self, message: str, *, last: object) -> None:
        super().__init__(message)
        self.last = last


def _describe(status: lots_pb2.ReleaseStatus) -> str:
    name = lots_pb2.LotStatus.Name(status.status).removeprefix("LOT_STATUS_")
    return f"{name} {[u.code for u in status.unmet]} (version {status.version})"


# The site the demo, the e2e tests and the benchmark use when they need just one.
DEFAULT_SITE = "MAIN"


def _channel(address: str, tokens: TokenSource | None) -> grpc.aio.Channel:
    """A channel sending `tokens`; with ActingTokens (local tools playing QA) signed calls
    are signed too, with a secret derived from the local key (lotgate_tools.autosign.AutoSign)."""
    if not isinstance(tokens, ActingTokens):
        return channel(address, tokens)
    seed = tokens.keys.private.private_bytes_raw()
    signer = autosign.AutoSign(address, tokens, autosign.local_secret(seed))
    return grpc.aio.insecure_channel(address,
                                     interceptors=[signer, *bearer_interceptors(tokens)])


@dataclass
class Lotgate:
    suppliers: suppliers_pb2_grpc.SupplierServiceStub
    lots: lots_pb2_grpc.LotServiceStub
    results: results_pb2_grpc.ResultServiceStub
    _channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, addresses: dict[str, str], tokens: TokenSource | None = None) -> Lotgate:
        """Channels to the services; `tokens` gives each call its bearer token (for
        example `static_token(...)`, or `ActingTokens(keys)` for the demo and the tests,
        which play the warehouse, the instruments and QA at once)."""
        channels = {name: _channel(address, tokens) for name, address in addresses.items()}
        return cls(suppliers_pb2_grpc.SupplierServiceStub(channels["suppliers"]),
                   lots_pb2_grpc.LotServiceStub(channels["lots"]),
                   results_pb2_grpc.ResultServiceStub(channels["results"]),
                   list(channels.values()))

    async def __aenter__(self) -> Lotgate:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))

    # QA
    async def qualify(self, supplier_id: str, name: str, material: str, valid_until: datetime,
                      *, site: str = DEFAULT_SITE, by: str = "qa.demo"
                      ) -> suppliers_pb2.Qualification:
        """Register the supplier and site, record an approving audit, open and qualify.

        Each step is idempotent, so calling this again renews the qualification.
        """
        await self.suppliers.CreateSupplier(suppliers_pb2.CreateSupplierRequest(
            supplier_id=supplier_id, name=name, requested_by=by))
        await self.suppliers.AddSite(suppliers_pb2.AddSiteRequest(
            supplier_id=supplier_id, site_id=site, name=f"{name}, {site}",
            address="1 Industry Road", country="CH", requested_by=by))
        audit_id = f"AUD-{supplier_id}-{site}-{valid_until.date().isoformat()}"
        await self.suppliers.RecordAudit(suppliers_pb2.RecordAuditRequest(
            audit_id=audit_id, supplier_id=supplier_id, site_id=site,
            type=suppliers_pb2.AUDIT_TYPE_ON_SITE, audit_date=date.today().isoformat(),
            auditor="auditor.demo", outcome=suppliers_pb2.AUDIT_OUTCOME_APPROVED,
            next_audit_due=(valid_until.date() + timedelta(days=1)).isoformat(),
            summary="GMP audit of the site; no findings", requested_by=by))
        key = {"supplier_id": supplier_id, "site_id": site, "material_code": material}
        try:
            current = (await self.suppliers.GetQualification(
                suppliers_pb2.GetQualificationRequest(**key))).qualification.status
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            current = suppliers_pb2.QUALIFICATION_STATUS_UNSPECIFIED
        if current in (suppliers_pb2.QUALIFICATION_STATUS_UNSPECIFIED,
                       suppliers_pb2.QUALIFICATION_STATUS_DISQUALIFIED):
            await self.suppliers.OpenQualification(suppliers_pb2.OpenQualificationRequest(
                reason="new supplier for this material", requested_by=by, **key))
        reply = await self.suppliers.QualifySupplier(suppliers_pb2.QualifySupplierRequest(
            valid_until=to_timestamp(valid_until),
            reason="supplier audit passed; quality agreement signed", requested_by=by,
            evidence=suppliers_pb2.Evidence(audit_id=audit_id,
                                            quality_agreement_ref=f"QAG-{supplier_id}"),
            **key))
        return reply.qualification

    async def specify(self, material: str, *, lower: float = 98.0, upper: float = 102.0,
                      unit: str = "%", decimals: int = 1, by: str = "qa.demo",
                      approver: str = "qa.lead") -> results_pb2.Specification:
        """A new specification version: identity against a reference spectrum, purity
        within [lower, upper] `unit` (inclusive, judged on `decimals` decimals), sterility;
        written by `by`, approved by `approver` (four eyes), effective now."""
        tests = [
            results_pb2.TestCriterion(
                test=results_pb2.TEST_KIND_IDENTITY, method="FTIR, Ph. Eur. 2.2.24",
                identity=results_pb2.IdentityCriterion(
                    reference=f"FTIR reference spectrum {material}")),
            results_pb2.TestCriterion(
                test=results_pb2.TEST_KIND_PURITY, method="HPLC, Ph. Eur. 2.2.29",
                range=results_pb2.RangeCriterion(
                    lower=results_pb2.Bound(value=lower), upper=results_pb2.Bound(value=upper),
                    unit=unit, decimals=decimals)),
            results_pb2.TestCriterion(
                test=results_pb2.TEST_KIND_STERILITY, method="Ph. Eur. 2.6.1",
                sterility=results_pb2.SterilityCriterion(
                    method="Ph. Eur. 2.6.1 membrane filtration")),
        ]
        reason = "specification set by QA"
        try:
            draft = (await self.results.CreateSpecificationDraft(
                results_pb2.CreateSpecificationDraftRequest(
                    material_code=material, tests=tests, change_reason=reason,
                    requested_by=by))).specification
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # A draft left open (by an earlier run that stopped half-way): finish that one.
            versions = (await self.results.ListSpecificationVersions(
                results_pb2.ListSpecificationVersionsRequest(material_code=material)
            )).specifications
            drafts = [s for s in versions
                      if s.status == results_pb2.SPECIFICATION_STATUS_DRAFT]
            if not drafts:
                raise
            draft = (await self.results.UpdateSpecificationDraft(
                results_pb2.UpdateSpecificationDraftRequest(
                    material_code=material, version=drafts[-1].version, tests=tests,
                    change_reason=reason, requested_by=by))).specification
        reply = await self.results.ApproveSpecification(results_pb2.ApproveSpecificationRequest(
            material_code=material, version=draft.version, approved_by=approver))
        return reply.specification

    async def register_instrument(self, instrument_id: str, *, type: str = "HPLC",
                                  location: str = "QC laboratory", by: str = "qa.demo"
                                  ) -> results_pb2.Instrument:
        """Make sure an instrument may post today: register it (calibrated 30 days ago,
        due in 335 days) unless it is registered, and calibrate it again when its
        calibration has lapsed. Safe to call any number of times."""
        today = datetime.now(UTC).date()
        ask = results_pb2.GetInstrumentRequest(instrument_id=instrument_id)
        try:
            instrument = (await self.results.GetInstrument(ask)).instrument
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            try:
                return (await self.results.RegisterInstrument(
                    results_pb2.RegisterInstrumentRequest(
                        instrument_id=instrument_id, type=type, location=location,
                        calibrated_on=(today - timedelta(days=30)).isoformat(),
                        calibration_due=(today + timedelta(days=335)).isoformat(),
                        certificate_ref=f"CAL-{instrument_id}-{today.isoformat()}",
                        requested_by=by))).instrument
            except grpc.aio.AioRpcError as lost:
                # Registered by a concurrent call: use that one.
                if lost.code() not in (grpc.StatusCode.ALREADY_EXISTS,
                                       grpc.StatusCode.ABORTED):
                    raise
                instrument = (await self.results.GetInstrument(ask)).instrument
        if date.fromisoformat(instrument.calibration_due) < today:
            instrument = (await self.results.RecordCalibration(
                results_pb2.RecordCalibrationRequest(
                    instrument_id=instrument_id, calibrated_on=today.isoformat(),
                    calibration_due=(today + timedelta(days=365)).isoformat(),
                    certificate_ref=f"CAL-{instrument_id}-{today.isoformat()}",
                    requested_by=by))).instrument
        return instrument

    # Warehouse
    async def receive(self, lot_id: str, material: str, supplier_id: str, *,
                      site: str = DEFAULT_SITE, expiry_date: str = "",
                      containers: int = 4, retest_date: str = "") -> lots_pb2.Lot:
        """Receive a lot; its expiry date is by default the last day of the year three
        years ahead: within the 10 years a lot may expire in, and the same all year, so
        that a retry sends the same receipt."""
        expiry_date = expiry_date or date(date.today().year + 3, 12, 31).isoformat()
        reply = await self.lots.ReceiveLot(lots_pb2.ReceiveLotRequest(
            lot_id=lot_id, material_code=material, supplier_id=supplier_id,
            supplier_site_id=site,
            supplier_lot_number=f"S-{lot_id}", quantity=lots_pb2.Quantity(value=25.0, unit="kg"),
            container_count=containers, expiry_date=expiry_date, requested_by="wms",
            retest_date=retest_date))
        return reply.lot

    async def status(self, lot_id: str) -> lots_pb2.ReleaseStatus:
        reply = await self.lots.GetReleaseStatus(lots_pb2.GetReleaseStatusRequest(lot_id=lot_id))
        return reply.release_status

    async def wait_until(self, lot_id: str, check: Callable[[lots_pb2.ReleaseStatus], bool], *,
                         within: float = 10.0) -> lots_pb2.ReleaseStatus:
        """Poll the lot's status until `check` holds; that status.

        Raises ConditionNotMet (with the last status seen) when `within` seconds pass first:
        a caller that goes on with a status it did not wait for would act on the wrong one.
        """
        deadline = time.monotonic() + within
        while True:
            current = await self.status(lot_id)
            if check(current):
                return current
            if time.monotonic() > deadline:
                raise ConditionNotMet(
                    f"lot {lot_id}: the awaited status did not come within {within}s; last "
                    f"status {_describe(current)}", last=current)
            await asyncio.sleep(0.01)

    async def wait_for_reviews(self, supplier_id: str, *, count: int,
                               within: float = 10.0) -> list[lots_pb2.LotReview]:
        """The open lot reviews of a supplier, once there are at least `count`.

        Raises ConditionNotMet (with the reviews open then) when `within` seconds pass first.
        """
        deadline = time.monotonic() + within
        while True:
            reply = await self.lots.ListLotReviews(lots_pb2.ListLotReviewsRequest(
                supplier_id=supplier_id, state=lots_pb2.REVIEW_STATE_OPEN))
            if len(reply.reviews) >= count:
                return list(reply.reviews)
            if time.monotonic() > deadline:
                raise ConditionNotMet(
                    f"supplier {supplier_id}: {len(reply.reviews)} open lot review(s) after "
                    f"{within}s, not {count}: {[r.lot_id for r in reply.reviews]}",
                    last=list(reply.reviews))
            await asyncio.sleep(0.02)

    # Instrument
    async def post(self, request: results_pb2.RecordResultRequest, *,
                   within: float = 10.0) -> results_pb2.Result:
        """Post a result, retrying the same request while the answer may still change.

        A retry must send the very same request (its measured_at included): build it once.
        """
        deadline = time.monotonic() + within
        delay = 0.02
        while True:
            try:
                return (await self.results.RecordResult(request, timeout=5.0)).result
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRYABLE or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


# The builders: `key` is the instrument's own id for the result (instrument_result_id);
# measured_at is now unless given. The instrument must be registered (register_instrument).

def _measured(at: datetime | None) -> Timestamp | None:
    return to_timestamp(at or datetime.now(UTC))


def identity(lot_id: str, instrument: str, key: str, *, match: bool = True,
             retest_of: str = "", measured_at: datetime | None = None
             ) -> results_pb2.RecordResultRequest:
    return results_pb2.RecordResultRequest(
        lot_id=lot_id, test=results_pb2.TEST_KIND_IDENTITY, instrument_id=instrument,
        instrument_result_id=key, measured_at=_measured(measured_at), retest_of=retest_of,
        identity=(results_pb2.IDENTITY_OUTCOME_MATCH if match
                  else results_pb2.IDENTITY_OUTCOME_NO_MATCH))


def purity(lot_id: str, instrument: str, key: str, value: float, unit: str = "%", *,
           retest_of: str = "", measured_at: datetime | None = None
           ) -> results_pb2.RecordResultRequest:
    return results_pb2.RecordResultRequest(
        lot_id=lot_id, test=results_pb2.TEST_KIND_PURITY, instrument_id=instrument,
        instrument_result_id=key, measured_at=_measured(measured_at), retest_of=retest_of,
        quantity=results_pb2.Quantity(value=value, unit=unit))


def sterility(lot_id: str, instrument: str, key: str, *, growth: bool = False,
              retest_of: str = "", measured_at: datetime | None = None
              ) -> results_pb2.RecordResultRequest:
    return results_pb2.RecordResultRequest(
        lot_id=lot_id, test=results_pb2.TEST_KIND_STERILITY, instrument_id=instrument,
        instrument_result_id=key, measured_at=_measured(measured_at), retest_of=retest_of,
        sterility=(results_pb2.STERILITY_OUTCOME_GROWTH if growth
                   else results_pb2.STERILITY_OUTCOME_NO_GROWTH))
