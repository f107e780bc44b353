"""Load primitives: closed and open loops, latency samples, CPU and memory readings.

Every loop here is bounded twice, by a count and by a deadline. Latencies come from
time.perf_counter(); a failed call is counted by its status code and is never a sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

_T0 = time.perf_counter()
# CPU of processes not part of the benchmark (in cores) above which a phase is suspect.
FOREIGN_LIMIT = 0.10
# The processes that serve a write, whose CPU per result or per lot is the write path's
# cost: everything but the driver ("client"), other work ("foreign") and "kernel".
SERVICE_SIDE = ("results", "lots", "suppliers", "nats", "postgres")


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1); nan when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Samples:
    """Latencies (seconds) of successful calls and failures by kind, over a time span."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0
    _sorted: list[float] | None = None

    def ok(self, latency: float) -> None:
        self.latencies.append(latency)
        self._sorted = None

    def fail(self, exc: BaseException | str) -> None:
        self.errors[exc if isinstance(exc, str) else error_name(exc)] += 1

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    @property
    def elapsed(self) -> float:
        return max(self.ended - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed

    def pct_ms(self, q: float) -> float:
        if self._sorted is None:
            self._sorted = sorted(self.latencies)
        return percentile(self._sorted, q) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.latencies) * 1000 if self.latencies else math.nan

    def error_text(self) -> str:
        if not self.errors:
            return "0 errors"
        kinds = ", ".join(f"{name} {n}" for name, n in self.errors.most_common())
        return f"{self.failures} errors ({kinds})"

    def summary(self) -> str:
        return (f"{self.count} ok in {self.elapsed:.2f}s = {self.rate:,.0f}/s, "
                f"p50 {self.pct_ms(0.5):.2f} ms, p99 {self.pct_ms(0.99):.2f} ms, "
                f"max {self.max_ms:.2f} ms; {self.error_text()}")


async def closed_loop(call: Callable[[int], Awaitable[object]], *, concurrency: int,
                      seconds: float, max_calls: int) -> Samples:
    """`concurrency` workers call back to back until `seconds` pass or `max_calls` are made.

    `call(i)` gets the call's number, 0 .. max_calls-1, each used once.
    """
    samples = Samples()
    next_index = 0
    samples.started = time.perf_counter()
    deadline = samples.started + seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < max_calls:
            started = time.perf_counter()
            if started >= deadline:
                return
            i = next_index
            next_index += 1
            try:
                await call(i)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                samples.fail(exc)
            else:
                samples.ok(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.ended = time.perf_counter()
    return samples


@dataclass
class Schedule:
    """What an open loop did: when each call was due and how late it was issued."""

    started: float
    issued: int
    lags: list[float]
    last_issue: float

    @property
    def issue_rate(self) -> float:
        return self.issued / max(self.last_issue - self.started, 1e-9) if self.issued > 1 else 0


async def open_loop(action: Callable[[int, float], Awaitable[None]], *, rate: float,
                    count: int, max_in_flight: int = 10_000) -> Schedule:
    """Start `action(i, due)` at due = start + i/rate for i < count, whatever is in flight.

    The caller measures from `due`, so a slow answer cannot delay the next call and hide
    its own cost (no coordinated omission). Waits for every started action to finish.
    """
    started = time.perf_counter()
    in_flight: set[asyncio.Task[None]] = set()
    lags: list[float] = []
    issued = 0
    last_issue = started
    for i in range(count):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            break  # the server stopped answering; the missing calls show as not issued
        last_issue = time.perf_counter()
        lags.append(last_issue - due)
        task = asyncio.create_task(action(i, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        issued += 1
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)
    return Schedule(started, issued, lags, last_issue)


def _proc_stat(pid: int | str) -> tuple[str, float]:
    """(command name, CPU seconds used so far) of a process; kernel threads (children of
    kthreadd, pid 2) are named "[kernel]"."""
    text = Path(f"/proc/{pid}/stat").read_text()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    if fields[1] in ("0", "2") and int(pid) != 1:
        name = "[kernel]"
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _all_processes() -> dict[int, tuple[str, float]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = _proc_stat(entry.name)
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    return found


def _machine_ticks() -> tuple[float, float, float]:
    """(busy, total, steal) ticks of all cores; steal is time the hypervisor took away."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - values[3] - values[4], total, values[7]


def _machine_busy_and_total() -> tuple[float, float]:
    busy, total, _ = _machine_ticks()
    return busy, total


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """Keep the driver's own garbage collector out of the measured window: collect and
    freeze what exists, collect nothing while measuring (the windows are short)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def machine_busy(seconds: float = 1.0) -> float:
    """How busy the whole machine is (0..1 of all cores) over `seconds`."""
    busy0, total0 = _machine_busy_and_total()
    await asyncio.sleep(seconds)
    busy1, total1 = _machine_busy_and_total()
    return (busy1 - busy0) / max(total1 - total0, 1)


async def wait_for_quiet(*, below: float = 0.15, within: float = 60.0) -> float:
    """Wait (at most `within` s) until the machine is nearly idle; its last busy share."""
    deadline = time.perf_counter() + within
    busy = await machine_busy()
    while busy >= below and time.perf_counter() < deadline:
        progress(f"the machine is {busy * 100:.0f}% busy before the run; waiting for quiet")
        busy = await machine_busy(2.0)
    return busy


def _other_database(pid: int) -> bool:
    """A PostgreSQL backend serving a test database other than the benchmark's own."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return " lg_" in title and " lg_bench_" not in title


class CpuMeter:
    """CPU used between start() and stop(): by this process ("client"), by the named
    processes, by PostgreSQL (its background processes and the benchmark's backends), by
    every other process (foreign load that distorts the numbers, such as tests run
    meanwhile), and by the kernel (its threads, and loopback networking and interrupts that
    no process was charged for)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._names = {pid: name for name, pid in pids.items()}
        self._names[os.getpid()] = "client"
        self._start: dict[int, tuple[str, float]] = {}
        self._machine: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._wall = 0.0
        self.shares: dict[str, float] = {}  # of a core, over the window
        self.seconds: dict[str, float] = {}  # CPU seconds, over the window
        self.wall = 0.0  # the window's length in seconds

    def start(self) -> CpuMeter:
        self._start = _all_processes()
        self._machine = _machine_ticks()
        self._wall = time.perf_counter()
        return self

    def stop(self) -> str:
        """'CPU client 97%, lots 88%, ..., foreign 0%, kernel 12% of a core; machine ...'."""
        wall = max(time.perf_counter() - self._wall, 1e-9)
        end = _all_processes()
        busy, total, steal = _machine_ticks()
        machine = (busy - self._machine[0]) / max(total - self._machine[1], 1)
        stolen = (steal - self._machine[2]) / max(total - self._machine[1], 1)
        cores = os.cpu_count() or 1
        shares = {name: 0.0 for name in self._names.values()}
        shares.update(postgres=0.0, foreign=0.0, kernel=0.0)
        for pid, (comm, seconds) in end.items():
            before = self._start.get(pid)
            used = seconds - (before[1] if before and before[0] == comm else 0.0)
            if pid in self._names:
                key = self._names[pid]
            elif comm == "[kernel]":
                key = "kernel"
            elif comm.startswith("postgres"):
                key = "foreign" if _other_database(pid) else "postgres"
            else:
                key = "foreign"
            shares[key] += max(used, 0.0) / wall
        shares["kernel"] += max(0.0, (machine - stolen) * cores - sum(shares.values()))
        self.shares = shares
        self.seconds = {name: share * wall for name, share in shares.items()}
        self.wall = wall
        parts = [f"{name} {share * 100:.0f}%" for name, share in shares.items()
                 if share >= 0.005 or name in ("client", "foreign")]
        text = (f"CPU {', '.join(parts)} of a core; machine {machine * 100:.0f}% of {cores}"
                + (f" (hypervisor steal {stolen * 100:.0f}%)" if stolen >= 0.005 else ""))
        if shares["foreign"] >= FOREIGN_LIMIT:
            text = (f"WARNING: other processes used {shares['foreign'] * 100:.0f}% of a core "
                    f"meanwhile, the numbers are distorted; {text}")
        return text


def cpu_ms_per_item(seconds: dict[str, float], items: int,
                    processes: tuple[str, ...] = SERVICE_SIDE
                    ) -> tuple[float, dict[str, float]]:
    """CPU milliseconds per item of `processes` together, and of each of them (largest
    first), from CPU seconds per process over a window in which `items` were done; nan
    when no item was done."""
    if items <= 0:
        return math.nan, {name: math.nan for name in processes}
    each = {name: seconds.get(name, 0.0) * 1000 / items for name in processes}
    each = dict(sorted(each.items(), key=lambda kv: (-kv[1], kv[0])))
    return sum(each.values()), each


def cpu_ms_text(each: dict[str, float]) -> str:
    """'results 4.5, lots 1.9, postgres 1.6, nats 0.4, suppliers 0.0'."""
    return ", ".join(f"{name} {ms:.1f}" for name, ms in each.items())


async def wait_idle(pids: list[int], *, below: float = 0.10, quiet: float = 0.25,
                    within: float = 60.0) -> float:
    """Wait until `pids` together use under `below` of a core for `quiet` seconds (at
    most `within` s): the work they were given is done. The seconds waited."""
    def used() -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += _proc_stat(pid)[1]
        return total

    started = time.perf_counter()
    before = used()
    while time.perf_counter() - started < within:
        await asyncio.sleep(quiet)
        now = used()
        if now - before < below * quiet:
            break
        before = now
    return time.perf_counter() - started


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for pid {pid}")



class WriteWindow:
    """A CpuMeter over writes and what they cause: opened just before the first call, closed
    once the services went idle after the last one (every event consumed, every decision
    made), before anything polls them.

    When `done()` is given, idle must also be done: it is asked once the services look
    idle, and when it says no (a process starved by other work can look idle), the window
    waits for the next idle spell and asks again."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = list(pids.values())
        self.meter = CpuMeter(pids)
        self.text = ""
        self.closed = 0.0  # time.time() when the window closed
        self.asked = 0  # times done() was asked

    def open(self) -> WriteWindow:
        self.meter.start()
        return self

    async def close(self, done: Callable[[], Awaitable[bool]] | None = None, *,
                    within: float = 60.0) -> None:
        deadline = time.perf_counter() + within
        while True:
            await wait_idle(self._pids, within=max(0.0, deadline - time.perf_counter()))
            if done is None or time.perf_counter() >= deadline:
                break
            self.asked += 1
            if await done():
                break
        self.text = self.meter.stop()
        self.closed = time.time()
