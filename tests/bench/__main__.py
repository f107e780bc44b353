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
from lotgate_tools.client import DEFAULT_SITE, Lotgate
from lotgate_tools.stack import SERVICES, Stack, free_port, nats_server_binary, wait_for_port
from tests.bench import phases
from tests.bench.load import (
    CpuMeter,
    Samples,
    Schedule,
    WriteWindow,
    client_gc_paused,
    cpu_ms_per_item,
    cpu_ms_text,
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
CPU_PER_RESULT_MS = 3.5  # all the services' processes together, per result applied
BATCH_RATE = 2000.0
RECEIVE_RATE = 400.0
RELEASE_P99_MS = {200.0: 50.0, 100.0: 25.0}  # by total posting rate; other rates: reference
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
                        "first), each with its own lots and followed by a watch (200,100)")
    p.add_argument("--poll-rates", type=lambda s: [float(r) for r in s.split(",") if r],
                   default=[100.0],
                   help="comma-separated rates of row 5p, the same followed by polling "
                        "(reference), each with its own lots (100; empty: none)")
    p.add_argument("--batch-seconds", type=float, default=8.0,
                   help="seconds of RecordResults calls for rows 4d-4f (8)")
    p.add_argument("--batch-concurrency", type=int, default=4,
                   help="RecordResults calls in flight, rows 4d-4f (4)")
    p.add_argument("--plate-lots", type=int, default=32,
                   help="lots per RecordResults call, three passing results each (32: a "
                        "plate of 96 results)")
    p.add_argument("--batch-lots", type=int, default=3072,
                   help="fresh lots for rows 4d-4f, all of one supplier site and material, "
                        "received in row 7; the posting stops early when they run out "
                        "(3072)")
    p.add_argument("--receive-concurrency", type=int, default=32,
                   help="ReceiveLot calls in flight, row 7 (32)")
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


def _cpu_row(number: str, rows: str, outcome: phases.RecordOutcome,
             window: WriteWindow) -> Row:
    """CPU per result applied end to end, of the services' side, over the write window."""
    unsettled = set(outcome.unsettled)
    applied = sum(len(tests) for lot, tests in outcome.accepted.items() if lot not in unsettled)
    total, each = cpu_ms_per_item(window.meter.seconds, applied)
    client, _ = cpu_ms_per_item(window.meter.seconds, applied, ("client",))
    late = outcome.last_decision - window.closed
    closed = (f"closed {-late:.2f} s after the last decision, when the services were idle "
              f"and a GetReleaseStatuses read found every lot applied (read "
              f"{window.asked} time{'s' if window.asked != 1 else ''})" if late <= 0 else
              f"UNDERCOUNTED: closed {late:.2f} s before the last decision, the lots service's "
              "CPU is undercounted")
    return Row(
        number, f"CPU per result of {rows}: CPU seconds of the results, lots and suppliers "
                "services, nats-server and PostgreSQL (its processes and the benchmark's "
                "backends) together, from the first post until they were idle after the "
                "last decision, / results applied end to end; the driver ('client'), "
                "other processes ('foreign') and 'kernel' not counted",
        f"**{total:.2f} ms** per result ({cpu_ms_text(each)})",
        f"<= {CPU_PER_RESULT_MS:g} ms", total <= CPU_PER_RESULT_MS,
        f"{applied:,} results applied; client {client:.2f} ms per result (not counted); "
        f"window {window.meter.wall:.2f} s, {closed}; {window.text}",
        len(unsettled) + (1 if late > 0 else 0))


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
            for (row, rate, follow), (measured, background) in zip(
                    self.release_runs(), release_sets, strict=True):
                await self.release_row(lg, measured, background, rate, row, follow)
            # Last, so that rows 1-5 run as before: fresh lots of one supplier site and
            # material (row 7), then posted a plate at a time (rows 4d-4f).
            instruments = await phases.register_plate_readers(lg)
            receipt, plate_lots = await self.receipt_row(lg)
            batch = await self.batch_rows(lg, plate_lots, instruments)
        self.memory_rows()
        # The table keeps the rows' order: the plates beside row 4, the receipts last.
        at = next(i for i, row in enumerate(self.rows) if row.number == "4c") + 1
        self.rows[at:at] = batch
        self.rows.append(receipt)

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
                        for _ in self.release_runs()]
        wanted = [lot for pool in record_pools for lot in pool] + [
            lot for measured, background in release_sets for lot in measured + background]
        progress(f"setup: receiving {len(wanted)} lots (c=32)")
        received, got = await phases.receive_lots(lg, fixture, wanted)
        progress(f"   ReceiveLot: {received.summary()}")
        self.facts.append(f"setup: ReceiveLot of {len(wanted)} lots of {fixture.pairs} "
                          "materials, each from its own supplier, at c=32 (row 7 measures "
                          "receipts): "
                          f"{received.rate:,.0f} lots/s, {_p50_p99(received)}, "
                          f"{received.error_text()}")
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
                window = WriteWindow(self.pids).open()
                outcome = await phases.record_sustained(
                    lg, self.fixture, pool, concurrency=concurrency,
                    seconds=args.record_seconds, seed=concurrency, posted_hook=window.close)
            progress(f"   applied {outcome.accepted_results} results in "
                     f"{outcome.applied_seconds:.2f} s = {outcome.applied_rate:,.0f}/s; "
                     f"{len(outcome.unsettled)} lots unsettled")
            progress(f"   {window.text} (posting and applying)")
            outcomes.append((outcome, window))
        best, best_window = max(outcomes, key=lambda o: o[0].posted.rate)
        cpu = best_window.text
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
            f"{posted.error_text()}; {cpu} (posting and applying, until the services "
            "were idle)"
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
        self.rows.append(_cpu_row("4c", "rows 4a-4b", best, best_window))

    def release_runs(self) -> list[tuple[str, float, str]]:
        """Row 5's runs, (row, rate, how the client follows the lots): each rate with a
        watch, then the polling reference."""
        runs = [("5" if i == 0 else f"5{chr(ord('a') + i)}", rate, "watch")
                for i, rate in enumerate(self.args.release_rates)]
        return runs + [("5p", rate, "poll") for rate in self.args.poll_rates]

    async def release_row(self, lg: Lotgate, measured: list[str], background: list[str],
                          rate: float, row: str, follow: str) -> None:
        """Row 5: the last passing result -> RELEASED, at a steady total rate."""
        progress(f"{row}. result -> RELEASED: {len(measured)} lots, results posted at "
                 f"{rate:g}/s in total, followed by {follow}")
        clocked = CpuMeter(self.pids)
        with client_gc_paused():
            meter = CpuMeter(self.pids).start()
            rel = await phases.release_latency(lg, self.fixture, measured, background,
                                               rate=rate, seed=5, follow=follow,
                                               meter=clocked)
            cpu = meter.stop()
        # CPU per result at this rate, summed as in 4c, over the posts at `rate` alone.
        per_result, each = cpu_ms_per_item(clocked.seconds, rel.posts.count)
        lat = rel.latency
        target = RELEASE_P99_MS.get(rate) if follow == "watch" else None
        progress(f"   latency: {lat.summary()}")
        progress(f"   RecordResult during the phase: {rel.posts.summary()}")
        parts = "; ".join(f"{label} {_p50_p99(part)}" for label, part in (
            ("issue -> recorded_at", rel.to_recorded),
            ("recorded_at -> decided_at", rel.to_decided),
            ("decided_at -> RELEASED seen", rel.to_seen)))
        progress(f"   where the time goes: {parts}")
        progress(f"   {cpu}")
        progress(f"   CPU per result at {rate:g}/s: {per_result:.2f} ms ({cpu_ms_text(each)})")
        seen = ("pushed by a WatchReleaseStatus stream on the measured lots (opened before "
                "the clock starts), as a warehouse is told" if follow == "watch" else
                "GetReleaseStatus shows it, each lot polled every 2 ms from its "
                "RecordResult's answer, at most 1,000 polls/s in all (reference: the "
                "polls are load of their own)")
        self.rows.append(Row(
            row, f"Last passing result (sterility) -> RELEASED {seen}: "
                 f"{lat.count + lat.failures} lots, results posted open loop at "
                 f"{rel.rate:g}/s in total (1 in 3 releases a measured lot)",
            f"p99 **{_ms(lat.pct_ms(0.99))}** (p50 {_ms(lat.pct_ms(0.5))}, "
            f"max {_ms(lat.max_ms)}); CPU per result {per_result:.2f} ms "
            f"({cpu_ms_text(each)})",
            f"p99 <= {target:g} ms at {rate:g}/s" if target else "reference",
            lat.pct_ms(0.99) <= target if target else None,
            f"stated {rel.rate:g} results/s, issued {rel.schedule.issue_rate:,.0f}/s; "
            f"{lat.error_text()}; every RecordResult of the phase: {_p50_p99(rel.posts)}, "
            f"{rel.posts.error_text()}; split by the services' clocks: {parts}; "
            f"{sum(rel.follow_errors.values())} {follow} errors; CPU per result: the "
            f"services' processes (as 4c) from the first post at {rate:g}/s until the "
            f"last measured lot was seen, / the {rel.posts.count:,} results posted then; "
            f"the whole phase, setting up included: {cpu}",
            lat.failures + rel.posts.failures))

    async def receipt_row(self, lg: Lotgate) -> tuple[Row, list[str]]:
        """Row 7: ReceiveLot of lots of one supplier site and material; the lots received
        (and known to the results service), for rows 4d-4f."""
        args, c = self.args, self.args.receive_concurrency
        lots = self.fixture.new_lots(args.batch_lots, pair=0)
        supplier, material = self.fixture.pair(0)
        progress(f"7. ReceiveLot closed loop, c={c}: {len(lots)} lots of one supplier site "
                 "and material")
        with client_gc_paused():
            window = WriteWindow(self.pids).open()
            received, got = await phases.receive_lots(lg, self.fixture, lots, concurrency=c)
            # Done when the results service has heard of the last lots received (it
            # consumes the receipts in about their order).
            await window.close(lambda: phases.known_to_results(lg, got[-c:]))
        progress(f"   {received.summary()}")
        progress(f"   {window.text}")
        total, each = cpu_ms_per_item(window.meter.seconds, len(got))
        client, _ = cpu_ms_per_item(window.meter.seconds, len(got), ("client",))
        unknown = set(await phases.wait_known_to_results(lg, got))
        received_set = set(got)
        row = Row(
            "7", f"ReceiveLot closed loop, c={c}: {len(lots):,} lots of ONE supplier site and "
                 f"material ({supplier} at site {DEFAULT_SITE}, {material}), the lots of rows "
                 "4d-4f",
            f"**{received.rate:,.0f} lots/s**; {_p50_p99(received)}; CPU per lot "
            f"**{total:.2f} ms** ({cpu_ms_text(each)})",
            f">= {RECEIVE_RATE:g} lots/s", received.rate >= RECEIVE_RATE,
            f"{received.count:,} lots received, {received.error_text()}; CPU per lot: the "
            "CPU seconds of the results, lots and suppliers services, nats-server and "
            "PostgreSQL together, from the first call until they were idle and the results "
            f"service had heard of the last {c} lots received (asked {window.asked} "
            f"time{'s' if window.asked != 1 else ''}), / lots received; client "
            f"{client:.2f} ms per "
            f"lot (not counted); {len(unknown)} lots never reached the results service; "
            f"{window.text}", received.failures)
        return row, [lot for lot in lots if lot in received_set and lot not in unknown]

    async def batch_rows(self, lg: Lotgate, lots: list[str], instruments: list[str]
                         ) -> list[Row]:
        """Rows 4d-4f: RecordResults of a plate per call, back to back, then applied."""
        args, c = self.args, self.args.batch_concurrency
        per_call = 3 * args.plate_lots
        progress(f"4d. RecordResults closed loop, c={c}, {args.batch_seconds:g} s, "
                 f"{per_call} passing results per call over {len(lots)} lots")
        with client_gc_paused():
            window = WriteWindow(self.pids).open()
            outcome = await phases.record_batches(
                lg, self.fixture, lots, instruments, per_plate=args.plate_lots,
                concurrency=c, seconds=args.batch_seconds, seed=4, posted_hook=window.close)
        posted = outcome.posted
        progress(f"   applied {outcome.accepted_results} results in "
                 f"{outcome.applied_seconds:.2f} s = {outcome.applied_rate:,.0f}/s; "
                 f"{len(outcome.unsettled)} lots unsettled")
        progress(f"   {window.text} (posting and applying)")
        accepted_rate = outcome.accepted_results / posted.elapsed
        plates = len(lots) // args.plate_lots
        early = (f"; every one of the {plates} prepared plates was posted in "
                 f"{posted.elapsed:.2f} s, before the {args.batch_seconds:g} s were up "
                 "(more --batch-lots would measure longer)"
                 if posted.count + posted.failures >= plates else "")
        lag = outcome.applied_seconds - posted.elapsed
        return [
            Row("4d", f"RecordResults closed loop, c={c}, {args.batch_seconds:g} s, "
                      f"{per_call} passing results per call (a plate: {args.plate_lots} fresh "
                      "lots x 3 tests, one instrument): accepted by the results service",
                f"**{accepted_rate:,.0f} results/s** ({posted.rate:,.1f} calls/s); per call "
                f"{_p50_p99(posted)}",
                f">= {BATCH_RATE:,.0f} results/s", accepted_rate >= BATCH_RATE,
                f"{posted.count:,} calls, {outcome.accepted_results:,} results over "
                f"{len(outcome.accepted):,} lots, {posted.error_text()}{early}; "
                f"{window.text} (posting and applying, until the services were idle)",
                posted.failures),
            Row("4e", "... applied by the lots service, end to end: from the first call to "
                      "the last decision (every lot of the plates RELEASED)",
                f"**{outcome.applied_rate:,.0f} results/s** ({outcome.accepted_results:,} in "
                f"{outcome.applied_seconds:.2f} s, the last {lag:.2f} s after the last call)",
                f">= {BATCH_RATE:,.0f} results/s",
                outcome.applied_rate >= BATCH_RATE and not outcome.unsettled,
                f"{outcome.released_lots:,} lots released; {len(outcome.unsettled)} lots not "
                "in their expected state within 60 s; the last decision time is the lots "
                f"service's decided_at; polling saw every lot settled "
                f"{outcome.observed_seconds:.2f} s after the first call; "
                f"{sum(outcome.poll_errors.values())} poll errors", len(outcome.unsettled)),
            _cpu_row("4f", "rows 4d-4e", outcome, window),
        ]

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
