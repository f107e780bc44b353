"""The ports of a local stack: finding a free one, checking that the ones it will bind are
free before anything starts, and waiting until something listens or serves on one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StartFailed(RuntimeError):
    """A process of the stack did not come up; what had started was stopped."""


@dataclass(frozen=True)
class PortUse:
    """A port the stack will bind on 127.0.0.1, and what binds it.

    `key` names the setting that chooses the port ("nats", "nats-monitor", a service's
    name), so that a runner can tell its user which flag to change.
    """

    key: str
    port: int
    purpose: str


@dataclass(frozen=True)
class PortConflict:
    use: PortUse
    reason: str  # "already in use (Address already in use)", "also wanted by ..."


class PortsInUse(StartFailed):
    """Ports the stack would bind are taken (or wanted twice); nothing was started."""

    def __init__(self, conflicts: list[PortConflict]) -> None:
        self.conflicts = conflicts
        super().__init__("; ".join(
            f"port {c.use.port} for {c.use.purpose} is {c.reason}" for c in conflicts))


def port_taken(port: int, host: str = "127.0.0.1") -> str | None:
    """Why `port` cannot be bound on `host` now, or None when it can.

    SO_REUSEADDR as nats-server and gRPC set it: a port held by a listener is taken, one
    whose last connection is only in TIME_WAIT is not.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def check_ports(uses: Iterable[PortUse]) -> None:
    """Raise PortsInUse naming every port of `uses` that is taken or wanted twice."""
    conflicts: list[PortConflict] = []
    first: dict[int, PortUse] = {}
    for use in uses:
        if use.port in first:
            conflicts.append(PortConflict(use, f"also wanted by {first[use.port].purpose}"))
            continue
        first[use.port] = use
        reason = port_taken(use.port)
        if reason is not None:
            conflicts.append(PortConflict(use, f"already in use ({reason})"))
    if conflicts:
        raise PortsInUse(conflicts)


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            await asyncio.sleep(0.05)


async def wait_until_serving(address: str, timeout: float = 30.0) -> None:
    """Wait for the gRPC health check of `address` to answer SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become SERVING")
            await asyncio.sleep(0.1)
