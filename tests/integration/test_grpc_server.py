"""The shared gRPC server (shared/grpc_server.py) over a real loopback connection."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2

from shared.grpc_server import build_server

pytestmark = pytest.mark.integration

SERVICE = "lotgate.test.Ticker"
# Enough messages that the server is still sending when the client cancels.
BURST = 50_000


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop reports as unhandled while the test runs ("Task exception was
    never retrieved" and the like): in production these are error lines in the log."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


async def test_a_stream_cancelled_while_sending_closes_cleanly(
        loop_errors: list[dict[str, Any]]) -> None:
    cleaned_up = asyncio.Event()

    async def ticks(request: wrappers_pb2.StringValue, context: Any
                    ) -> AsyncIterator[wrappers_pb2.StringValue]:
        try:
            for n in range(BURST):
                yield wrappers_pb2.StringValue(value=f"{request.value} {n}")
        finally:
            cleaned_up.set()

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Ticks": grpc.unary_stream_rpc_method_handler(
            ticks, request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.StringValue.SerializeToString)})

    def register(server: grpc.aio.Server) -> list[str]:
        server.add_generic_rpc_handlers((handler,))
        return [SERVICE]

    server, port, _ = build_server(host="127.0.0.1", port=0, register=register)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(
                f"/{SERVICE}/Ticks",
                request_serializer=wrappers_pb2.StringValue.SerializeToString,
                response_deserializer=wrappers_pb2.StringValue.FromString,
            )(wrappers_pb2.StringValue(value="tick"))
            assert (await call.read()).value == "tick 0"
            call.cancel()
        # The server abandons the generator; the loop closes it once it is collected.
        async with asyncio.timeout(30):
            while not cleaned_up.is_set():
                gc.collect()
                await asyncio.sleep(0.01)
        # Let the task that closed it finish and be collected, so that an exception it
        # ended with is reported now.
        for _ in range(20):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        await server.stop(None)

    assert [str(e.get("exception") or e.get("message")) for e in loop_errors] == []
