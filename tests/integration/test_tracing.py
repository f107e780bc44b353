"""One trace follows a result from RecordResult to the lot's decision and its watcher,
across the results and lots services (real gRPC, database and nats-server), and the
log lines on the way name the same trace, request and event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lotgate.lots.v1 import lots_pb2 as lpb
from shared.logs import CONTEXT_PROCESSORS
from tests.integration.test_lots import System, running_system
from tests.support.results import (  # noqa: F401 (fixtures)
    identity,
    instruments,
    js,
    post,
    purity,
    service,
    specify,
    sterility,
    stub,
    wait_until_known,
)
from tests.support.services import ref
from tests.support.tracing import captured_logs, of_trace, parent_of, recorded_spans
from tests.support.waiting import eventually
from tests.support.watching import Watch

pytestmark = pytest.mark.integration

RECORD_RESULT = "lotgate.results.v1.ResultService/RecordResult"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture(scope="module")
async def system(spans, databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


async def lot_awaiting_sterility(system: System, stub) -> str:  # noqa: F811
    """A lot of a qualified supplier whose identity and purity passed: its sterility
    result is the one that releases it."""
    material = ref("MAT")
    await specify(stub, material)
    supplier = await system.qualified_supplier(material)
    lot_id = (await system.receive(supplier, material)).lot_id
    await wait_until_known(stub, lot_id)
    await eventually(lambda: system.status(lot_id),
                     lambda s: not any(u.code.startswith("SUPPLIER") for u in s.unmet))
    await post(stub, identity(lot_id))
    await post(stub, purity(lot_id, 99.5))
    await system.wait_unmet(lot_id, ["STERILITY_MISSING"])
    return lot_id


def only(spans: list[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [s for s in spans if s.name == name
             and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"{name} {attributes}: {[s.name for s in spans]}"
    return found[0]


def released(lot_id: str, trace_id: int, exporter: InMemorySpanExporter) -> bool:
    """Whether the decision that released `lot_id`, the consumer span around it (it ends
    after the commit) and the announcement of the change have finished in the trace."""
    finished = of_trace(exporter, trace_id)
    names = {s.name for s in finished}
    return {"process lotgate.results.v1.result_recorded",
            "send lotgate.lots.v1.status_changed"} <= names and any(
        e.name == "lot_status_changed" and e.attributes.get("lot_id") == lot_id
        and e.attributes.get("status") == "RELEASED"
        for s in finished if s.name == "lots.decide" for e in s.events)


async def test_one_trace_follows_a_result_from_record_result_to_the_decision_and_watcher(
        system: System, stub, spans: InMemorySpanExporter) -> None:  # noqa: F811
    lot_id = await lot_awaiting_sterility(system, stub)
    watch = Watch(system.lots, lot_ids=[lot_id])
    await watch.next()  # the snapshot
    request_id = ref("REQ")

    with captured_logs(CONTEXT_PROCESSORS) as lines:
        # The lab system's own span: the services continue the trace it sends.
        with trace.get_tracer("lab-system").start_as_current_span("send result") as lab:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            await post(stub, sterility(lot_id),
                       metadata=[*carrier.items(), ("x-request-id", request_id)])
        await watch.until(lambda r: r.release_status.status == lpb.LOT_STATUS_RELEASED)
        watch.cancel()
        trace_id = lab.get_span_context().trace_id
        await eventually(lambda: _now(released(lot_id, trace_id, spans)), bool)
    finished = of_trace(spans, trace_id)

    call = only(finished, RECORD_RESULT)
    assert call.kind is SpanKind.SERVER
    assert parent_of(call, finished).name == "send result"
    assert {k: call.attributes[k] for k in ("rpc.system", "rpc.service", "rpc.method",
                                            "rpc.grpc.status_code")} == {
        "rpc.system": "grpc", "rpc.service": "lotgate.results.v1.ResultService",
        "rpc.method": "RecordResult", "rpc.grpc.status_code": 0}
    sent = only(finished, "send lotgate.results.v1.result_recorded")
    assert sent.kind is SpanKind.PRODUCER
    assert parent_of(sent, finished) is call
    consumed = only(finished, "process lotgate.results.v1.result_recorded")
    assert consumed.kind is SpanKind.CONSUMER
    assert consumed.attributes["messaging.consumer.group.name"] == "lots-result-recorded"
    assert consumed.attributes["messaging.message.id"] == sent.attributes["messaging.message.id"]
    assert parent_of(consumed, finished) is sent
    decided = only(finished, "lots.decide")
    assert parent_of(decided, finished) is consumed
    # The lots service announces the change in the same trace, and tells the watcher.
    announced = only(finished, "send lotgate.lots.v1.status_changed")
    assert parent_of(announced, finished) is decided
    pushed = only(finished, "lots.watch push", **{"lot.id": lot_id})
    assert parent_of(pushed, finished) is consumed

    # The decision's log line names the event that caused it, its request and its trace.
    changed = [line for line in lines
               if line["event"] == "lot_status_changed" and line.get("lot_id") == lot_id]
    assert len(changed) == 1
    assert changed[0]["status"] == "RELEASED"
    assert changed[0]["event_id"] == sent.attributes["messaging.message.id"]
    assert changed[0]["request_id"] == request_id
    assert changed[0]["trace_id"] == format(trace_id, "032x")
    # The call itself left one line at info, with its caller and duration.
    calls = [line for line in lines
             if line["event"] == "rpc" and line.get("request_id") == request_id]
    assert len(calls) == 1
    assert calls[0]["log_level"] == "info"
    assert calls[0]["code"] == "OK"
    assert calls[0]["rpc"] == f"/{RECORD_RESULT}"
    assert calls[0]["principal"]
    assert calls[0]["trace_id"] == format(trace_id, "032x")
    assert isinstance(calls[0]["ms"], float)


async def _now(value: bool) -> bool:
    return value
