"""Real databases for the tests: PostgreSQL when DATABASE_URL is set (CI), else a
testcontainers PostgreSQL when a Docker engine answers, else SQLite files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url


class Databases:
    """Hands out a fresh, empty database per call and drops them all at the end."""

    def __init__(self, *, admin_url: str | None, workdir: Path) -> None:
        self.admin_url = admin_url
        self.workdir = workdir
        self._created: list[str] = []

    @property
    def kind(self) -> str:
        return "postgresql" if self.admin_url else "sqlite"

    async def create(self, purpose: str) -> str:
        """A new database's SQLAlchemy URL."""
        name = f"lg_{purpose}_{uuid.uuid4().hex[:10]}"
        if self.admin_url is None:
            return f"sqlite+aiosqlite:///{self.workdir / f'{name}.db'}"
        conn = await asyncpg.connect(self._dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self._created.append(name)
        url = make_url(self.admin_url).set(drivername="postgresql+asyncpg", database=name)
        return url.render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        if self.admin_url is None or not self._created:
            return
        conn = await asyncpg.connect(self._dsn())
        try:
            for name in self._created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        self._created.clear()

    def _dsn(self) -> str:
        url = make_url(self.admin_url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)


def _docker_postgres() -> tuple[str, object] | None:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return None
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None)
    container.start()
    return container.get_connection_url(), container


def choose_admin_url() -> tuple[str | None, object | None]:
    """(admin URL or None for SQLite, a container to stop or None)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, None
    found = _docker_postgres()
    if found:
        return found
    if os.environ.get("CI"):
        raise RuntimeError("CI must test against PostgreSQL: set DATABASE_URL")
    return None, None
