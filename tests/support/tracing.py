"""Spans the services in this test process finish, kept in memory for a test to read."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Record every span finished meanwhile; the process's provider is set once (as a
    service process does at start) and kept, the recording stops on leaving."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        exporter.shutdown()  # later spans are refused, not kept


def of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    """The span among `spans` that `span` is a child of."""
    if span.parent is None:
        return None
    return next((s for s in spans if s.context.span_id == span.parent.span_id), None)


@contextmanager
def captured_logs(processors: Sequence[Any]) -> Iterator[list[dict[str, Any]]]:
    """The log lines written meanwhile, after `processors` ran on them (as
    structlog.testing.capture_logs(processors=...) of structlog 25.5+, which the declared
    floor of structlog predates)."""
    capture = structlog.testing.LogCapture()
    before = structlog.get_config()
    structlog.configure(processors=[*processors, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(**before)
