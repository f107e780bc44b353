"""`python -m tests.bench` (`make bench`): one run, one markdown table.

PostgreSQL when DATABASE_URL is set (three fresh databases, dropped at the end), else
SQLite files in a temporary directory. The table is printed and written to
bench-results/latest.md. The driver is this one process: grpc.aio on uvloop when
available, talking to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import grpc

from lotgate.lots.v1 import lots_pb2_grpc
from lotgate_tools import tokens
from lotgate_tools.client import Lotgate
from lotgate_tools.stack import SERVICES, Stack, free_port, nats_server_binary, wait_for_port
from tests.bench import phases
from tests.bench.load import (
    CpuMeter,
    Samples,
    Schedule,
    client_gc_paused,
    percentile,
    progress,
    vm_hwm_mb,
    wait_for_quiet,
)
from tests.bench.report import Row, render
from tests.support.databases import Databases

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "bench-results" / "latest.md"

# Targets.
READ_RATIO = 0.5
OPEN_P99_MS = 5.0
RECORD_RATE = 400.0
RELEASE_P99_MS = 25.0
MEMORY_MB = 200.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=32,
                   help="calls in flight for the closed-loop reads, rows 1-2 (32)")
    p.add_argument("--read-seconds", type=float, default=5.0)
    p.add_argument("--read-lots", type=int, default=1000)
    p.add_argument("--open-rate", type=float, default=1000.0)
    p.add_argument("--open-seconds", type=float, default=5.0)
    p.add_argument("--record-concurrency", default="32",
                   help="comma-separated; each value gets its own run and lots, the best "
                        "is reported (e.g. 16,32,64)")
    p.add_argument("--record-seconds", type=float, default=8.0)
    p.add_argument("--record-lots", type=int, default=2000,
                   help="lots per RecordResult run (three results each)")
    p.add_argument("--release-lots", type=int, default=250)
    p.add_argument("--release-rates", type=lambda s: [float(r) for r in s.split(",")],
                   default=[200.0, 100.0],
                   help="comma-separated total posting rates for row 5 (the target's rate "
                        "first), each with its own lots (200,100)")
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (logs, SQLite files, JetStream store)")
    args = p.parse_args(argv)
    args.record_concurrency = [int(c) for c in str(args.record_concurrency).split(",") if c]
    return args


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, text=True,
                               capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def _nats_version() -> str:
    try:
        out = subprocess.run([nats_server_binary(), "--version"], text=True,
                             capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError, FileNotFoundError):
        return "nats-server"
    return out or "nats-server"


async def _postgres_version(admin_url: str) -> str:
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn)
    except Exception:
        return "PostgreSQL"
    try:
        return f"PostgreSQL {await conn.fetchval('SHOW server_version')}"
    finally:
        await conn.close()


@dataclass
class EchoServer:
    port: int
    process: asyncio.subprocess.Process

    @classmethod
    async def start(cls, workdir: Path) -> EchoServer:
        port = free_port()
        log = open(workdir / "echo.log", "ab")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.echo", str(port), cwd=ROOT,
            stdout=log, stderr=log)
        log.close()
        echo = cls(port, process)
        try:
            await wait_for_port(port, timeout=15)
        except BaseException:
            await echo.stop()
            raise
        return echo

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def _pids(stack: Stack) -> dict[str, int]:
    pids = {name: s.pid for name, s in stack.services.items() if s.pid}
    if stack.nats and stack.nats.process:
        pids["nats"] = stack.nats.process.pid
    return pids


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _p50_p99(samples: Samples) -> str:
    return f"p50 {_ms(samples.pct_ms(0.5))}, p99 {_ms(samples.pct_ms(0.99))}"


def _read_row(samples: Samples) -> str:
    return f"{samples.rate:,.0f} calls/s; {_p50_p99(samples)}"


def _lag_p99_ms(schedule: Schedule) -> float:
    return percentile(sorted(schedule.lags), 0.99) * 1000 if schedule.lags else 0.0


def _open_result(samples: Samples) -> str:
    return (f"p99 **{_ms(samples.pct_ms(0.99))}** (p50 {_ms(samples.pct_ms(0.5))}, "
            f"max {_ms(samples.max_ms)}); achieved {samples.rate:,.0f} calls/s")


class Bench:
    """The phases in order against one started stack, each adding its rows."""

    def __init__(self, stack: Stack, echo: EchoServer, args: argparse.Namespace) -> None:
        self.stack = stack
        self.echo = echo
        self.args = args
        self.rows: list[Row] = []
        self.facts: list[str] = []
        self.fixture = phases.Fixture(uuid.uuid4().hex[:6].upper())
        self.pids = _pids(stack)
        self.echo_rate = 0.0
        self.echo_open: Row | None = None

    async def run(self) -> None:
        args = self.args
        addresses = {name: self.stack.address(name) for name in SERVICES}
        async with Lotgate.connect(addresses, self.stack.acting()) as lg:
            progress("setup: specifications and qualified suppliers")
            await phases.set_up_materials(lg, self.fixture)
            busy = await wait_for_quiet(within=30.0)
            self.facts.append(f"machine busy just before row 1 (1 s sample): "
                              f"{busy * 100:.0f}% of all cores")
            try:
                await self.echo_rows()
            finally:
                await self.echo.stop()
            record_pools, release_sets = await self.receive_lots(lg)
            await self.read_rows(record_pools[0][:args.read_lots])
            await self.record_rows(lg, record_pools)
            for index, (rate, (measured, background)) in enumerate(
                    zip(args.release_rates, release_sets, strict=True)):
                watcher = phases.WatchLatency(lg.lots, measured[:1000]) if index == 0 else None
                await self.release_row(lg, measured, background, rate,
                                       "5" if index == 0 else f"5{chr(ord('a') + index)}")
                if watcher is not None:
                    self.watch_row(await watcher.stop(), len(measured[:1000]), rate)
        self.memory_rows()

    async def echo_rows(self) -> None:
        """Row 1, and the echo server under row 3's open loop as a reference."""
        args, c = self.args, self.args.concurrency
        lots = [f"LOT-{self.fixture.run}-{i:05d}" for i in range(args.read_lots)]
        progress(f"1. echo server: GetReleaseStatus closed loop, c={c}, {args.read_seconds:g} s")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.echo.port}") as channel:
            stub = lots_pb2_grpc.LotServiceStub(channel)
            await channel.channel_ready()
            pids = {**self.pids, "echo": self.echo.process.pid}
            with client_gc_paused():
                meter = CpuMeter(pids).start()
                echoed = await phases.read_closed_loop(
                    stub, phases.read_requests(lots, 400_000, seed=1), concurrency=c,
                    seconds=args.read_seconds)
                cpu = meter.stop()
            progress(f"   {echoed.summary()}")
            progress(f"   {cpu}")
            self.echo_rate = echoed.rate
            self.rows.append(Row(
                "1", "Bare grpc.aio echo server (own process, uvloop, constant realistic "
                     f"answer): GetReleaseStatus closed loop, c={c}, {args.read_seconds:g} s",
                _read_row(echoed), "reference", None,
                f"{echoed.count:,} calls, {echoed.error_text()}; {cpu}", echoed.failures))

            progress(f"   echo server: open loop at {args.open_rate:g}/s for "
                     f"{args.open_seconds:g} s (reference for row 3)")
            requests = phases.read_requests(lots, int(args.open_rate * args.open_seconds), 2)
            with client_gc_paused():
                meter = CpuMeter(pids).start()
                opened, schedule = await phases.read_open_loop(
                    stub, requests, rate=args.open_rate, seconds=args.open_seconds)
                cpu = meter.stop()
            progress(f"   {opened.summary()}")
            self.echo_open = Row(
                "3r", "Reference for row 3: the echo server under the same open loop",
                _open_result(opened), f"p99 <= {OPEN_P99_MS:g} ms",
                opened.pct_ms(0.99) <= OPEN_P99_MS,
                f"{opened.count:,} of {len(requests):,} calls answered, "
                f"{opened.error_text()}; client dispatch lag p99 "
                f"{_lag_p99_ms(schedule):.2f} ms; {cpu}", opened.failures)

    async def receive_lots(self, lg: Lotgate
                           ) -> tuple[list[list[str]], list[tuple[list[str], list[str]]]]:
        """The lots every later phase uses, received now so no phase pays for it."""
        args, fixture = self.args, self.fixture
        record_pools = [fixture.new_lots(args.record_lots) for _ in args.record_concurrency]
        release_sets = [(fixture.new_lots(args.release_lots),
                         fixture.new_lots((2 * args.release_lots + 2) // 3 + 1))
                        for _ in args.release_rates]
        wanted = [lot for pool in record_pools for lot in pool] + [
            lot for measured, background in release_sets for lot in measured + background]
        progress(f"setup: receiving {len(wanted)} lots (c=32)")
        meter = CpuMeter(self.pids).start()
        received, got = await phases.receive_lots(lg, fixture, wanted)
        cpu = meter.stop()
        # CPU per lot of the lots service and PostgreSQL: comparable on a busy machine.
        per_lot = {name: meter.shares.get(name, 0.0) / max(received.rate, 1e-9) * 1000
                   for name in ("lots", "postgres")}
        progress(f"   ReceiveLot: {received.summary()}")
        progress(f"   {cpu}")
        self.facts.append(f"setup: ReceiveLot of {len(wanted)} lots at c=32: "
                          f"{received.rate:,.0f} lots/s, {_p50_p99(received)}, "
                          f"{received.error_text()}; CPU per lot: lots "
                          f"{per_lot['lots']:.2f} ms, postgres {per_lot['postgres']:.2f} ms; "
                          f"{cpu}")
        unknown = await phases.wait_known_to_results(lg, got)
        if unknown:
            progress(f"   {len(unknown)} lots never reached the results service")
        usable = set(got) - set(unknown)
        return ([[lot for lot in pool if lot in usable] for pool in record_pools],
                [([lot for lot in measured if lot in usable],
                  [lot for lot in background if lot in usable])
                 for measured, background in release_sets])

    async def read_rows(self, read_lots: list[str]) -> None:
        """Rows 2 and 3: GetReleaseStatus on the lots service, closed and open loop."""
        args, c = self.args, self.args.concurrency
        progress(f"2. lots service: GetReleaseStatus closed loop over {len(read_lots)} lots, "
                 f"c={c}, {args.read_seconds:g} s")
        async with tokens.channel(self.stack.address("lots"), self.stack.acting()) as channel:
            stub = lots_pb2_grpc.LotServiceStub(channel)
            await channel.channel_ready()
            with client_gc_paused():
                meter = CpuMeter(self.pids).start()
                read = await phases.read_closed_loop(
                    stub, phases.read_requests(read_lots, 400_000, seed=1), concurrency=c,
                    seconds=args.read_seconds)
                cpu = meter.stop()
            progress(f"   {read.summary()}")
            progress(f"   {cpu}")
            ratio = read.rate / self.echo_rate if self.echo_rate else 0.0
            self.rows.append(Row(
                "2", f"Lots service GetReleaseStatus: same client, c={c}, "
                     f"{args.read_seconds:g} s, {len(read_lots)} real lots in random order",
                f"{_read_row(read)}; **{ratio:.2f}x** echo", f">= {READ_RATIO}x echo",
                ratio >= READ_RATIO, f"{read.count:,} calls, {read.error_text()}; {cpu}",
                read.failures))

            progress(f"3. lots service: GetReleaseStatus open loop at {args.open_rate:g}/s "
                     f"for {args.open_seconds:g} s")
            requests = phases.read_requests(read_lots, int(args.open_rate * args.open_seconds),
                                            seed=2)
            with client_gc_paused():
                meter = CpuMeter(self.pids).start()
                opened, schedule = await phases.read_open_loop(
                    stub, requests, rate=args.open_rate, seconds=args.open_seconds)
                cpu = meter.stop()
        progress(f"   {opened.summary()}")
        self.rows.append(Row(
            "3", f"Lots service GetReleaseStatus open loop at {args.open_rate:,.0f} calls/s "
                 f"for {args.open_seconds:g} s, latency from each call's scheduled start",
            _open_result(opened), f"p99 <= {OPEN_P99_MS:g} ms",
            opened.pct_ms(0.99) <= OPEN_P99_MS,
            f"{opened.count:,} of {len(requests):,} calls answered, {opened.error_text()}; "
            f"client dispatch lag p99 {_lag_p99_ms(schedule):.2f} ms; {cpu}",
            opened.failures))
        if self.echo_open is not None:
            self.rows.append(self.echo_open)

        progress(f"3b. lots service: GetReleaseStatuses of {len(read_lots)} lots, closed loop "
                 f"c=4, {args.read_seconds:g} s")
        async with tokens.channel(self.stack.address("lots"), self.stack.acting()) as channel:
            stub = lots_pb2_grpc.LotServiceStub(channel)
            with client_gc_paused():
                meter = CpuMeter(self.pids).start()
                batch = await phases.batch_read_closed_loop(stub, read_lots, concurrency=4,
                                                            seconds=args.read_seconds)
                cpu = meter.stop()
        progress(f"   {batch.summary()}")
        self.rows.append(Row(
            "3b", f"Lots service GetReleaseStatuses of {len(read_lots):,} lots per call "
                  f"(a pick list), closed loop c=4, {args.read_seconds:g} s",
            f"{batch.rate:,.0f} calls/s ({batch.rate * len(read_lots):,.0f} lots/s); "
            f"{_p50_p99(batch)}", "reference", None,
            f"{batch.count:,} calls, {batch.error_text()}; {cpu}", batch.failures))

    async def record_rows(self, lg: Lotgate, pools: list[list[str]]) -> None:
        """Row 4: RecordResult back to back, then until the lots service applied it all."""
        args = self.args
        outcomes = []
        for concurrency, pool in zip(args.record_concurrency, pools, strict=True):
            progress(f"4. RecordResult closed loop, c={concurrency}, {args.record_seconds:g} s, "
                     f"passing results over {len(pool)} lots")
            with client_gc_paused():
                meter = CpuMeter(self.pids).start()
                outcome = await phases.record_sustained(
                    lg, self.fixture, pool, concurrency=concurrency,
                    seconds=args.record_seconds, seed=concurrency)
                cpu = meter.stop()
            progress(f"   applied {outcome.accepted_results} results in "
                     f"{outcome.applied_seconds:.2f} s = {outcome.applied_rate:,.0f}/s; "
                     f"{len(outcome.unsettled)} lots unsettled")
            progress(f"   {cpu} (posting and applying)")
            outcomes.append((outcome, cpu))
        best, cpu = max(outcomes, key=lambda o: o[0].posted.rate)
        posted = best.posted
        others = "; ".join(f"c={o.concurrency}: {o.posted.rate:,.0f}/s posted, "
                           f"{o.applied_rate:,.0f}/s applied" for o, _ in outcomes
                           if o is not best)
        self.rows.append(Row(
            "4a", f"RecordResult closed loop, c={best.concurrency}, {args.record_seconds:g} s: "
                  "accepted by the results service",
            f"**{posted.rate:,.0f} results/s**; {_p50_p99(posted)}",
            f">= {RECORD_RATE:g} results/s", posted.rate >= RECORD_RATE,
            f"{posted.count:,} passing results over {len(best.accepted):,} lots, "
            f"{posted.error_text()}; {cpu} (posting and applying)"
            + (f"; also {others}" if others else ""), posted.failures))
        lag = best.applied_seconds - posted.elapsed
        self.rows.append(Row(
            "4b", "... applied by the lots service, end to end: from the first post to the "
                  "last decision (every lot with three results RELEASED)",
            f"**{best.applied_rate:,.0f} results/s** ({best.accepted_results:,} in "
            f"{best.applied_seconds:.2f} s, the last {lag:.2f} s after the last post)",
            f">= {RECORD_RATE:g} results/s",
            best.applied_rate >= RECORD_RATE and not best.unsettled,
            f"{best.released_lots:,} lots released; {len(best.unsettled)} lots not in their "
            "expected state within 60 s; the last decision time is the lots service's "
            f"decided_at; polling saw every lot settled {best.observed_seconds:.2f} s after "
            f"the first post; {sum(best.poll_errors.values())} poll errors",
            len(best.unsettled)))

    async def release_row(self, lg: Lotgate, measured: list[str], background: list[str],
                          rate: float, row: str) -> None:
        """Row 5: the last passing result -> RELEASED, at a steady total rate."""
        progress(f"{row}. result -> RELEASED: {len(measured)} lots, results posted at "
                 f"{rate:g}/s in total")
        with client_gc_paused():
            meter = CpuMeter(self.pids).start()
            rel = await phases.release_latency(lg, self.fixture, measured, background,
                                               rate=rate, seed=5)
            cpu = meter.stop()
        lat = rel.latency
        progress(f"   latency: {lat.summary()}")
        progress(f"   RecordResult during the phase: {rel.posts.summary()}")
        parts = "; ".join(f"{label} {_p50_p99(part)}" for label, part in (
            ("issue -> recorded_at", rel.to_recorded),
            ("recorded_at -> decided_at", rel.to_decided),
            ("decided_at -> seen RELEASED", rel.to_seen)))
        progress(f"   where the time goes: {parts}")
        progress(f"   {cpu}")
        self.rows.append(Row(
            row, "Last passing result (sterility) -> GetReleaseStatus shows RELEASED: "
                 f"{lat.count + lat.failures} lots, results posted open loop at "
                 f"{rel.rate:g}/s in total (1 in 3 releases a measured lot)",
            f"p99 **{_ms(lat.pct_ms(0.99))}** (p50 {_ms(lat.pct_ms(0.5))}, "
            f"max {_ms(lat.max_ms)})",
            f"p99 <= {RELEASE_P99_MS:g} ms", lat.pct_ms(0.99) <= RELEASE_P99_MS,
            f"stated {rel.rate:g} results/s, issued {rel.schedule.issue_rate:,.0f}/s; "
            f"{lat.error_text()}; every RecordResult of the phase: {_p50_p99(rel.posts)}, "
            f"{rel.posts.error_text()}; split by the services' clocks: {parts}; each lot "
            f"polled every 2 ms, at most 1,000 polls/s in all "
            f"({sum(rel.poll_errors.values())} poll errors); {cpu}",
            lat.failures + rel.posts.failures))

    def watch_row(self, watched: Samples, lots: int, rate: float) -> None:
        """Row 5w: WatchReleaseStatus's change-to-delivery latency during row 5."""
        progress(f"5w. WatchReleaseStatus on {lots} lots during row 5: {watched.summary()}")
        self.rows.append(Row(
            "5w", f"WatchReleaseStatus on the {lots} lots of row 5 (one stream, results "
                  f"posted at {rate:g}/s): a decision's decided_at -> received by the watcher",
            f"p50 {_ms(watched.pct_ms(0.5))}, p99 {_ms(watched.pct_ms(0.99))} "
            f"(max {_ms(watched.max_ms)})", "reference", None,
            f"{watched.count:,} changes received, {watched.error_text()}; decided_at is the "
            "lots service's clock, on this machine", watched.failures))

    def memory_rows(self) -> None:
        """Row 6: peak resident memory of each process, at the end."""
        progress("6. peak memory (VmHWM)")
        for name in (*SERVICES, "nats"):
            pid = self.pids.get(name)
            if pid is None:
                continue
            peak = vm_hwm_mb(pid)
            progress(f"   {name}: {peak:.1f} MB")
            if name == "nats":
                self.rows.append(Row("6", "Peak memory (VmHWM) of nats-server",
                                     f"{peak:.1f} MB", details=f"pid {pid}"))
            else:
                self.rows.append(Row("6", f"Peak memory (VmHWM) of the {name} service",
                                     f"{peak:.1f} MB", f"< {MEMORY_MB:g} MB",
                                     peak < MEMORY_MB, details=f"pid {pid}"))

    def notes(self) -> list[str]:
        notes = []
        if any("WARNING" in row.details for row in self.rows):
            notes.append("WARNING: processes outside the benchmark used the CPU during some "
                         "phases (see Details); run again on an idle machine.")
        notes += [
            "Latency percentiles are nearest-rank over every successful call; a failed call "
            "is counted, never sampled. 'NO (errors)': the phase had failures.",
            "CPU is in % of one core over the phase: 'client' is this driver, 'postgres' the "
            "server's own processes and the benchmark's backends, 'foreign' every other "
            "process (other work on the machine, which distorts the numbers), 'kernel' its "
            "threads plus what no process was charged for (loopback networking, interrupts). "
            "The driver's garbage collector is paused while it measures.",
        ]
        return notes


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    admin_url = os.environ.get("DATABASE_URL") or None
    database = (f"{await _postgres_version(admin_url)} (3 fresh databases, dropped at the end)"
                if admin_url else "SQLite files in a temporary directory (WAL, synchronous=FULL)")
    facts = [
        f"when: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {_git()}",
        f"database: {database}",
        f"machine: {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; grpcio {_version('grpcio')}; "
        f"uvloop {_version('uvloop')}; {_nats_version()} (JetStream, sync_interval always)",
        "one run; driver: this one process (grpc.aio on "
        f"{type(asyncio.get_running_loop()).__module__}); services log at 'warning'",
    ]
    progress(f"database: {database}")
    busy = await wait_for_quiet()
    facts.append(f"machine busy before the run (1 s sample): {busy * 100:.0f}% of all cores "
                 "(the numbers are only meaningful on an otherwise idle machine)")
    tmp = tempfile.mkdtemp(prefix="lotgate-bench-")
    workdir = Path(tmp)
    (workdir / "data").mkdir()
    databases = Databases(admin_url=admin_url, workdir=workdir / "data")
    stack: Stack | None = None
    echo: EchoServer | None = None
    ok = False
    try:
        # Started first, before this process has any gRPC threads to fork with; idle
        # until row 1.
        echo = await EchoServer.start(workdir)
        urls = {name: await databases.create(f"bench_{name}") for name in SERVICES}
        stack = Stack(workdir / "stack", database_urls=urls,
                      ports={name: free_port() for name in SERVICES}, log_level="warning")
        progress("starting nats-server and the three services")
        await stack.start()
        bench = Bench(stack, echo, args)
        await bench.run()
        ok = True
    finally:
        if echo is not None:
            await echo.stop()
        if stack is not None:
            if not ok:
                for name, service in stack.services.items():
                    with contextlib.suppress(OSError):
                        tail = service.log_path.read_text(errors="replace")[-2000:]
                        print(f"--- {name} log ends with:\n{tail}", file=sys.stderr)
            progress("stopping the stack")
            await stack.stop()
        with contextlib.suppress(Exception):
            await databases.drop_all()
        if args.keep or not ok:
            progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    facts += bench.facts
    facts.append(f"total run time {time.perf_counter() - started:.0f} s")
    table = render("Lotgate benchmark", facts, bench.rows, bench.notes())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print()
    print(table)
    print(f"(written to {args.output})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
