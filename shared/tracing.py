"""OpenTelemetry traces: one TracerProvider per process, the W3C trace context carried by
gRPC metadata, outbox rows and NATS headers.

One trace follows a result from the RPC that recorded it, through the outbox (the row
keeps the context of the call that committed it, since the relay publishes later and in
another task), JetStream (the context rides in the message headers next to the
signature headers) and the consuming service, to the decision and the watchers it told.

Spans follow the OpenTelemetry semantic conventions (rpc.*, messaging.*). Without a
configured provider (tests that do not ask for one, tools) every span is the API's no-op
span: nothing is recorded and log lines carry no trace id.

Exporting is off unless configured: LOTGATE_OTLP_ENDPOINT, or the standard
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, names an OTLP/gRPC
collector (`http://` for plain text, `https://` for TLS). The trace headers are not
covered by the event signature (shared.signing): they steer observability only, never a
decision, and a forged one can at most misfile a span.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The header (and outbox carrier key) with the id of the request that caused an event, so
# that the consumer's log lines name it too.
REQUEST_ID_HEADER = "Lotgate-Request-Id"
_OTEL_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_propagator = TraceContextTextMapPropagator()
# A proxy: it looks the process's provider up when a span starts, so importing this module
# builds nothing, and a provider configured later (run_service, a test) is used at once.
_tracer = trace.get_tracer("lotgate")


# -- the process's provider -----------------------------------------------------------

def export_endpoint(configured: str, environ: Mapping[str, str]) -> str:
    """Where spans are exported to: LOTGATE_OTLP_ENDPOINT, else the standard OTEL_*
    variables; "" (the default) exports nothing."""
    if configured:
        return configured
    for name in _OTEL_ENDPOINT_VARS:
        if environ.get(name):
            return environ[name]
    return ""


def exporter_for(endpoint: str) -> SpanExporter | None:
    """The OTLP/gRPC exporter for `endpoint`, None when export is off."""
    if not endpoint:
        return None
    # Imported here: a process that exports nothing never loads the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def build_provider(service: str, *, endpoint: str = "") -> TracerProvider:
    """A provider naming `service`; with an `endpoint`, its spans are batched to OTLP.

    Without one, spans are still made (their ids join log lines across services) but go
    nowhere. The sampler is the SDK's: OTEL_TRACES_SAMPLER and its argument apply.
    """
    provider = TracerProvider(resource=Resource.create({
        "service.name": f"lotgate-{service}", "service.namespace": "lotgate"}))
    exporter = exporter_for(endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(service: str, *, endpoint: str,
                      environ: Mapping[str, str]) -> TracerProvider | None:
    """Install the process's provider (once, at start: OpenTelemetry keeps the first)
    when spans have somewhere to go: an OTLP endpoint is configured.

    Without one (the default), and with the standard OTEL_SDK_DISABLED=true, none is
    installed: spans are the API's no-ops, about 3 µs a call instead of about 15 µs, which
    kept every read and write about 10 % slower in `make bench` for spans nobody received.
    The trace context a caller sends (`traceparent`) still travels through the outbox and
    the consumers, and log lines carry its ids; without one they carry request and event
    ids only.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exported_to = export_endpoint(endpoint, environ)
    if not exported_to:
        return None
    provider = build_provider(service, endpoint=exported_to)
    trace.set_tracer_provider(provider)
    return provider


# -- carrying the context ---------------------------------------------------------------

def carrier(request_id: str | None = None) -> str | None:
    """The current trace context (and `request_id`) as the outbox row keeps it, JSON of
    the headers to publish; None when there is neither."""
    headers: dict[str, str] = {}
    _propagator.inject(headers)
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return json.dumps(headers, separators=(",", ":")) if headers else None


def stored_headers(stored: str | None) -> dict[str, str]:
    """The headers an outbox row's carrier holds (rows written before it existed: none)."""
    if not stored:
        return {}
    try:
        headers = json.loads(stored)
    except ValueError:
        return {}
    return {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(headers, dict) else {}


def extract(headers: Mapping[str, str] | Iterable[tuple[str, Any]] | None) -> Context:
    """The trace context that `headers` (NATS headers, gRPC metadata) carry, if any."""
    if not headers:
        return Context()
    if not isinstance(headers, Mapping):
        headers = {k: v for k, v in headers if isinstance(v, str)}
    return _propagator.extract(headers)


def inject(headers: dict[str, str]) -> None:
    """Add the current trace context to outgoing `headers`."""
    _propagator.inject(headers)


def log_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; None outside one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# -- spans ------------------------------------------------------------------------------

def start_server_span(method: str, metadata: Iterable[tuple[str, Any]] | None) -> Any:
    """Start the SERVER span of the RPC `method` ("/pkg.Service/Method"), continuing the
    caller's trace if its metadata carries one; returns a token for `end_server_span`."""
    service, _, name = method.lstrip("/").partition("/")
    span = _tracer.start_span(
        method.lstrip("/"), context=extract(metadata), kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_server_span(started: Any) -> None:
    span, token = started
    try:
        # The runtime context is a ContextVar; its reset raises where the API's detach
        # would log a traceback: a call cancelled while its stream waited ends in another
        # task's context, where there is nothing to reset (see grpc_server).
        token.var.reset(token)
    except (ValueError, RuntimeError):
        pass
    finally:
        span.end()


def set_rpc_code(code: Any) -> None:
    """Note the call's grpc.StatusCode on its server span (an error for server faults)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code.name in ("UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                     "DATA_LOSS", "UNIMPLEMENTED"):
        span.set_status(StatusCode.ERROR, code.name)


@contextmanager
def publish_span(subject: str, event_id: str, stored: str | None,
                 headers: dict[str, str]) -> Iterator[Span]:
    """The PRODUCER span of publishing one outbox row: a child of the call that wrote
    the row; its own context (and the request id) goes into the message `headers`."""
    carried = stored_headers(stored)
    with _tracer.start_as_current_span(
            f"send {subject}", context=extract(carried), kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.operation.type": "send",
                        "messaging.destination.name": subject,
                        "messaging.message.id": event_id}) as span:
        _propagator.inject(headers)
        if REQUEST_ID_HEADER in carried:
            headers[REQUEST_ID_HEADER] = carried[REQUEST_ID_HEADER]
        yield span


def consumer_span(durable: str, messages: list[tuple[str, str, Mapping[str, str] | None]]
                  ) -> Any:
    """The CONSUMER span of processing messages [(subject, event id, headers)] in one
    transaction: a child of the publish span of the first, linked to the others' (a batch
    has one transaction, so one span; usually it holds one message)."""
    subject, event_id, headers = messages[0]
    attributes: dict[str, Any] = {
        "messaging.system": "nats", "messaging.operation.type": "process",
        "messaging.destination.name": subject, "messaging.consumer.group.name": durable}
    if len(messages) == 1:
        attributes["messaging.message.id"] = event_id
    else:
        attributes["messaging.batch.message_count"] = len(messages)
    links = [Link(ctx) for ctx in (trace.get_current_span(extract(h)).get_span_context()
                                   for _, _, h in messages[1:]) if ctx.is_valid]
    return _tracer.start_as_current_span(
        f"process {subject}", context=extract(headers), kind=SpanKind.CONSUMER,
        links=links, attributes=attributes)


def span(name: str, **attributes: Any) -> Any:
    """An INTERNAL span under the current one (the decision, a watcher push)."""
    return _tracer.start_as_current_span(name, attributes=attributes)


P = ParamSpec("P")
R = TypeVar("R")


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async function in an INTERNAL span called `name`."""
    def wrap(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with _tracer.start_as_current_span(name):
                return await func(*args, **kwargs)
        return inner
    return wrap


def add_event(name: str, **attributes: Any) -> None:
    """Note something on the current span (a lot whose status changed)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, attributes)


def request_id_of(headers: Mapping[str, str] | None) -> str:
    """The id of the request that caused a consumed event ("" when none travelled)."""
    return (headers or {}).get(REQUEST_ID_HEADER, "")
