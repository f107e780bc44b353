"""A WatchReleaseStatus call in a test, and everything it delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc

# A bound on each wait for the next message, so that a missing change fails the test
# instead of hanging it (not a timing assertion: changes normally arrive in milliseconds).
READ_WITHIN_S = 30.0


class Watch:
    """One WatchReleaseStatus call and everything it delivered."""

    def __init__(self, stub: pb_grpc.LotServiceStub, **request) -> None:
        self.call = stub.WatchReleaseStatus(pb.WatchReleaseStatusRequest(**request))
        self.seen: list[pb.WatchReleaseStatusResponse] = []

    async def next(self) -> pb.WatchReleaseStatusResponse:
        reply = await asyncio.wait_for(self.call.read(), READ_WITHIN_S)
        assert reply is not grpc.aio.EOF, "the stream ended"
        self.seen.append(reply)
        return reply

    async def until(self, done: Callable[[pb.WatchReleaseStatusResponse], bool]
                    ) -> list[pb.WatchReleaseStatusResponse]:
        """Read until `done` holds for a message; the messages read, that one last."""
        got = []
        while True:
            got.append(await self.next())
            if done(got[-1]):
                return got

    async def until_versions(self, final: dict[str, int]) -> None:
        """Read until every lot in `final` has been seen at its final version."""
        while any(self.last().get(lot_id, 0) < version for lot_id, version in final.items()):
            await self.next()

    def last(self) -> dict[str, int]:
        """Lot id -> the last version delivered."""
        last: dict[str, int] = {}
        for r in self.seen:
            last[r.release_status.lot_id] = r.release_status.version
        return last

    def versions(self, lot_id: str) -> list[int]:
        return [r.release_status.version for r in self.seen if r.release_status.lot_id == lot_id]

    def resume_from(self) -> list[pb.LotVersion]:
        """What a client sends when it watches again after this call ended."""
        return [pb.LotVersion(lot_id=k, version=v) for k, v in self.last().items()]

    def cancel(self) -> None:
        self.call.cancel()
