"""The whole system as processes: a nats-server and the three services, driven over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.client import Lotgate
from shared.stack import SERVICES, Stack, free_port
from tests.support.databases import Databases

INSTRUMENTS = (("FTIR-1", "FTIR"), ("HPLC-1", "HPLC"), ("BACT-1", "BacT/ALERT"))


@pytest.fixture(scope="module")
async def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    urls = {name: await databases.create(f"e2e_{name}") for name in SERVICES}
    running = Stack(workdir, database_urls=urls, ports={n: free_port() for n in SERVICES},
                    extra_env={"LOTGATE_OUTBOX_POLL_SECONDS": "0.2"})
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def lotgate(stack: Stack) -> AsyncIterator[Lotgate]:
    async with Lotgate.connect({name: stack.address(name) for name in SERVICES}) as client:
        # The instruments the tests post as: registered and within calibration.
        for instrument, kind in INSTRUMENTS:
            await client.register_instrument(instrument, type=kind)
        yield client
