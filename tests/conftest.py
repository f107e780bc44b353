"""Fixtures that give tests real servers: a nats-server of their own and real databases."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.stack import NatsServer
from tests.support.databases import Databases, choose_admin_url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test means a server was missing: that is a failure, not a pass."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
