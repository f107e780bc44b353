"""Trace export is off unless configured, and on when it is; the trace context survives
the outbox row and the message headers; log lines name the current trace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import structlog
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import tracing
from shared.config import settings_for
from shared.logs import CONTEXT_PROCESSORS
from tests.support.tracing import captured_logs


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on a loopback port: the spans it was sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.got = threading.Event()

    def Export(self, request, context):
        self.requests.append(request)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                found += [(service, s.name) for scope in resource_spans.scope_spans
                          for s in scope.spans]
        return found


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_traces_are_exported_nowhere_by_default() -> None:
    settings = settings_for("lots")

    assert settings.otlp_endpoint == ""
    assert tracing.export_endpoint(settings.otlp_endpoint, {}) == ""
    assert tracing.exporter_for("") is None


def test_the_lotgate_setting_or_the_standard_otel_variable_turns_export_on() -> None:
    configured = settings_for("lots", otlp_endpoint="http://127.0.0.1:4317").otlp_endpoint
    standard = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}

    assert tracing.export_endpoint(configured, standard) == "http://127.0.0.1:4317"
    assert tracing.export_endpoint("", standard) == "http://127.0.0.1:4318"
    assert tracing.export_endpoint("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1",
                                        **standard}) == "http://127.0.0.1:1"


def test_otel_sdk_disabled_installs_no_provider() -> None:
    assert tracing.configure_tracing("lots", endpoint="http://127.0.0.1:4317",
                                     environ={"OTEL_SDK_DISABLED": "true"}) is None


def test_without_an_endpoint_no_provider_records_spans_nobody_would_receive() -> None:
    assert tracing.configure_tracing("lots", endpoint="", environ={}) is None


def test_a_configured_endpoint_receives_the_services_spans(collector) -> None:
    servicer, port = collector
    provider = tracing.build_provider("lots", endpoint=f"http://127.0.0.1:{port}")

    with provider.get_tracer("test").start_as_current_span("lots.decide"):
        pass
    provider.force_flush()
    provider.shutdown()

    assert servicer.got.is_set()
    assert servicer.spans() == [("lotgate-lots", "lots.decide")]


def test_without_an_endpoint_spans_stay_in_the_process(collector) -> None:
    servicer, _ = collector
    provider = tracing.build_provider("lots")
    recorded = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(recorded))

    with provider.get_tracer("test").start_as_current_span("lots.decide"):
        pass
    provider.force_flush()
    provider.shutdown()

    assert [s.name for s in recorded.get_finished_spans()] == ["lots.decide"]
    assert servicer.requests == []


def test_the_outbox_carrier_keeps_the_trace_and_request_for_the_message_headers() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("RecordResult") as call:
        stored = tracing.carrier("req-1")
    headers = tracing.stored_headers(stored)

    assert headers[tracing.REQUEST_ID_HEADER] == "req-1"
    continued = tracing.extract(headers)
    with tracer.start_as_current_span("send", context=continued) as sent:
        pass
    assert sent.parent.span_id == call.get_span_context().span_id
    assert sent.get_span_context().trace_id == call.get_span_context().trace_id


def test_rows_written_outside_a_trace_publish_without_trace_headers() -> None:
    assert tracing.carrier() is None
    assert tracing.stored_headers(None) == {}
    assert tracing.stored_headers("not json") == {}


def test_log_lines_inside_a_span_carry_its_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    log = structlog.get_logger("test")
    with captured_logs(CONTEXT_PROCESSORS) as lines:
        log.info("outside")
        with tracer.start_as_current_span("inside") as span:
            log.info("inside")

    assert "trace_id" not in lines[0]
    ctx = span.get_span_context()
    assert (lines[1]["trace_id"], lines[1]["span_id"]) == (format(ctx.trace_id, "032x"),
                                                           format(ctx.span_id, "016x"))


def test_a_row_written_before_trace_context_existed_still_publishes() -> None:
    headers: dict[str, str] = {"Nats-Msg-Id": "e-1"}
    with tracing.publish_span("lotgate.results.v1.result_recorded", "e-1", None, headers) as sent:
        pass

    assert tracing.REQUEST_ID_HEADER not in headers
    assert headers["Nats-Msg-Id"] == "e-1"
    assert getattr(sent, "parent", None) is None
