"""Bad input over real gRPC, on the real database: every RPC of the three services.

A control character in any string field, a page token the service never gave out, an
absurd number, a request with 100,000 repeated entries or one over the size limit: each is
answered INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for the size) with the field named and a
small status, and changes nothing. Never UNAVAILABLE, which tells a client to retry the
same request for ever; never INTERNAL.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from nats.js import JetStreamContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2
from lotgate.results.v1.results_pb2_grpc import ResultServiceStub
from lotgate.suppliers.v1 import suppliers_pb2
from services.lots.tables import tables as lot_tables
from services.results.tables import tables as result_tables
from services.suppliers.tables import tables as supplier_tables
from shared.grpc_server import status_for
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from tests.support import auth
from tests.support.events import harness
from tests.support.grpc_errors import field_violations
from tests.support.results import new_instrument, specified_lot
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

NUL_TEXT = "A\x00B"
SERVICES = {
    "suppliers": (suppliers_pb2.DESCRIPTOR.services_by_name["SupplierService"],
                  supplier_tables),
    "lots": (lots_pb2.DESCRIPTOR.services_by_name["LotService"], lot_tables),
    "results": (results_pb2.DESCRIPTOR.services_by_name["ResultService"], result_tables),
}
# Tables written off the request path: by the relay, by the consumers of other services'
# events (which may still arrive from earlier tests on the shared broker).
# `signers`: the test channel enrols each signer it plays on first use (tests.support.auth).
PLUMBING = {"outbox", "inbox", "dead_letters", "signers"}
FED_BY_EVENTS = {"lots": {"qualifications", "lot_results"}, "results": {"known_lots"}}
# grpc's default limit for all the metadata of a response (the status rides in trailers).
MAX_METADATA = 8 * 1024


@dataclass
class Service:
    running: RunningService
    channel: grpc.aio.Channel
    descriptor: ServiceDescriptor
    tables: Any

    async def call(self, method: str, request: Message, **kw: Any) -> Any:
        """Call `method` (answers of a stream read until the first) with `request`."""
        m = self.descriptor.methods_by_name[method]
        path = f"/{self.descriptor.full_name}/{m.name}"
        reply_class = GetMessageClass(m.output_type)
        if m.server_streaming:
            stream = self.channel.unary_stream(
                path, request_serializer=lambda r: r.SerializeToString(),
                response_deserializer=reply_class.FromString)(request, **kw)
            try:
                async for reply in stream:
                    return reply
            finally:
                stream.cancel()
            return None
        return await self.channel.unary_unary(
            path, request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=reply_class.FromString)(request, **kw)

    async def row_counts(self) -> dict[str, int]:
        """Rows per table that a call writes (not those the relay and consumers keep)."""
        fed = FED_BY_EVENTS.get(self.running.name, set()) | PLUMBING
        counts = {}
        async with self.running.infra.engine.connect() as conn:
            for t in self.tables.metadata.sorted_tables:
                if t.name in fed:
                    continue
                query = select(func.count()).select_from(t)
                if t.name == "audit_trail":  # the test client enrolling its signer, once
                    query = query.where(t.c.record_type != "signer")
                counts[t.name] = (await conn.execute(query)).scalar_one()
        return counts


@pytest.fixture(scope="module")
async def services(databases, nats_server) -> AsyncIterator[dict[str, Service]]:
    started: dict[str, Service] = {}
    try:
        for name, (descriptor, tables) in SERVICES.items():
            running = await start_in_process(name, databases=databases, nats=nats_server)
            channel = auth.channel(running.address)
            started[name] = Service(running, channel, descriptor, tables)
        yield started
    finally:
        for service in started.values():
            await service.channel.close()
            await service.running.stop()


# -- requests built from the descriptors ---------------------------------------------------

def string_paths(descriptor: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """Every string field a request can carry, as the path a field violation names
    (`results[0].quantity.unit`); repeated fields through their first entry."""
    for f in descriptor.fields:
        name = f"{prefix}{f.name}{'[0]' if _repeated(f) else ''}"
        if f.type == FieldDescriptor.TYPE_STRING:
            yield name
        elif f.type == FieldDescriptor.TYPE_MESSAGE and depth < 3 and \
                not f.message_type.full_name.startswith("google.protobuf."):
            yield from string_paths(f.message_type, f"{name}.", depth + 1)


def _repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def with_value(method: MethodDescriptor, path: str, value: str) -> Message:
    """A request of `method` with only the string field at `path` set (and whatever holds it)."""
    request = GetMessageClass(method.input_type)()
    target: Any = request
    parts = path.split(".")
    for i, part in enumerate(parts):
        name = part.removesuffix("[0]")
        last = i == len(parts) - 1
        field = target.DESCRIPTOR.fields_by_name[name]
        if last:
            if _repeated(field):
                getattr(target, name).append(value)
            else:
                setattr(target, name, value)
        elif _repeated(field):
            target = getattr(target, name).add()
        else:
            target = getattr(target, name)
    return request


def every_string_field() -> Iterator[tuple[str, str, str]]:
    for service, (descriptor, _) in SERVICES.items():
        for method in descriptor.methods:
            for path in string_paths(method.input_type):
                yield service, method.name, path


def list_methods() -> Iterator[tuple[str, str]]:
    for service, (descriptor, _) in SERVICES.items():
        for method in descriptor.methods:
            if "page_token" in method.input_type.fields_by_name:
                yield service, method.name


def position_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def assert_small_status(error: grpc.aio.AioRpcError) -> None:
    trailers = sum(len(k) + len(v) for k, v in error.trailing_metadata() or ())
    assert trailers + len(error.details() or "") < MAX_METADATA // 2


# -- control characters ---------------------------------------------------------------------

FIELDS = list(every_string_field())
# Filled in by the service (from the audit record); what a request says is not read.
IGNORED = {"evidence.audit_date"}


@pytest.mark.req("INP-001")
def test_the_sweep_covers_every_rpc_of_the_three_services() -> None:
    methods = {(s, m) for s, m, _ in FIELDS}
    every = {(s, m.name) for s, (d, _) in SERVICES.items() for m in d.methods}
    assert methods == every
    assert len(FIELDS) > 100


@pytest.mark.req("INP-001")
@pytest.mark.parametrize(("service", "method", "path"), FIELDS,
                         ids=[f"{m}:{p}" for _, m, p in FIELDS])
async def test_a_nul_in_any_string_field_is_refused_with_the_field_named(
        services: dict[str, Service], service: str, method: str, path: str) -> None:
    s = services[service]
    before = await s.row_counts()
    request = with_value(s.descriptor.methods_by_name[method], path, NUL_TEXT)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await s.call(method, request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    if path not in IGNORED:
        assert path in field_violations(refused.value)
    assert await s.row_counts() == before


@pytest.mark.req("INP-001")
@pytest.mark.parametrize("text", ["ACME\n", "ACME\x1b[31m", "AC\x7fME", "AC\x85ME", "\x00"])
async def test_identifiers_and_names_hold_no_control_character(
        services: dict[str, Service], text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services["suppliers"].call("CreateSupplier", suppliers_pb2.CreateSupplierRequest(
            supplier_id=text, name=f"Acme {text}", requested_by="qa.jane"))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"supplier_id", "name"} <= set(field_violations(refused.value))


@pytest.mark.req("INP-001")
async def test_prose_may_break_lines_and_tab_but_holds_no_other_control_character(
        services: dict[str, Service]) -> None:
    suppliers = services["suppliers"]
    supplier = ref("SUP")
    await suppliers.call("CreateSupplier", suppliers_pb2.CreateSupplierRequest(
        supplier_id=supplier, name="Acme", requested_by="qa.jane"))
    site = suppliers_pb2.AddSiteRequest(
        supplier_id=supplier, site_id="MAIN", name="Acme Basel",
        address="Werkstrasse 1\n4057 Basel\tCH", country="CH", requested_by="qa.jane")

    added = await suppliers.call("AddSite", site)
    assert added.site.address == "Werkstrasse 1\n4057 Basel\tCH"

    site.site_id, site.address = "OTHER", "Werkstrasse 1\x00"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suppliers.call("AddSite", site)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused.value)) == {"address"}


# -- page tokens ------------------------------------------------------------------------------

LISTS = list(list_methods())
BAD_TOKENS = {
    "nul": "AA==",
    "garbage": "not a token!",
    "not_base64": "%%%",
    "long": "QUFB" * 1000,
    "nul_in_key": position_token("LOT\x00"),
    "newline_after_key": position_token("LOT-1\n"),
}
# Lists that page by position (a row id or a sequence number) rather than by a lot id.
BAD_POSITIONS = {
    "huge_position": position_token(f"p{2**63}"),
    "position_beyond_int64": position_token("p99999999999999999999"),
    "negative": position_token("p-1"),
    "zero": position_token("p0"),
    "plus_sign": position_token("p+5"),
}
CASES = [(s, m, name, token) for s, m in LISTS
         for name, token in [*BAD_TOKENS.items(),
                             *(BAD_POSITIONS.items() if m != "ListLots" else ())]]


@pytest.mark.req("INP-002")
def test_every_list_rpc_of_the_three_services_takes_a_page_token() -> None:
    assert {m for _, m in LISTS} >= {"ListLots", "ListLotReviews", "ListQualificationHistory",
                                     "ListInstrumentResults"}


@pytest.mark.req("INP-002")
@pytest.mark.parametrize(("service", "method", "name", "token"), CASES,
                         ids=[f"{m}:{n}" for _, m, n, _ in CASES])
async def test_a_page_token_the_service_never_gave_out_is_invalid_argument(
        services: dict[str, Service], service: str, method: str, name: str,
        token: str) -> None:
    s = services[service]
    request = GetMessageClass(s.descriptor.methods_by_name[method].input_type)()
    for name in ("supplier_id", "instrument_id"):  # the one required filter, if any
        if name in request.DESCRIPTOR.fields_by_name:
            setattr(request, name, ref("X"))
    request.page_token = token

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await s.call(method, request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "page_token" in field_violations(refused.value)


# -- numbers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def js(nats_server) -> AsyncIterator[JetStreamContext]:
    events = await harness(nats_server)
    yield events.js
    await events.close()


async def _purity_lot(services: dict[str, Service], js: JetStreamContext) -> tuple[str, str]:
    """A known lot of a material whose purity range (98-102 %) is judged on one decimal,
    and a calibrated instrument."""
    stub = ResultServiceStub(services["results"].channel)
    _, lot_id = await specified_lot(stub, js, decimals=1)
    return lot_id, await new_instrument(stub)


async def _posted(results: Service, lot_id: str, instrument: str, value: float) -> Any:
    """The answer to a purity result of `value` %, or the error."""
    try:
        return await results.call("RecordResult", results_pb2.RecordResultRequest(
            lot_id=lot_id, test=results_pb2.TEST_KIND_PURITY, instrument_id=instrument,
            instrument_result_id=ref("R"), quantity=results_pb2.Quantity(value=value, unit="%"),
            measured_at=to_timestamp(datetime.now(UTC))))
    except grpc.aio.AioRpcError as error:
        return error


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [1e30, 1e100, 1e308, 1.7976931348623157e308, -1e308,
                                   5e-324, -5e-324])
async def test_any_finite_measurement_is_judged_never_internal(
        services: dict[str, Service], js: JetStreamContext, value: float) -> None:
    lot_id, instrument = await _purity_lot(services, js)

    answer = await _posted(services["results"], lot_id, instrument, value)

    assert not isinstance(answer, grpc.aio.AioRpcError), (answer.code(), answer.details())
    assert answer.result.verdict == results_pb2.VERDICT_FAIL
    assert answer.result.quantity.value == value


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_a_measurement_that_is_not_a_number_is_refused_on_its_field(
        services: dict[str, Service], js: JetStreamContext, value: float) -> None:
    lot_id, instrument = await _purity_lot(services, js)

    answer = await _posted(services["results"], lot_id, instrument, value)

    assert isinstance(answer, grpc.aio.AioRpcError)
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "quantity.value" in field_violations(answer)


# -- sizes ---------------------------------------------------------------------------------

@pytest.mark.req("INP-002")
async def test_a_watch_with_100000_resume_entries_is_refused_with_a_small_status(
        services: dict[str, Service]) -> None:
    request = lots_pb2.WatchReleaseStatusRequest(
        lot_ids=[ref("LOT")], resume_from=[lots_pb2.LotVersion()] * 100_000)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services["lots"].call("WatchReleaseStatus", request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused.value)) == {"resume_from"}
    assert_small_status(refused.value)


@pytest.mark.req("INP-002")
async def test_a_request_with_thousands_of_problems_reports_the_first_and_counts_the_rest(
        services: dict[str, Service]) -> None:
    request = lots_pb2.GetReleaseStatusesRequest(lot_ids=[f"BAD {i}" for i in range(1000)])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services["lots"].call("GetReleaseStatuses", request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    assert "lot_ids[0]" in violations
    assert any(d.startswith("and ") and d.endswith(" more problems")
               for d in violations.values())
    assert_small_status(refused.value)


@pytest.mark.req("INP-002")
async def test_a_request_over_one_mebibyte_is_refused_before_it_is_read(
        services: dict[str, Service]) -> None:
    request = suppliers_pb2.CreateSupplierRequest(
        supplier_id=ref("SUP"), name="x" * (1024 * 1024 + 1), requested_by="qa.jane")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services["suppliers"].call("CreateSupplier", request)

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.req("INP-002")
async def test_a_long_text_is_refused_with_a_short_status(
        services: dict[str, Service]) -> None:
    request = suppliers_pb2.CreateSupplierRequest(
        supplier_id="x" * 500_000, name="y" * 400_000, requested_by="qa.jane")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services["suppliers"].call("CreateSupplier", request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused.value)) == {"supplier_id", "name"}
    assert_small_status(refused.value)


# -- the backstop: what the database itself refuses ------------------------------------------

@pytest.mark.req("INP-001")
@pytest.mark.parametrize(("sql", "value"), [
    ("SELECT CAST(:v AS TEXT)", "A\x00B"),
    ("SELECT CAST(:v AS BIGINT)", 2**64),
    ("SELECT CAST(:v AS BIGINT)", "99999999999999999999"),
])
async def test_a_value_the_database_refuses_is_the_callers_error_not_unavailable(
        services: dict[str, Service], databases, sql: str, value: Any) -> None:
    """Validation catches these first; should one slip through, the caller learns that
    the request is wrong, not that it should retry (PostgreSQL refuses all three)."""
    refused: Exception | None = None
    async with services["lots"].running.infra.engine.connect() as conn:
        try:
            await conn.execute(text(sql), {"v": value})
        except Exception as error:  # whatever the driver raises is judged
            refused = error

    if databases.kind == "postgresql":
        assert isinstance(refused, DBAPIError)
    if isinstance(refused, DBAPIError):
        assert status_for(refused, "test").code == grpc.StatusCode.INVALID_ARGUMENT
    else:  # SQLite stores the text; its driver refuses 2**64 in Python, before any query
        assert refused is None or isinstance(refused, OverflowError)


# -- every RPC with extreme values in every field at once ------------------------------------

# What a caller may be answered; never INTERNAL or UNKNOWN (a defect), never UNAVAILABLE
# while the servers and the database are up (it would make a client retry for ever).
# UNAUTHENTICATED: a signed decision with a wrong signing secret (shared.esign).
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED}
TEXTS = ["", "LOT-1", "MAT-1", "\x00", "A\x00B", "x" * 70, "y" * 5000, "Ωμέγα 株式会社",
         "\U0001f9ea", " ", "\n", "1e308", "2026-02-30", "0001-01-01", "9999-12-31", "../..",
         "'; DROP TABLE lots; --", "%", "mg/g", "CFU/mg"]
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 100_001, 999]
FLOATS = [0.0, -0.0, 1.0, 99.95, 1e30, 1e308, -1e308, 5e-324, 1.7976931348623157e308]
SECONDS = [0, -62_135_596_801, 253_402_300_800, 2**62, -(2**62), 1_800_000_000]


def extreme(descriptor: Any, rng: random.Random, depth: int = 0) -> Message:
    """A message of `descriptor` with every field set to an extreme or hostile value."""
    message = GetMessageClass(descriptor)()
    for f in descriptor.fields:
        if f.containing_oneof is not None and rng.random() < 0.5:
            continue
        count = rng.choice([1, 1, 2, 3]) if _repeated(f) else 1
        for _ in range(count):
            value = _value(f, rng, depth)
            if value is None:
                continue
            if _repeated(f):
                if f.type == FieldDescriptor.TYPE_MESSAGE:
                    getattr(message, f.name).add().CopyFrom(value)
                else:
                    getattr(message, f.name).append(value)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, f.name).CopyFrom(value)
            else:
                setattr(message, f.name, value)
    return message


def _value(f: FieldDescriptor, rng: random.Random, depth: int) -> Any:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice(TEXTS)
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        value = rng.choice(FLOATS) * rng.choice([1, -1])
        return value if t == FieldDescriptor.TYPE_DOUBLE else max(min(value, 3e38), -3e38)
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([*(v.number for v in f.enum_type.values), 99])
    if t == FieldDescriptor.TYPE_MESSAGE:
        if f.message_type.full_name == "google.protobuf.Timestamp":
            ts = GetMessageClass(f.message_type)()
            ts.seconds, ts.nanos = rng.choice(SECONDS), rng.choice([0, 999_999_999])
            return ts
        if depth >= 3 or f.message_type.full_name.startswith("google.protobuf."):
            return None
        return extreme(f.message_type, rng, depth + 1)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
             FieldDescriptor.TYPE_SFIXED32):
        return max(min(rng.choice(INTS), 2**31 - 1), -(2**31))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return abs(max(min(rng.choice(INTS), 2**31 - 1), -(2**31)))
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return abs(rng.choice(INTS)) % 2**64
    return rng.choice(INTS)


METHODS = [(s, m.name) for s, (d, _) in SERVICES.items() for m in d.methods]


@pytest.mark.req("INP-001", "INP-002")
@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m for _, m in METHODS])
async def test_every_rpc_answers_extreme_requests_with_a_documented_status(
        services: dict[str, Service], service: str, method: str) -> None:
    s = services[service]
    rng = random.Random(f"{service}/{method}")  # the same requests on every run
    descriptor = s.descriptor.methods_by_name[method]
    requests: list[Any] = [extreme(descriptor.input_type, rng) for _ in range(40)]
    requests += [rng.randbytes(rng.choice([1, 7, 64, 1000])) for _ in range(10)]
    answered: set[grpc.StatusCode] = set()
    for request in requests:
        try:
            await _raw_call(s, method, request)
            answered.add(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            answered.add(error.code())
            assert error.code() in DOCUMENTED or (
                error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and descriptor.server_streaming), (error.code(), error.details(), request)
            assert_small_status(error)
    assert answered


async def _raw_call(s: Service, method: str, request: Message | bytes) -> Any:
    """A call with a message, or with raw bytes that may not decode at all. A watch that is
    valid keeps streaming: its first answer (or a short deadline) ends the call here."""
    m = s.descriptor.methods_by_name[method]
    path = f"/{s.descriptor.full_name}/{m.name}"
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    if m.server_streaming:
        stream = s.channel.unary_stream(path, request_serializer=None,
                                        response_deserializer=None)(raw, timeout=5)
        try:
            async for reply in stream:
                return reply
        finally:
            stream.cancel()
        return None
    return await s.channel.unary_unary(path, request_serializer=None,
                                       response_deserializer=None)(raw)
