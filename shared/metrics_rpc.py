"""The RPC metrics of a service: every call counted by service, method, type and status
code, its latency in a histogram, and the server streams open (shared.metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from shared.metrics import ServiceMetrics, current


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every unary and server-streaming call, with its final code.

    Installed outermost (shared.grpc_server.build_server), so that the codes of refused
    calls (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT) are counted too.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        metrics = self._metrics
        service, name = _split(method)
        if handler.unary_unary is not None:
            inner = handler.unary_unary
            # A child per code seen (created on first use: codes never seen stay unlisted).
            handled: dict[str, Any] = {}
            seconds = metrics.rpc_seconds.labels(service, name, "unary")

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = current.set(metrics)
                started = time.perf_counter()
                code = "UNKNOWN"
                try:
                    response = await inner(request, context)
                    code = _code_name(context, "OK")
                    return response
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except grpc.aio.AbortError:
                    code = _code_name(context, "UNKNOWN")
                    raise
                finally:
                    seconds.observe(time.perf_counter() - started)
                    counter = handled.get(code)
                    if counter is None:
                        counter = handled[code] = metrics.rpc_handled.labels(
                            service, name, "unary", code)
                    counter.inc()
                    current.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(
                handler.unary_stream):
            inner_stream = handler.unary_stream
            open_now = metrics.streams_open.labels(service, name)
            stream_seconds = metrics.rpc_seconds.labels(service, name, "server_stream")

            async def stream(request: Any, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[Any]:
                token = current.set(metrics)
                started = time.perf_counter()
                code = "UNKNOWN"
                open_now.inc()
                items = inner_stream(request, context)
                try:
                    async for item in items:
                        yield item
                    code = _code_name(context, "OK")
                except (asyncio.CancelledError, GeneratorExit):
                    code = "CANCELLED"
                    raise
                except grpc.aio.AbortError:
                    code = _code_name(context, "UNKNOWN")
                    raise
                finally:
                    await items.aclose()
                    open_now.dec()
                    stream_seconds.observe(time.perf_counter() - started)
                    metrics.rpc_handled.labels(service, name, "server_stream", code).inc()
                    with contextlib.suppress(ValueError):  # closed in another context
                        current.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


