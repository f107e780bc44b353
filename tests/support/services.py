"""Start a service in this test process, on a fresh database and the test nats-server."""

from __future__ import annotations

import asyncio
import importlib
import uuid

from lotgate_tools.stack import NatsServer
from shared import migrations
from shared.clock import Clock
from shared.config import settings_for
from shared.runtime import RunningService
from tests.support.auth import settings_overrides
from tests.support.databases import Databases


async def start_in_process(name: str, *, databases: Databases, nats: NatsServer,
                           clock: Clock | None = None, database_url: str | None = None,
                           **overrides: object) -> RunningService:
    """`database_url` shares a database with another replica; by default a fresh one, which
    is migrated to head first (as `lotgate migrate` does before a deployment).

    The service connects as its own NATS user and signs with its key from `nats.secrets`.
    """
    bootstrap = importlib.import_module(f"services.{name}.bootstrap")
    assert nats.secrets is not None, "start the nats-server first"
    overrides = {**nats.secrets.service_settings(name), **overrides}
    if database_url is None:
        database_url = await databases.create(name)
        await migrations.migrate(name, database_url)
    settings = settings_for(name, database_url=database_url,
                            nats_url=nats.url,
                            grpc_host="127.0.0.1", grpc_port=0, outbox_poll_seconds=0.2,
                            **{**settings_overrides(), **overrides})
    running = await bootstrap.start(settings, clock=clock)
    await asyncio.wait_for(running.messaging_ready.wait(), timeout=30)
    return running


def ref(prefix: str) -> str:
    """A random reference, so that tests sharing a database and a broker never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:8].upper()}"
