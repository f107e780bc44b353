"""The fault suite: the whole system as processes on a PostgreSQL and a nats-server of its
own, broken on purpose while a seeded workload runs (`make test-faults`).

`make test` leaves this directory out (tests/conftest.py); CI runs it as its own step.
Set LOTGATE_FAULT_SEED to replay a run: every test prints the seed it used.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.postgres import PgCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
async def pg(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PgCluster]:
    """One cluster for the suite; each test makes its own databases in it."""
    cluster = PgCluster(tmp_path_factory.mktemp("pg"))
    await cluster.setup()
    yield cluster
    await cluster.stop()


@pytest.fixture
def seed() -> int:
    chosen = int(os.environ.get("LOTGATE_FAULT_SEED") or random.randrange(1, 10**6))
    print(f"fault suite seed: {chosen} (replay with LOTGATE_FAULT_SEED={chosen})")
    return chosen


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    return tmp_path / "stack"
