"""Every RPC of the three services, called with requests generated from its descriptor.

Hypothesis builds each request field by field (tests/support/fuzzing.py): plausible
values with ids of records created here, so that calls reach the handlers and the
database, mixed with control characters, NUL, huge strings, extreme numbers, unknown
enum values, absurd dates and timestamps, huge repeated fields and random bytes. Every
answer must be a documented status (the table DOCUMENTED below); never INTERNAL, UNKNOWN,
or UNAVAILABLE and DEADLINE_EXCEEDED while every server is up. Bad input must name its
fields (google.rpc.BadRequest), trailers stay small, the process's memory stays bounded,
and every service still answers SERVING at the end.

FUZZ_EXAMPLES sets the requests per RPC (default 10, the CI run; `make fuzz` runs 300).
Without FUZZ_SEED the examples are the same on every run; FUZZ_SEED=<n> draws others,
the same ones for the same n.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import psutil
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings

from lotgate.lots.v1 import lots_pb2
from lotgate.lots.v1 import lots_pb2_grpc as lots_grpc
from lotgate.results.v1 import results_pb2
from lotgate.results.v1 import results_pb2_grpc as results_grpc
from lotgate.suppliers.v1 import suppliers_pb2
from lotgate.suppliers.v1 import suppliers_pb2_grpc as suppliers_grpc
from shared import access, esign_policy
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from tests.support import auth
from tests.support.fuzzing import FuzzRequest, Known, requests
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
SEED = os.environ.get("FUZZ_SEED")

# Bounds on waiting for an answer, so that a hung call fails the test (as
# DEADLINE_EXCEEDED) instead of hanging it; not timing assertions.
CALL_TIMEOUT_S = 60.0
# A watch that is accepted streams for ever: read its first message, then cancel. One that
# sends nothing this long (a material without lots) counts as accepted.
STREAM_READ_S = 5.0
MAX_TRAILER_BYTES = 8 * 1024
# The process (the three services and this client) may grow this much over the run, and
# by half of it in one call: a call that costs more is a way to take a service down.
MAX_RSS_GROWTH = 100 * 1024 * 1024
MAX_CALL_GROWTH = MAX_RSS_GROWTH // 2

SERVICES = {
    "suppliers": suppliers_pb2.DESCRIPTOR.services_by_name["SupplierService"],
    "lots": lots_pb2.DESCRIPTOR.services_by_name["LotService"],
    "results": results_pb2.DESCRIPTOR.services_by_name["ResultService"],
}
RPCS: dict[str, tuple[str, MethodDescriptor]] = {
    method.name: (name, method) for name, service in SERVICES.items()
    for method in service.methods}
assert len(RPCS) == sum(len(s.methods) for s in SERVICES.values()), "RPC names repeat"

Code = grpc.StatusCode
EVERY_RPC = frozenset(RPCS)
# The RPCs that change something: a concurrent change is ABORTED, a state that does
# not allow the change FAILED_PRECONDITION.
WRITES = frozenset({
    "CreateSupplier", "AddSite", "RecordAudit", "OpenQualification", "QualifySupplier",
    "SuspendQualification", "DisqualifySupplier",
    "ReceiveLot", "SetReleasePolicy", "ReleaseLot", "HoldLot", "ReleaseHold", "RejectLot",
    "SetRetestDate", "CloseLotReview",
    "CreateSpecificationDraft", "UpdateSpecificationDraft", "ApproveSpecification",
    "RegisterInstrument", "RecordCalibration", "SetInstrumentStatus", "RecordResult",
    "RecordResults", "InvalidateResult", "ConfirmResult",
})
# The RPCs keyed by the caller's id: the same id with other content is ALREADY_EXISTS.
KEYED = frozenset({"CreateSupplier", "AddSite", "RecordAudit", "ReceiveLot",
                   "RegisterInstrument", "RecordResult", "RecordResults"})

# The RPCs whose request names its actor (requested_by, approved_by) or its instrument:
# a request naming someone other than the caller is PERMISSION_DENIED (README, "Who may
# call what"). Each call's token is for the person the request names, when an identity
# provider could have issued one for that name.
ACTING = frozenset(
    rpc for rpc, (_, method) in RPCS.items()
    if set(method.input_type.fields_by_name) & set(access.ACTOR_FIELDS)
    or rpc in {name.rsplit("/", 1)[1] for name in access.INSTRUMENT_POSTS})

# The QA decisions that carry an electronic signature (README, "Electronic signatures").
SIGNED = frozenset(name.rsplit("/", 1)[1] for name in esign_policy.SIGNED_ACTIONS)

# The documented answers (README, "Errors" and the text of each RPC): status -> the RPCs
# that may answer it. Everything else (INTERNAL, UNKNOWN, and UNAVAILABLE or
# DEADLINE_EXCEEDED while every server is up) is a defect. Each call carries a token of
# the caller it is for (tests.support.auth), so UNAUTHENTICATED and PERMISSION_DENIED
# are defects here (tests/integration/test_access.py covers them), except where the
# request itself asks for them: an actor other than the caller, and, on a signed action
# (shared.esign), a wrong signing secret (UNAUTHENTICATED) and then a locked signer.
DOCUMENTED: dict[grpc.StatusCode, frozenset[str]] = {
    Code.OK: EVERY_RPC,
    Code.INVALID_ARGUMENT: EVERY_RPC,  # with a BadRequest naming the fields
    Code.NOT_FOUND: EVERY_RPC,  # an unknown id
    Code.RESOURCE_EXHAUSTED: EVERY_RPC,  # a request above the size limit
    Code.FAILED_PRECONDITION: WRITES,
    Code.ALREADY_EXISTS: KEYED,
    Code.PERMISSION_DENIED: ACTING | SIGNED,
    Code.UNAUTHENTICATED: SIGNED,
    # A concurrent change, a stale expected_version, or a watch that fell behind.
    Code.ABORTED: WRITES | {"WatchReleaseStatus"},
}


def allowed(rpc: str) -> set[grpc.StatusCode]:
    return {code for code, rpcs in DOCUMENTED.items() if rpc in rpcs}


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]

    def trailer_bytes(self) -> int:
        return sum(len(key) + len(value) for key, value in self.trailers)

    def field_violations(self) -> list[error_details_pb2.BadRequest.FieldViolation]:
        found = []
        for key, value in self.trailers:
            if key != "grpc-status-details-bin":
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    found.extend(bad.field_violations)
        return found


@dataclass
class FuzzedSystem:
    services: dict[str, RunningService]
    channels: dict[str, grpc.aio.Channel]
    known: Known
    rss_at_start: int

    @staticmethod
    def rss() -> int:
        return psutil.Process().memory_info().rss

    async def call(self, rpc: str, payload: bytes) -> Answer:
        service, method = RPCS[rpc]
        path = f"/{method.containing_service.full_name}/{method.name}"
        channel = self.channels[service]
        if method.server_streaming:
            return await _watch_briefly(channel.unary_stream(path)(payload,
                                                                   timeout=CALL_TIMEOUT_S))
        call = channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return Answer(error.code(), error.details() or "",
                          tuple(error.trailing_metadata() or ()))
        return Answer(Code.OK, "", tuple(await call.trailing_metadata() or ()))


async def _watch_briefly(call: grpc.aio.UnaryStreamCall) -> Answer:
    """An accepted watch is OK once its first message arrives, or while it stays open."""
    try:
        async with asyncio.timeout(STREAM_READ_S):
            await call.read()
    except TimeoutError:
        call.cancel()
        return Answer(Code.OK, "still streaming", ())
    except grpc.aio.AioRpcError as error:
        return Answer(error.code(), error.details() or "",
                      tuple(error.trailing_metadata() or ()))
    if not call.done():
        call.cancel()
        return Answer(Code.OK, "streaming", ())
    return Answer(await call.code(), await call.details() or "",
                  tuple(await call.trailing_metadata() or ()))


@pytest.fixture(scope="module")
async def fuzzed(databases, nats_server) -> AsyncIterator[FuzzedSystem]:
    services: dict[str, RunningService] = {}
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        for name in SERVICES:
            services[name] = await start_in_process(name, databases=databases,
                                                    nats=nats_server)
            channels[name] = auth.channel(services[name].address)
        known = await seed_records(channels)
        yield FuzzedSystem(services, channels, known, FuzzedSystem.rss())
    finally:
        for channel in channels.values():
            await channel.close()
        for service in reversed(services.values()):
            await service.stop()


async def seed_records(channels: dict[str, grpc.aio.Channel]) -> Known:
    """A qualified supplier site, a specified material, calibrated instruments, received
    lots and recorded results: their ids make plausible requests reach deep code."""
    suppliers = suppliers_grpc.SupplierServiceStub(channels["suppliers"])
    lots = lots_grpc.LotServiceStub(channels["lots"])
    results = results_grpc.ResultServiceStub(channels["results"])
    now = datetime.now(UTC)
    today = now.date()
    supplier, site, material, audit = ref("SUP"), "BASEL-1", ref("MAT"), ref("AUD")
    who = dict(requested_by="qa.jane")

    await suppliers.CreateSupplier(suppliers_pb2.CreateSupplierRequest(
        supplier_id=supplier, name="Acme Bio", **who))
    await suppliers.AddSite(suppliers_pb2.AddSiteRequest(
        supplier_id=supplier, site_id=site, name="Acme Basel", address="1 Industry Road",
        country="CH", **who))
    await suppliers.RecordAudit(suppliers_pb2.RecordAuditRequest(
        audit_id=audit, supplier_id=supplier, site_id=site,
        type=suppliers_pb2.AUDIT_TYPE_ON_SITE, audit_date=today.isoformat(),
        auditor="auditor.max", outcome=suppliers_pb2.AUDIT_OUTCOME_APPROVED,
        next_audit_due=(today + timedelta(days=400)).isoformat(), summary="no findings",
        **who))
    key = dict(supplier_id=supplier, site_id=site, material_code=material)
    await suppliers.OpenQualification(suppliers_pb2.OpenQualificationRequest(
        reason="new supplier", **key, **who))
    await suppliers.QualifySupplier(suppliers_pb2.QualifySupplierRequest(
        valid_until=to_timestamp(now + timedelta(days=365)), reason="audit passed",
        evidence=suppliers_pb2.Evidence(audit_id=audit, quality_agreement_ref="QAG-1"),
        **key, **who))

    purity = results_pb2.RangeCriterion(lower=results_pb2.Bound(value=98.0),
                                        upper=results_pb2.Bound(value=102.0), unit="%",
                                        decimals=1)
    draft = await results.CreateSpecificationDraft(results_pb2.CreateSpecificationDraftRequest(
        material_code=material, change_reason="CC-1: first specification", tests=[
            results_pb2.TestCriterion(test=results_pb2.TEST_KIND_IDENTITY, method="FTIR",
                                      identity=results_pb2.IdentityCriterion(reference="RS")),
            results_pb2.TestCriterion(test=results_pb2.TEST_KIND_PURITY, method="HPLC",
                                      range=purity),
            results_pb2.TestCriterion(test=results_pb2.TEST_KIND_STERILITY, method="2.6.1",
                                      sterility=results_pb2.SterilityCriterion(method="MF")),
        ], **who))
    await results.ApproveSpecification(results_pb2.ApproveSpecificationRequest(
        material_code=material, version=draft.specification.version, approved_by="qa.lead"))
    instruments = [ref("HPLC"), ref("FTIR"), ref("BACT")]
    for instrument in instruments:
        await results.RegisterInstrument(results_pb2.RegisterInstrumentRequest(
            instrument_id=instrument, type="HPLC", location="QC lab 2",
            calibrated_on=(today - timedelta(days=30)).isoformat(),
            calibration_due=(today + timedelta(days=300)).isoformat(),
            certificate_ref="CAL-1", requested_by="qc.lab"))

    lot_ids = [ref("LOT"), ref("LOT")]
    for lot_id in lot_ids:
        await lots.ReceiveLot(lots_pb2.ReceiveLotRequest(
            lot_id=lot_id, material_code=material, supplier_id=supplier,
            supplier_site_id=site, supplier_lot_number="A-1",
            quantity=lots_pb2.Quantity(value=25, unit="kg"), container_count=4,
            expiry_date=(today + timedelta(days=700)).isoformat(), requested_by="wms"))
    for lot_id in lot_ids:  # the results service hears of each lot by an event
        await eventually(lambda lot_id=lot_id: _known_to_results(results, lot_id),
                         lambda known: known, within=30)
    result_ids = []
    for lot_id, value in zip(lot_ids, (96.0, 99.4), strict=True):
        reply = await results.RecordResult(results_pb2.RecordResultRequest(
            lot_id=lot_id, test=results_pb2.TEST_KIND_PURITY, instrument_id=instruments[0],
            instrument_result_id=f"IR-{uuid.uuid4().hex[:8]}",
            quantity=results_pb2.Quantity(value=value, unit="%"),
            measured_at=to_timestamp(datetime.now(UTC))))
        result_ids.append(reply.result.result_id)

    return Known(ids={
        "supplier_id": [supplier], "site_id": [site], "supplier_site_id": [site],
        "material_code": [material], "audit_id": [audit], "instrument_id": instruments,
        "lot_id": lot_ids, "lot_ids": lot_ids, "result_id": result_ids,
        "retest_of": result_ids,
    }, now=datetime.now(UTC))  # after the specification took effect


async def _known_to_results(results: results_grpc.ResultServiceStub, lot_id: str) -> bool:
    try:
        await results.ListLotResults(results_pb2.ListLotResultsRequest(lot_id=lot_id))
    except grpc.aio.AioRpcError as error:
        if error.code() == Code.NOT_FOUND:
            return False
        raise
    return True


def _fuzz_settings(test):
    test = settings(
        max_examples=EXAMPLES,
        deadline=None,  # calls wait for a database; their time is not the question here
        # The same requests on every run, or those of FUZZ_SEED: never replayed ones.
        derandomize=SEED is None,
        database=None,
        print_blob=True,
        # Requests are slow (they cross a database) and some are huge on purpose.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )(test)
    return seed(int(SEED))(test) if SEED is not None else test


def check(rpc: str, request: FuzzRequest, answer: Answer, grown: int) -> None:
    said = f"{rpc}({request!r}) answered {answer.code.name}: {answer.details[:300]}"
    # One assertion per kind of defect: Hypothesis reports each kind it finds separately.
    assert answer.code not in (Code.INTERNAL, Code.UNKNOWN), f"a server error: {said}"
    assert answer.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED), (
        f"'retry later' while every server is up: {said}")
    assert answer.code in allowed(rpc), f"undocumented status: {said}"
    if answer.code == Code.INVALID_ARGUMENT:
        assert answer.field_violations(), f"INVALID_ARGUMENT without BadRequest: {said}"
    assert answer.trailer_bytes() <= MAX_TRAILER_BYTES, (
        f"trailers of {answer.trailer_bytes():,} bytes: {said}")
    # Trailers above the client's metadata limit reach it as this RESOURCE_EXHAUSTED, the
    # server's answer lost.
    assert not (answer.code == Code.RESOURCE_EXHAUSTED and "metadata size" in answer.details), (
        f"trailers too large for the client: {said}")
    assert grown < MAX_CALL_GROWTH, f"the process grew by {grown / 2**20:.0f} MiB in {said}"


@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_every_answer_is_a_documented_status(fuzzed: FuzzedSystem, rpc: str) -> None:
    loop = asyncio.get_running_loop()
    _, method = RPCS[rpc]

    @_fuzz_settings
    @given(request=requests(method.input_type, fuzzed.known))
    def one_request(request: FuzzRequest) -> None:
        # Hypothesis drives this in a worker thread; the calls run on the services' loop.
        before = FuzzedSystem.rss()
        answer = asyncio.run_coroutine_threadsafe(
            fuzzed.call(rpc, request.payload), loop).result()
        check(rpc, request, answer, FuzzedSystem.rss() - before)

    await asyncio.to_thread(one_request)


async def test_every_service_still_serves_after_the_fuzzing(fuzzed: FuzzedSystem) -> None:
    for name, channel in fuzzed.channels.items():
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    grown = FuzzedSystem.rss() - fuzzed.rss_at_start
    assert grown < MAX_RSS_GROWTH, f"the process grew by {grown / 2**20:.0f} MiB"
