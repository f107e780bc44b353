"""The gRPC server factory and the one interceptor every call passes through.

The interceptor turns the project's errors into precise status codes with rich details
(google.rpc.BadRequest field violations, PreconditionFailure), maps an unreachable
database to UNAVAILABLE, binds a request id to every log line, and decodes request
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
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LotgateError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from shared.logs import get_logger, request_context

log = get_logger(__name__)

# Requests larger than this are refused with RESOURCE_EXHAUSTED by grpc itself.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


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
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations])
        return _status(code_pb2.INVALID_ARGUMENT, exc.message, bad)
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
    if isinstance(exc, Aborted):
        return _status(code_pb2.ABORTED, exc.message)
    if isinstance(exc, IntegrityError):
        # Two calls wrote the same record at once; a retry sees the winner's result.
        return _status(code_pb2.ABORTED, "a concurrent call changed the same record; retry")
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


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary handler once per method (not per call: this is the hot path)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

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
        if handler is None or handler.request_streaming or method.startswith(
                ("/grpc.health.", "/grpc.reflection.")):
            return handler
        wrapped = _wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped


def _wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            token = request_context.set((_request_id(context), method))
            started = time.perf_counter()
            try:
                response = await inner(_decode(decode, raw), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, started)
            else:
                log.debug("rpc", code="OK", ms=_elapsed_ms(started))
                return response
            finally:
                request_context.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            token = request_context.set((_request_id(context), method))
            started = time.perf_counter()
            items = None
            try:
                items = inner_stream(_decode(decode, raw), context)
                async for item in items:
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, started)
            finally:
                # `async for` leaves the handler's generator open when we stop early (the
                # call was cancelled): close it now, so that its own clean-up (a watch
                # leaving the change feed) runs with ours rather than whenever it is
                # collected.
                if items is not None and hasattr(items, "aclose"):
                    await items.aclose()
                _reset_request_context(token)

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=None, response_serializer=handler.response_serializer)
    return handler


def _reset_request_context(token: Token[Any]) -> None:
    """Undo our `request_context.set`. A call cancelled while its stream was waiting to send
    leaves the generator to the event loop, which closes it later in another task's
    context; there the token cannot be reset, and need not be: the call's own context ended
    with its task."""
    try:
        request_context.reset(token)
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
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server with our interceptor, health checking and reflection.

    `register` adds the servicers and returns their full service names. Port 0 picks a
    free port; the port actually bound is returned.
    """
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {host}:{port}")
    return server, bound, health_servicer
