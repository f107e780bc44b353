"""A PostgreSQL cluster of the fault suite's own, which it may stop like a crash and start.

Made with the machine's PostgreSQL binaries (initdb into a temporary directory, trust
auth on a free loopback port), else a testcontainers PostgreSQL when a Docker engine
answers. With neither, `start` raises: the fault suite must not pass by testing nothing.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from lotgate_tools.stack import free_port, wait_for_port


def _binaries() -> Path | None:
    """The newest PostgreSQL bin directory on this machine (Debian layout, or PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


@dataclass
class PgCluster:
    """`url(db)` for the services; `crash()` stops it with `-m immediate` (no checkpoint,
    clients cut off: crash recovery on the next start); `start()` brings it back."""

    workdir: Path
    port: int = 0
    _bin: Path | None = None
    _user: str | None = None
    _container: object | None = None
    crashes: int = field(default=0)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        assert self._bin is not None
        command = [str(self._bin / args[0]), *args[1:]]
        if self._user:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=120, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")

    async def setup(self) -> None:
        self.port = self.port or free_port()
        self._bin = _binaries()
        if self._bin is None:
            self._container = _container(self.port)
            if self._container is None:
                raise RuntimeError("the fault suite needs PostgreSQL binaries (initdb, pg_ctl) "
                                   "or a Docker engine; found neither")
            await wait_for_port(self.port, timeout=60)
            return
        # Its own directory under the system's temp dir: as root, the cluster runs as the
        # postgres user, who cannot enter pytest's private (0700) temp dirs.
        self.workdir = Path(tempfile.mkdtemp(prefix="lotgate-faults-pg-"))
        data = self.workdir / "pgdata"
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        await asyncio.to_thread(self._run, "initdb", "-D", str(data), "-U", "postgres",
                                "-A", "trust", "--no-sync", "-E", "UTF8")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.workdir}'\nmax_connections = 200\n"
                       "fsync = on\n")
        await self.start()

    async def start(self) -> None:
        if self._container is not None:
            await asyncio.to_thread(self._container.get_wrapped_container().start)  # type: ignore[attr-defined]
        else:
            await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.workdir / "pgdata"),
                                    "-l", str(self.workdir / "postgres.log"), "-w", "start")
        await self._until_accepting()

    async def crash(self) -> None:
        """Stop at once: no shutdown checkpoint, every connection cut."""
        self.crashes += 1
        if self._container is not None:
            await asyncio.to_thread(self._container.get_wrapped_container().kill)  # type: ignore[attr-defined]
            return
        await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.workdir / "pgdata"),
                                "-m", "immediate", "-w", "stop")

    async def stop(self) -> None:
        if self._container is not None:
            await asyncio.to_thread(self._container.stop)  # type: ignore[attr-defined]
            return
        if (self.workdir / "pgdata" / "postmaster.pid").exists():
            await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.workdir / "pgdata"),
                                    "-m", "fast", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def _until_accepting(self) -> None:
        for _ in range(600):
            try:
                conn = await asyncpg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", timeout=2)
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            return
        raise TimeoutError(f"PostgreSQL on port {self.port} does not accept connections")


def _container(port: int) -> object | None:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return None
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None,
                                  username="postgres", password="postgres")
    container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    container.with_bind_ports(5432, port)
    container.start()
    return container
