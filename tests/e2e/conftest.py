"""The whole system as processes: a nats-server and the three services, driven over gRPC.

After each module, every decision its stack made is replayed (`every_decision_replays`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate_tools.client import Lotgate
from lotgate_tools.stack import SERVICES, Stack, free_port
from tests.support.auth import TEST_KEYS, acting
from tests.support.databases import Databases

INSTRUMENTS = (("FTIR-1", "FTIR"), ("HPLC-1", "HPLC"), ("BACT-1", "BacT/ALERT"))


@pytest.fixture(scope="module")
async def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    urls = {name: await databases.create(f"e2e_{name}") for name in SERVICES}
    running = Stack(workdir, database_urls=urls, ports={n: free_port() for n in SERVICES},
                    extra_env={"LOTGATE_OUTBOX_POLL_SECONDS": "0.2"}, keys=TEST_KEYS)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def lotgate(stack: Stack) -> AsyncIterator[Lotgate]:
    addresses = {name: stack.address(name) for name in SERVICES}
    async with Lotgate.connect(addresses, acting()) as client:
        # The instruments the tests post as: registered and within calibration.
        for instrument, kind in INSTRUMENTS:
            await client.register_instrument(instrument, type=kind)
        yield client


@pytest.fixture(scope="module", autouse=True)
def every_decision_replays(request: pytest.FixtureRequest) -> None:
    """A test replays every decision made in the e2e suite: after the module's tests, every
    decision of every lot of the module's stack is replayed by the lots service
    (ListDecisions) and must agree with what was stored (see `_replayed_stack`).

    A module that starts no stack (none of its selected tests uses it) gets none for this.
    """
    tests = [item for item in request.session.items
             if getattr(item, "module", None) is request.module]
    if any("stack" in item.fixturenames for item in tests):
        request.getfixturevalue("_replayed_stack")


@pytest.fixture(scope="module")
async def _replayed_stack(stack: Stack) -> AsyncIterator[Stack]:
    """The module's stack; once its tests are done (and before it stops), every lot is
    walked (ListLots, page by page) and each of its decisions replayed."""
    yield stack
    addresses = {name: stack.address(name) for name in SERVICES}
    async with Lotgate.connect(addresses, acting()) as client:
        disagreements, decided = await _replay_all(client.lots)
    assert not disagreements, (
        f"{len(disagreements)} of {decided} decisions do not replay:\n"
        + "\n".join(disagreements))


async def _replay_all(lots: pb_grpc.LotServiceStub) -> tuple[list[str], int]:
    """Walk every lot (ListLots, page by page) and replay each of its decisions."""
    listed: list[pb.Lot] = []
    token = ""
    while True:
        page = await lots.ListLots(pb.ListLotsRequest(page_size=1000, page_token=token))
        listed += page.lots
        token = page.next_page_token
        if not token:
            break
    disagreements: list[str] = []
    decided = 0
    for start in range(0, len(listed), 50):
        chunk = listed[start:start + 50]
        replies = await asyncio.gather(*(
            lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot.lot_id)) for lot in chunk))
        for lot, reply in zip(chunk, replies, strict=True):
            versions = [e.decision.version for e in reply.decisions]
            decided += len(versions)
            if versions != list(range(1, len(versions) + 1)) or (
                    not versions or versions[-1] < lot.release_status.version):
                disagreements.append(f"lot {lot.lot_id}: decisions {versions}, status version "
                                     f"{lot.release_status.version}")
            disagreements += [
                f"lot {lot.lot_id} version {e.decision.version}: {e.replay.difference}"
                for e in reply.decisions if not e.replay.agrees]
    return disagreements, decided
