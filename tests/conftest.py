"""Fixtures that give tests real servers: a nats-server of their own and real databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lotgate_tools.stack import NatsServer
from tests.support.databases import Databases, choose_admin_url
from tests.support.outcomes import reject_in_ci

# --validation-report DIR writes the requirements traceability matrix (make validation-report).
pytest_plugins = ["tests.support.validation"]
FAULTS = Path(__file__).parent / "faults"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fault suite (tests/faults) runs only when named (`make test-faults`): it takes
    minutes, and CI runs it as a step of its own, so `make test` does not run it twice."""
    if collection_path == FAULTS and not any(
            Path(arg.split("::")[0]).resolve().is_relative_to(FAULTS)
            for arg in config.args):
        return True
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped, xfailed or xpassed test fails the run (see tests.support.outcomes)."""
    reject_in_ci(session)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lotgate")


@pytest.fixture(scope="session")
async def databases(workdir: Path) -> AsyncIterator[Databases]:
    admin_url, container = choose_admin_url()
    dbs = Databases(admin_url=admin_url, workdir=workdir)
    yield dbs
    await dbs.drop_all()
    if container is not None:
        container.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def nats_server(workdir: Path) -> AsyncIterator[NatsServer]:
    """One nats-server for the session (JetStream on disk, sync_interval always)."""
    server = NatsServer(workdir / "nats-session")
    await server.start()
    yield server
    await server.stop()
