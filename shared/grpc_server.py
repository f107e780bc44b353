"""The gRPC server factory and the one interceptor every call passes through.

The interceptor turns the project's errors into precise status codes with rich details
(google.rpc.BadRequest field violations, PreconditionFailure), maps an unreachable
database to UNAVAILABLE, binds a request id to every log line, runs each call in a
server span (shared.tracing) and logs it once, and decodes request
bytes itself so that a malformed message is INVALID_ARGUMENT rather than INTERNAL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextvars import Token
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)

from shared import tracing
from shared.auth import Gate, bind_principal, current_principal, unbind_principal
from shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LotgateError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from shared.logs import get_logger, request_context

log = get_logger(__name__)

# Requests larger than this are refused with RESOURCE_EXHAUSTED by grpc itself, before any
# of our code runs. The largest request a client needs (500 results in a batch, 1,000 lot
# ids) is far below 1 MiB; more would only let one call cost the process its memory.
MAX_RECEIVE_BYTES = 1024 * 1024
# Answers (a page of 1,000 lots with their conditions) may be larger.
MAX_SEND_BYTES = 4 * 1024 * 1024
# A status travels in trailers, and grpc's default limit for metadata is 8 KiB: the
# BadRequest detail (base64 in the trailer) stays within this, the rest is counted.
MAX_DETAIL_BYTES = 2048
MAX_FIELD_CHARS = 200
REFUSED_VALUE = ("the database refused a value of this request (a character or a number it "
                 "cannot store); nothing was changed")


def _status(code: int, message: str, *details: Any) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def status_for(exc: BaseException, request_id: str) -> grpc.Status:
    """The status a caller sees for an exception raised by a handler."""
    if isinstance(exc, InvalidArgument):
        return _status(code_pb2.INVALID_ARGUMENT, exc.message, _bad_request(exc))
    if isinstance(exc, NotFound):
        details = []
        if exc.field:
            details.append(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=exc.field,
                                                            description=exc.message)]))
        return _status(code_pb2.NOT_FOUND, exc.message, *details)
    if isinstance(exc, FailedPrecondition):
        failure = error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=exc.type_, subject=exc.subject, description=exc.message)])
        return _status(code_pb2.FAILED_PRECONDITION, exc.message, failure)
    if isinstance(exc, AlreadyExists):
        return _status(code_pb2.ALREADY_EXISTS, exc.message)
    if isinstance(exc, PermissionDenied):
        return _status(code_pb2.PERMISSION_DENIED, exc.message)
    if isinstance(exc, Unauthenticated):
        return _status(code_pb2.UNAUTHENTICATED, exc.message)
    if isinstance(exc, Aborted):
        return _status(code_pb2.ABORTED, exc.message)
    if isinstance(exc, IntegrityError):
        # Two calls wrote the same record at once; a retry sees the winner's result.
        return _status(code_pb2.ABORTED, "a concurrent call changed the same record; retry")
    if isinstance(exc, DBAPIError) and refused_value(exc):
        return _status(code_pb2.INVALID_ARGUMENT, REFUSED_VALUE,
                       error_details_pb2.BadRequest(field_violations=[
                           error_details_pb2.BadRequest.FieldViolation(
                               field="", description=REFUSED_VALUE)]))
    if isinstance(exc, Unavailable | OperationalError | InterfaceError | DBAPIError | OSError):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(500)
        return _status(code_pb2.UNAVAILABLE,
                       "a dependency is unavailable; nothing was changed, retry later", retry)
    if isinstance(exc, TimeoutError):
        return _status(code_pb2.DEADLINE_EXCEEDED,
                       "the call took too long; retry with the same key")
    if isinstance(exc, LotgateError):
        return _status(code_pb2.INTERNAL, f"{exc.message} (request {request_id})")
    return _status(code_pb2.INTERNAL, f"internal error (request {request_id})")


def _bad_request(exc: InvalidArgument) -> error_details_pb2.BadRequest:
    """The field violations, as many as fit in MAX_DETAIL_BYTES, then how many more."""
    bad = error_details_pb2.BadRequest()
    size = 0
    for i, v in enumerate(exc.violations):
        item = error_details_pb2.BadRequest.FieldViolation(field=v.field[:MAX_FIELD_CHARS],
                                                           description=v.description)
        size += item.ByteSize() + 3
        if size > MAX_DETAIL_BYTES:
            more = len(exc.violations) - i + exc.more
            break
        bad.field_violations.append(item)
    else:
        more = exc.more
    if more:
        bad.field_violations.append(error_details_pb2.BadRequest.FieldViolation(
            field="", description=f"and {more:,} more problems"))
    return bad


def refused_value(exc: DBAPIError) -> bool:
    """Whether the database refused a value of the request (SQLSTATE class 22, data
    exception, or 54, a program limit), or the driver could not send it: the caller's
    error. Validation catches these before the database; this is the backstop, so that a
    value is never answered "unavailable, retry later"."""
    if isinstance(exc, DataError):
        return True
    state = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
    if state[:2] in ("22", "54"):
        return True
    cause: BaseException | None = exc.orig
    for _ in range(5):  # asyncpg's own DataError (a value it cannot encode) is a ValueError
        if cause is None:
            break
        if isinstance(cause, ValueError | OverflowError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary handler once per method (not per call: this is the hot path).

    With a `gate`, every call of the services (not health, not reflection) is admitted by
    it first (shared.auth), and its principal is `current_principal()` in the handler.
    """

    def __init__(self, gate: Gate | None = None) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if handler.request_streaming:
            # None of ours streams requests; one that did would bypass the gate: refuse it.
            return _refused(method) if self._gate is not None else handler
        wrapped = _wrap(method, handler, self._gate)
        self._wrapped[method] = wrapped
        return wrapped


# Calls that need no credentials: health checks (probes, load balancers) and reflection
# (a description of the API; switched off in production by LOTGATE_GRPC_REFLECTION).
OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def _refused(method: str) -> grpc.RpcMethodHandler:
    async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{method} is open to no role (not in the access table)")

    return grpc.stream_unary_rpc_method_handler(refuse)


async def _admit(gate: Gate | None, method: str, request: Any,
                 context: grpc.aio.ServicerContext) -> Any:
    """The principal's context token, once the gate let the call in (None without a gate)."""
    if gate is None:
        return None
    principal = await gate.admit(method, request, context.invocation_metadata(),
                                 peer_common_name(context))
    return bind_principal(principal)


def peer_common_name(context: grpc.aio.ServicerContext) -> str:
    """The common name of the client certificate the TLS handshake verified ("" without
    mutual TLS)."""
    names = context.auth_context().get("x509_common_name") or ()
    return names[0].decode() if names else ""


def _wrap(method: str, handler: grpc.RpcMethodHandler,
          gate: Gate | None = None) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            token = request_context.set((_request_id(context), method))
            span = tracing.start_server_span(method, context.invocation_metadata())
            started = time.perf_counter()
            admitted = None
            try:
                request = _decode(decode, raw)
                admitted = await _admit(gate, method, request, context)
                response = await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, started)
            else:
                _succeeded(started, admitted)
                return response
            finally:
                if admitted is not None:
                    unbind_principal(admitted)
                request_context.reset(token)
                tracing.end_server_span(span)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            token = request_context.set((_request_id(context), method))
            span = tracing.start_server_span(method, context.invocation_metadata())
            started = time.perf_counter()
            admitted = None
            items = None
            try:
                request = _decode(decode, raw)
                admitted = await _admit(gate, method, request, context)
                items = inner_stream(request, context)
                async for item in items:
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, started)
            else:
                _succeeded(started, admitted)
            finally:
                # `async for` leaves the handler's generator open when we stop early (the
                # call was cancelled): close it now, so that its own clean-up (a watch
                # leaving the change feed) runs with ours rather than whenever it is
                # collected.
                if items is not None and hasattr(items, "aclose"):
                    await items.aclose()
                if admitted is not None:
                    _reset_context_var(unbind_principal, admitted)
                _reset_context_var(request_context.reset, token)
                tracing.end_server_span(span)

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=None, response_serializer=handler.response_serializer)
    return handler


def _succeeded(started: float, admitted: Any) -> None:
    """One line at info per answered call: operators see traffic without debug logs."""
    tracing.set_rpc_code(grpc.StatusCode.OK)
    log.info("rpc", code="OK", ms=_elapsed_ms(started),
             principal=current_principal().subject if admitted is not None else None)


def _reset_context_var(reset: Callable[[Token[Any]], None], token: Token[Any]) -> None:
    """Undo a context variable's `set` (the request context, the principal). A call
    cancelled while its stream was waiting to send leaves the generator to the event loop,
    which closes it later in another task's context; there the token cannot be reset, and
    need not be: the call's own context ended with its task."""
    try:
        reset(token)
    except ValueError:
        pass


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


def _decode(decode: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    if decode is None:
        return raw
    try:
        return decode(raw)
    except (DecodeError, ValueError, TypeError) as exc:
        raise InvalidArgument([]) from exc


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, started: float) -> None:
    """Answer the call with the status `exc` maps to, after logging it."""
    current = request_context.get()
    request_id = current[0] if current else ""
    if isinstance(exc, InvalidArgument) and not exc.violations:
        status = _status(code_pb2.INVALID_ARGUMENT, "the request is not a valid protobuf message",
                         error_details_pb2.BadRequest(field_violations=[
                             error_details_pb2.BadRequest.FieldViolation(
                                 field="", description="cannot be decoded")]))
    else:
        status = status_for(exc, request_id)
    elapsed = _elapsed_ms(started)
    tracing.set_rpc_code(status.code)
    if status.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.error("rpc", code=status.code.name, ms=elapsed, exc_info=exc)
    elif status.code == grpc.StatusCode.UNAVAILABLE:
        log.warning("rpc", code=status.code.name, ms=elapsed, error=repr(exc))
    else:
        log.info("rpc", code=status.code.name, ms=elapsed, error=status.details)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def build_server(
    *,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], Sequence[str]],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    gate: Gate | None = None,
    reflection_on: bool = True,
    tls: grpc.ServerCredentials | None = None,
    outer_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server with our interceptor, health checking and (optional) reflection.

    `register` adds the servicers and returns their full service names. Port 0 picks a
    free port; the port actually bound is returned. With a `gate` every service call is
    authenticated and authorized; health and reflection stay open. With `tls` the port
    speaks TLS (mutual TLS when the credentials require client certificates).
    """
    server = grpc.aio.server(
        # Outer ones (metrics) see every call's final code, refusals by the gate too.
        interceptors=[*outer_interceptors, ServiceInterceptor(gate), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_on:
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
    bound = (server.add_secure_port(f"{host}:{port}", tls) if tls is not None
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {host}:{port}")
    return server, bound, health_servicer
