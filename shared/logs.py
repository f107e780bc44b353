"""structlog configured for JSON lines on stdout, with request, event and trace ids bound per
task."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

from shared import tracing

# (request id, rpc) of the gRPC call a task is serving; one ContextVar is cheaper per call
# than binding structlog's contextvars, and the processor below puts both on every line.
request_context: ContextVar[tuple[str, str] | None] = ContextVar("request_context",
                                                                default=None)


def _add_request_context(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    current = request_context.get()
    if current is not None:
        event.setdefault("request_id", current[0])
        event.setdefault("rpc", current[1])
    return event


def _add_trace_ids(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    ids = tracing.log_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


# The most characters of one value on a log line: a request may carry megabytes of text,
# and one line must not (log shippers drop or split long lines).
MAX_LOG_VALUE = 1000


# Keys whose values never reach a log line (signing secrets, shared.esign).
REDACTED_KEYS = frozenset({"secret", "new_secret", "current_secret", "signature"})


def _truncate_values(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if key in REDACTED_KEYS:
            event[key] = "[redacted]"
            continue
        if isinstance(value, str) and len(value) > MAX_LOG_VALUE:
            event[key] = f"{value[:MAX_LOG_VALUE]}... ({len(value):,} characters)"
    return event


# What every line learns from the task it is written in: bound ids (service, event), the
# gRPC call's request id, the current span's trace and span ids.
CONTEXT_PROCESSORS = (structlog.contextvars.merge_contextvars, _add_request_context,
                      _add_trace_ids)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(service: str, level: str = "info") -> None:
    """Send JSON log lines to stdout; the service name is on every line."""
    structlog.configure(
        processors=[
            *CONTEXT_PROCESSORS,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            _truncate_values,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            _LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # nats-py logs every failed reconnect with a traceback; our callbacks report it once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
