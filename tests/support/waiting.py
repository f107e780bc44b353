"""Waiting for eventually-consistent outcomes: for a lot's status by watching it, for
anything else by polling; each with a bound after which it fails, naming what it saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], *,
                     within: float = 10.0, every: float = 0.02) -> T:
    """Call `probe` until `check` holds for its value; fail with the last value seen."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(every)


def describe(status: lots_pb2.ReleaseStatus | None) -> str:
    """A lot status as a failure message shows it: status, unmet codes, version."""
    if status is None:
        return "nothing (no status was delivered)"
    name = lots_pb2.LotStatus.Name(status.status).removeprefix("LOT_STATUS_")
    return f"{name} {[u.code for u in status.unmet]} (version {status.version})"


async def until_lot(stub: lots_pb2_grpc.LotServiceStub, lot_id: str, status: int,
                    codes: Sequence[str] = (), *, within: float = 30.0
                    ) -> lots_pb2.ReleaseStatus:
    """Watch `lot_id` (WatchReleaseStatus: its current status, then each change) until it has
    `status` with exactly the unmet `codes`, in order; its status then.

    Fails naming the last status seen when the watch delivers no such status within
    `within` seconds (a bound, so that a lot that never gets there fails the test instead
    of hanging it; not a measure of speed). A watch the service ends (it restarted) is
    opened again: it starts with the lot's current status.
    """
    wanted = f"{lots_pb2.LotStatus.Name(status).removeprefix('LOT_STATUS_')} {list(codes)}"
    last: lots_pb2.ReleaseStatus | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                call = stub.WatchReleaseStatus(lots_pb2.WatchReleaseStatusRequest(
                    lot_ids=[lot_id]))
                try:
                    async for reply in call:
                        last = reply.release_status
                        if last.status == status and [u.code for u in last.unmet] == list(codes):
                            return last
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                finally:
                    call.cancel()
                await asyncio.sleep(0.1)  # the service is restarting: watch again
    except TimeoutError:
        raise AssertionError(f"lot {lot_id} did not become {wanted} within {within}s; "
                             f"last seen: {describe(last)}") from None
