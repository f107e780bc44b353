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
from shared.client import Lotgate
from shared.stack import SERVICES, Stack, free_port, nats_server_binary, wait_for_port
from tests.bench import phases
from tests.bench.load import CpuMeter, Samples, progress, vm_hwm_mb, wait_for_quiet
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
    p.add_argument("--release-rate", type=float, default=200.0)
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


def _read_row(samples: Samples) -> str:
    return (f"{samples.rate:,.0f} calls/s; p50 {_ms(samples.pct_ms(0.5))}, "
            f"p99 {_ms(samples.pct_ms(0.99))}")


async def measure(stack: Stack, echo: EchoServer, args: argparse.Namespace
                  ) -> tuple[list[Row], list[str], list[str]]:
    """Run the phases against a started stack; the table rows, setup facts and notes."""
    rows: list[Row] = []
    facts: list[str] = []
    notes: list[str] = []
    run = uuid.uuid4().hex[:6].upper()
    fixture = phases.Fixture(run)
    addresses = {name: stack.address(name) for name in SERVICES}
    pids = _pids(stack)
    c = args.concurrency

    async with Lotgate.connect(addresses) as lg:
        progress("setup: specifications and qualified suppliers")
        await phases.set_up_materials(lg, fixture)

        # 1. The yardstick, while the stack is idle.
        busy = await wait_for_quiet(within=30.0)
        facts.append(f"machine busy just before row 1 (1 s sample): {busy * 100:.0f}% "
                     "of all cores")
        progress(f"1. echo server: GetReleaseStatus closed loop, c={c}, {args.read_seconds:g} s")
        try:
            requests = phases.read_requests(
                [f"LOT-{run}-{i:05d}" for i in range(args.read_lots)], 400_000, seed=1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
                stub = lots_pb2_grpc.LotServiceStub(channel)
                await channel.channel_ready()
                meter = CpuMeter({**pids, "echo": echo.process.pid}).start()
                echoed = await phases.read_closed_loop(stub, requests, concurrency=c,
                                                       seconds=args.read_seconds)
                echo_cpu = meter.stop()
        finally:
            await echo.stop()
        progress(f"   {echoed.summary()}")
        progress(f"   {echo_cpu}")
        rows.append(Row("1", f"Bare grpc.aio echo server (own process, uvloop): "
                             f"GetReleaseStatus closed loop, c={c}, {args.read_seconds:g} s",
                        _read_row(echoed), "reference", None,
                        f"{echoed.count:,} calls, {echoed.error_text()}; {echo_cpu}",
                        echoed.failures))

        # Lots for everything after: read, record, release.
        record_pools = [fixture.new_lots(args.record_lots) for _ in args.record_concurrency]
        measured = fixture.new_lots(args.release_lots)
        background = fixture.new_lots((2 * args.release_lots + 2) // 3 + 1)
        wanted = [lot for pool in record_pools for lot in pool] + measured + background
        progress(f"setup: receiving {len(wanted)} lots (c=32)")
        received, got = await phases.receive_lots(lg, fixture, wanted)
        progress(f"   ReceiveLot: {received.summary()}")
        facts.append(f"setup: ReceiveLot of {len(wanted)} lots at c=32: "
                     f"{received.rate:,.0f} lots/s, p50 {_ms(received.pct_ms(0.5))}, "
                     f"p99 {_ms(received.pct_ms(0.99))}, {received.error_text()}")
        unknown = await phases.wait_known_to_results(lg, got)
        if unknown:
            progress(f"   {len(unknown)} lots never reached the results service")
        usable = set(got) - set(unknown)
        record_pools = [[lot for lot in pool if lot in usable] for pool in record_pools]
        measured = [lot for lot in measured if lot in usable]
        background = [lot for lot in background if lot in usable]

        # 2. The real thing, same client, same load.
        read_lots = record_pools[0][:args.read_lots]
        requests = phases.read_requests(read_lots, 400_000, seed=1)
        progress(f"2. lots service: GetReleaseStatus closed loop over {len(read_lots)} lots, "
                 f"c={c}, {args.read_seconds:g} s")
        async with grpc.aio.insecure_channel(stack.address("lots")) as channel:
            stub = lots_pb2_grpc.LotServiceStub(channel)
            await channel.channel_ready()
            meter = CpuMeter(pids).start()
            read = await phases.read_closed_loop(stub, requests, concurrency=c,
                                                 seconds=args.read_seconds)
            read_cpu = meter.stop()
            progress(f"   {read.summary()}")
            progress(f"   {read_cpu}")
            ratio = read.rate / echoed.rate if echoed.rate else 0.0
            rows.append(Row("2", f"Lots service GetReleaseStatus: same client, c={c}, "
                                 f"{args.read_seconds:g} s, {len(read_lots)} real lots in "
                                 "random order",
                            f"{_read_row(read)}; **{ratio:.2f}x** echo",
                            f">= {READ_RATIO}x echo", ratio >= READ_RATIO,
                            f"{read.count:,} calls, {read.error_text()}; {read_cpu}",
                            read.failures))

            # 3. Open loop at a fixed rate, measured from each call's due time.
            progress(f"3. lots service: GetReleaseStatus open loop at {args.open_rate:g}/s "
                     f"for {args.open_seconds:g} s")
            requests = phases.read_requests(read_lots, int(args.open_rate * args.open_seconds),
                                            seed=2)
            meter = CpuMeter(pids).start()
            opened, schedule = await phases.read_open_loop(
                stub, requests, rate=args.open_rate, seconds=args.open_seconds)
            open_cpu = meter.stop()
        progress(f"   {opened.summary()}")
        lags = sorted(schedule.lags)
        lag99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000 if lags else 0.0
        rows.append(Row("3", f"GetReleaseStatus open loop at {args.open_rate:,.0f} calls/s for "
                             f"{args.open_seconds:g} s, latency from each call's scheduled "
                             "start",
                        f"p99 **{_ms(opened.pct_ms(0.99))}** (p50 {_ms(opened.pct_ms(0.5))}, "
                        f"max {_ms(opened.max_ms)}); achieved {opened.rate:,.0f} calls/s",
                        f"p99 <= {OPEN_P99_MS:g} ms", opened.pct_ms(0.99) <= OPEN_P99_MS,
                        f"{opened.count:,} of {len(requests):,} calls answered, "
                        f"{opened.error_text()}; client dispatch lag p99 {lag99:.2f} ms; "
                        f"{open_cpu}", opened.failures))

        # 4. RecordResult sustained, then until the lots service has applied it all.
        outcomes = []
        for concurrency, pool in zip(args.record_concurrency, record_pools, strict=True):
            progress(f"4. RecordResult closed loop, c={concurrency}, {args.record_seconds:g} s, "
                     f"passing results over {len(pool)} lots")
            meter = CpuMeter(pids).start()
            outcome = await phases.record_sustained(lg, fixture, pool, concurrency=concurrency,
                                                    seconds=args.record_seconds,
                                                    seed=concurrency)
            cpu = meter.stop()
            progress(f"   applied {outcome.accepted_results} results in "
                     f"{outcome.applied_seconds:.2f} s = {outcome.applied_rate:,.0f}/s; "
                     f"{len(outcome.unsettled)} lots unsettled")
            progress(f"   {cpu} (posting and applying)")
            outcomes.append((outcome, cpu))
        best, record_cpu = max(outcomes, key=lambda o: o[0].posted.rate)
        posted = best.posted
        others = "; ".join(f"c={o.concurrency}: {o.posted.rate:,.0f}/s posted, "
                           f"{o.applied_rate:,.0f}/s applied" for o, _ in outcomes
                           if o is not best)
        rows.append(Row("4a", f"RecordResult closed loop, c={best.concurrency}, "
                              f"{args.record_seconds:g} s (accepted by the results service)",
                        f"**{posted.rate:,.0f} results/s**; p50 {_ms(posted.pct_ms(0.5))}, "
                        f"p99 {_ms(posted.pct_ms(0.99))}",
                        f">= {RECORD_RATE:g} results/s", posted.rate >= RECORD_RATE,
                        f"{posted.count:,} results over {len(best.accepted):,} lots, "
                        f"{posted.error_text()}; {record_cpu} (posting and applying)"
                        + (f"; also {others}" if others else ""), posted.failures))
        lag = best.applied_seconds - posted.elapsed
        rows.append(Row("4b", "... applied by the lots service, end to end (first post until "
                              "the last decision; every lot with three results RELEASED)",
                        f"**{best.applied_rate:,.0f} results/s** ({best.accepted_results:,} in "
                        f"{best.applied_seconds:.2f} s, {lag:.2f} s after the last post)",
                        f">= {RECORD_RATE:g} results/s", best.applied_rate >= RECORD_RATE
                        and not best.unsettled,
                        f"{best.released_lots:,} lots released; {len(best.unsettled)} lots not "
                        f"in their expected state within 60 s; polling saw all settled after "
                        f"{best.observed_seconds:.2f} s; poll errors "
                        f"{sum(best.poll_errors.values())}",
                        len(best.unsettled)))

        # 5. The last passing result -> RELEASED.
        progress(f"5. result -> RELEASED: {len(measured)} lots, results posted at "
                 f"{args.release_rate:g}/s in total")
        meter = CpuMeter(pids).start()
        rel = await phases.release_latency(lg, fixture, measured, background,
                                           rate=args.release_rate, seed=5)
        release_cpu = meter.stop()
        lat = rel.latency
        progress(f"   latency: {lat.summary()}")
        progress(f"   RecordResult during the phase: {rel.posts.summary()}")
        rows.append(Row("5", f"Last passing result (sterility) -> GetReleaseStatus shows "
                             f"RELEASED, {lat.count + lat.failures} lots, results posted "
                             f"open loop at {rel.rate:g}/s in total (1 in 3 releases a lot)",
                        f"p99 **{_ms(lat.pct_ms(0.99))}** (p50 {_ms(lat.pct_ms(0.5))}, "
                        f"max {_ms(lat.max_ms)})",
                        f"p99 <= {RELEASE_P99_MS:g} ms", lat.pct_ms(0.99) <= RELEASE_P99_MS,
                        f"stated {rel.rate:g} results/s, issued {rel.schedule.issue_rate:,.0f}/s; "
                        f"{lat.error_text()}; RecordResult p50 {_ms(rel.posts.pct_ms(0.5))}, "
                        f"p99 {_ms(rel.posts.pct_ms(0.99))}, {rel.posts.error_text()}; polled "
                        f"every 2 ms ({sum(rel.poll_errors.values())} poll errors); "
                        f"{release_cpu}", lat.failures + rel.posts.failures))

    # 6. Peak memory, at the end.
    progress("6. peak memory (VmHWM)")
    for name in (*SERVICES, "nats"):
        pid = pids.get(name)
        if pid is None:
            continue
        peak = vm_hwm_mb(pid)
        progress(f"   {name}: {peak:.1f} MB")
        if name == "nats":
            rows.append(Row("6", "Peak memory (VmHWM) of nats-server", f"{peak:.1f} MB",
                            details=f"pid {pid}"))
        else:
            rows.append(Row("6", f"Peak memory (VmHWM) of the {name} service",
                            f"{peak:.1f} MB", f"< {MEMORY_MB:g} MB", peak < MEMORY_MB,
                            details=f"pid {pid}"))
    if any("WARNING" in row.details for row in rows):
        notes.append("WARNING: processes outside the benchmark used the CPU during some "
                     "phases (see Details); run again on an idle machine.")
    notes.append("Latency percentiles are nearest-rank over every successful call; failed "
                 "calls are counted, never sampled. CPU is per process in % of one core; "
                 "'foreign' is every process outside the benchmark, 'kernel' what no process "
                 "was charged for (loopback networking, interrupts).")
    return rows, facts, notes


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
        rows, more_facts, notes = await measure(stack, echo, args)
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
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    facts += more_facts
    facts.append(f"total run time {time.perf_counter() - started:.0f} s")
    table = render("Lotgate benchmark", facts, rows, notes)
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
