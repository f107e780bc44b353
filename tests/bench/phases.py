"""The benchmark's workloads against a running Lotgate (and the echo server).

Each phase takes stubs, drives its load with tests.bench.load and returns what it
measured; tests.bench.__main__ decides the order and turns the results into a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc
from lotgate.results.v1 import results_pb2
from lotgate_tools.client import DEFAULT_SITE, Lotgate, identity, purity, sterility
from tests.bench.load import (
    CpuMeter,
    Samples,
    Schedule,
    closed_loop,
    error_name,
    open_loop,
    progress,
)

READ_TIMEOUT = 2.0
WRITE_TIMEOUT = 5.0
TESTS = ("IDENTITY", "PURITY", "STERILITY")
NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)


@dataclass
class Fixture:
    """Names for one run: a few materials, each with a qualified supplier, and lots."""

    run: str
    pairs: int = 4
    lots: dict[str, tuple[str, str]] = field(default_factory=dict)  # lot -> (supplier, mat)
    _next_lot: int = 0

    def pair(self, i: int) -> tuple[str, str]:
        return f"BENCH-SUP-{self.run}-{i}", f"BENCH-MAT-{self.run}-{i}"

    def new_lots(self, n: int, *, pair: int | None = None) -> list[str]:
        """`n` new lot names, of the pairs in turn, or all of `pair` when given."""
        made = []
        for _ in range(n):
            lot = f"LOT-{self.run}-{self._next_lot:05d}"
            self.lots[lot] = self.pair(self._next_lot % self.pairs if pair is None else pair)
            self._next_lot += 1
            made.append(lot)
        return made


def codes(status: lots_pb2.ReleaseStatus) -> set[str]:
    return {u.code for u in status.unmet}


def missing(*tests: str) -> Callable[[lots_pb2.ReleaseStatus], bool]:
    """A check: the lot waits in quarantine for exactly these tests, for nothing else."""
    want = {f"{t}_MISSING" for t in tests}
    return lambda s: s.status == lots_pb2.LOT_STATUS_QUARANTINE and codes(s) == want


def released(status: lots_pb2.ReleaseStatus) -> bool:
    return status.status == lots_pb2.LOT_STATUS_RELEASED


async def set_up_materials(lg: Lotgate, fixture: Fixture) -> None:
    """Specifications and qualified suppliers, and proof that the lots service knows them."""
    for n in range(1, 5):  # the instruments result_request posts from
        for kind, name in (("FTIR", "FTIR"), ("HPLC", "HPLC"), ("BACT", "BacT/ALERT")):
            await lg.register_instrument(f"{kind}-{n:02d}", type=name, by="qa.bench")
    for i in range(fixture.pairs):
        supplier, material = fixture.pair(i)
        await lg.specify(material, by="qa.bench")
        await lg.qualify(supplier, f"Bench Supplier {i}", material, NEXT_YEAR, by="qa.bench")
    # A probe lot per pair: once it waits only for results, the qualification has arrived.
    probes = fixture.new_lots(fixture.pairs)
    for lot in probes:
        await receive_one(lg, fixture, lot)
    checks = dict.fromkeys(probes, missing(*TESTS))
    _, pending, _ = await await_states(lg.lots, checks, within=30.0)
    if pending:
        raise RuntimeError(f"the lots service did not learn the qualifications: {pending}")


async def receive_one(lg: Lotgate, fixture: Fixture, lot: str) -> None:
    supplier, material = fixture.lots[lot]
    await lg.lots.ReceiveLot(lots_pb2.ReceiveLotRequest(
        lot_id=lot, material_code=material, supplier_id=supplier, supplier_site_id=DEFAULT_SITE,
        supplier_lot_number=f"S-{lot}", quantity=lots_pb2.Quantity(value=25.0, unit="kg"),
        container_count=4, expiry_date=(date.today() + timedelta(days=2000)).isoformat(),
        requested_by="wms.bench"), timeout=WRITE_TIMEOUT)


async def receive_lots(lg: Lotgate, fixture: Fixture, lots: Sequence[str], *,
                       concurrency: int = 32) -> tuple[Samples, list[str]]:
    """Receive `lots` (closed loop); the samples and the lots that were received."""
    done: list[str] = []

    async def call(i: int) -> None:
        await receive_one(lg, fixture, lots[i])
        done.append(lots[i])

    samples = await closed_loop(call, concurrency=concurrency, seconds=120.0,
                                max_calls=len(lots))
    return samples, done


async def wait_known_to_results(lg: Lotgate, lots: Sequence[str], *, within: float = 60.0,
                                concurrency: int = 32) -> list[str]:
    """Wait until the results service has heard of every lot; the ones it has not."""
    pending = list(lots)
    deadline = time.perf_counter() + within
    while pending and time.perf_counter() < deadline:
        still: list[str] = []
        for start in range(0, len(pending), concurrency):
            chunk = pending[start:start + concurrency]
            replies = await asyncio.gather(*(
                lg.results.ListLotResults(results_pb2.ListLotResultsRequest(lot_id=lot),
                                          timeout=READ_TIMEOUT) for lot in chunk),
                return_exceptions=True)
            still.extend(lot for lot, r in zip(chunk, replies, strict=True)
                         if isinstance(r, BaseException))
        if still:
            await asyncio.sleep(0.1)
        pending = still
    return pending


async def known_to_results(lg: Lotgate, lots: Sequence[str]) -> bool:
    """Whether the results service has heard of every one of `lots` now (one read each)."""
    replies = await asyncio.gather(*(
        lg.results.ListLotResults(results_pb2.ListLotResultsRequest(lot_id=lot),
                                  timeout=READ_TIMEOUT) for lot in lots),
        return_exceptions=True)
    return not any(isinstance(r, BaseException) for r in replies)


async def await_states(stub: lots_pb2_grpc.LotServiceStub,
                       checks: dict[str, Callable[[lots_pb2.ReleaseStatus], bool]], *,
                       within: float, window: int = 64
                       ) -> tuple[dict[str, lots_pb2.ReleaseStatus], list[str], Counter[str]]:
    """Poll lots, `window` at a time in the given order, until each passes its check.

    Returns the first passing status of each lot, the lots still failing their check
    when `within` seconds passed, and the polling errors.
    """
    pending = list(checks)
    done: dict[str, lots_pb2.ReleaseStatus] = {}
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + within
    while pending and time.perf_counter() < deadline:
        batch, rest = pending[:window], pending[window:]
        replies = await asyncio.gather(*(
            stub.GetReleaseStatus(lots_pb2.GetReleaseStatusRequest(lot_id=lot),
                                  timeout=READ_TIMEOUT) for lot in batch),
            return_exceptions=True)
        waiting = []
        for lot, reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                errors[error_name(reply)] += 1
                waiting.append(lot)
            elif checks[lot](reply.release_status):
                done[lot] = reply.release_status
            else:
                waiting.append(lot)
        pending = rest + waiting  # round robin: a stuck lot does not block the others
        if len(waiting) == len(batch):
            await asyncio.sleep(0.05)
    return done, pending, errors


# Rows 1-3: GetReleaseStatus ---------------------------------------------------------------

def read_requests(lots: Sequence[str], count: int, seed: int
                  ) -> list[lots_pb2.GetReleaseStatusRequest]:
    """`count` requests over `lots` in random order, built before the clock starts."""
    rng = random.Random(seed)
    built = [lots_pb2.GetReleaseStatusRequest(lot_id=lot) for lot in lots]
    return [built[rng.randrange(len(built))] for _ in range(count)]


async def read_closed_loop(stub: lots_pb2_grpc.LotServiceStub,
                           requests: Sequence[lots_pb2.GetReleaseStatusRequest], *,
                           concurrency: int, seconds: float, warmup: float = 1.0) -> Samples:
    async def call(i: int) -> None:
        reply = await stub.GetReleaseStatus(requests[i % len(requests)], timeout=READ_TIMEOUT)
        if not reply.release_status.lot_id:
            raise ValueError("empty release status")

    if warmup > 0:
        await closed_loop(call, concurrency=concurrency, seconds=warmup,
                          max_calls=len(requests))
    return await closed_loop(call, concurrency=concurrency, seconds=seconds,
                             max_calls=len(requests))


async def read_open_loop(stub: lots_pb2_grpc.LotServiceStub,
                         requests: Sequence[lots_pb2.GetReleaseStatusRequest], *,
                         rate: float, seconds: float) -> tuple[Samples, Schedule]:
    """Calls due at a fixed rate; each latency is measured from the call's due time."""
    samples = Samples()
    count = min(len(requests), int(rate * seconds))

    async def action(i: int, due: float) -> None:
        try:
            await stub.GetReleaseStatus(requests[i], timeout=READ_TIMEOUT)
        except Exception as exc:
            samples.fail(exc)
        else:
            now = time.perf_counter()
            samples.ok(now - due)
            samples.ended = max(samples.ended, now)

    schedule = await open_loop(action, rate=rate, count=count)
    samples.started = schedule.started
    return samples, schedule


async def batch_read_closed_loop(stub: lots_pb2_grpc.LotServiceStub, lots: Sequence[str], *,
                                 concurrency: int, seconds: float,
                                 warmup: float = 1.0) -> Samples:
    """GetReleaseStatuses for all of `lots` (a pick list of up to 1,000) back to back."""
    request = lots_pb2.GetReleaseStatusesRequest(lot_ids=list(lots))

    async def call(i: int) -> None:
        reply = await stub.GetReleaseStatuses(request, timeout=READ_TIMEOUT * 5)
        if len(reply.statuses) != len(lots):
            raise ValueError("statuses missing")

    if warmup > 0:
        await closed_loop(call, concurrency=concurrency, seconds=warmup, max_calls=10**9)
    return await closed_loop(call, concurrency=concurrency, seconds=seconds, max_calls=10**9)


# Row 4: RecordResult sustained ------------------------------------------------------------

def result_request(fixture: Fixture, lot: str, test: str, rng: random.Random
                   ) -> results_pb2.RecordResultRequest:
    """A passing result; the key is unique to the run, the lot and the test."""
    n = int(lot.rsplit("-", 1)[1]) % 4 + 1
    key = f"{fixture.run}-{lot}-{test}"
    if test == "IDENTITY":
        return identity(lot, f"FTIR-{n:02d}", key)
    if test == "PURITY":
        return purity(lot, f"HPLC-{n:02d}", key, round(rng.uniform(98.5, 101.5), 2))
    return sterility(lot, f"BACT-{n:02d}", key)


def result_stream(lots: Sequence[str], block: int = 64) -> list[tuple[str, str]]:
    """(lot, test) for every test of every lot: per block of lots, all identities, then all
    purities, then all sterilities. Lots complete steadily, and results for one lot are a
    block apart, so concurrent calls seldom touch the same lot."""
    order = []
    for start in range(0, len(lots), block):
        chunk = lots[start:start + block]
        for test in TESTS:
            order.extend((lot, test) for lot in chunk)
    return order


PostedHook = Callable[[Callable[[], Awaitable[bool]]], Awaitable[None]]


def expected_states(accepted: dict[str, set[str]], failed_lots: set[str]
                    ) -> dict[str, Callable[[lots_pb2.ReleaseStatus], bool]]:
    """Each lot's state once its accepted results are applied: RELEASED with all three,
    else waiting for the rest. A lot with a failed post is left out: that result may or
    may not be stored."""
    checks: dict[str, Callable[[lots_pb2.ReleaseStatus], bool]] = {}
    for lot, tests in accepted.items():
        if lot in failed_lots:
            continue
        rest = [t for t in TESTS if t not in tests]
        checks[lot] = released if not rest else missing(*rest)
    return checks


async def all_in_state(stub: lots_pb2_grpc.LotServiceStub,
                       checks: dict[str, Callable[[lots_pb2.ReleaseStatus], bool]]) -> bool:
    """Whether every lot passes its check now: one GetReleaseStatuses per 1,000 lots."""
    lots = list(checks)
    for start in range(0, len(lots), 1000):
        chunk = lots[start:start + 1000]
        try:
            reply = await stub.GetReleaseStatuses(
                lots_pb2.GetReleaseStatusesRequest(lot_ids=chunk), timeout=READ_TIMEOUT * 5)
        except Exception:
            return False
        if not all(checks[lot](status)
                   for lot, status in zip(chunk, reply.statuses, strict=True)):
            return False
    return True


@dataclass
class RecordOutcome:
    concurrency: int
    posted: Samples
    accepted: dict[str, set[str]]  # lot -> tests recorded
    failed_lots: set[str]
    applied_seconds: float  # from the first post to the last decision it caused
    observed_seconds: float  # from the first post until polling saw every lot settled
    unsettled: list[str]
    poll_errors: Counter[str]
    wall_start: float = 0.0  # time.time() of the first post
    last_decision: float = 0.0  # time.time() of the last decision (the lots service's clock)

    @property
    def accepted_results(self) -> int:
        return sum(len(tests) for tests in self.accepted.values())

    @property
    def applied_rate(self) -> float:
        return self.accepted_results / max(self.applied_seconds, 1e-9)

    @property
    def released_lots(self) -> int:
        return sum(1 for tests in self.accepted.values() if len(tests) == 3)


async def record_sustained(lg: Lotgate, fixture: Fixture, lots: Sequence[str], *,
                           concurrency: int, seconds: float, seed: int,
                           settle_within: float = 60.0, posted_hook: PostedHook | None = None
                           ) -> RecordOutcome:
    """Post passing results back to back, then wait until the lots service applied them.

    `posted_hook(applied)` is awaited after the last post, before any poll (to close a CPU
    window on the posting and the applying alone); `applied()` tells, with one batch read
    per 1,000 lots, whether every accepted result has been applied."""
    rng = random.Random(seed)
    order = result_stream(lots)
    requests = [result_request(fixture, lot, test, rng) for lot, test in order]
    accepted: dict[str, set[str]] = {}
    failed_lots: set[str] = set()

    async def call(i: int) -> None:
        lot, test = order[i]
        try:
            await lg.results.RecordResult(requests[i], timeout=WRITE_TIMEOUT)
        except Exception:
            failed_lots.add(lot)
            raise
        accepted.setdefault(lot, set()).add(test)

    return await _post_all(lg, call, len(requests), "result", concurrency=concurrency,
                           seconds=seconds, accepted=accepted, failed_lots=failed_lots,
                           settle_within=settle_within, posted_hook=posted_hook)


async def _post_all(lg: Lotgate, call: Callable[[int], Awaitable[None]], count: int,
                    what: str, *, concurrency: int, seconds: float,
                    accepted: dict[str, set[str]], failed_lots: set[str],
                    settle_within: float, posted_hook: PostedHook | None) -> RecordOutcome:
    """Run `call` over the `count` prepared posts in a closed loop, then wait until what
    was accepted is applied (`posted_hook` first, before any poll)."""
    wall_start = time.time()
    posted = await closed_loop(call, concurrency=concurrency, seconds=seconds,
                               max_calls=count)
    progress(f"  posted at c={concurrency}: {posted.summary()}")
    if posted.count == count:
        progress(f"  (every prepared {what} was posted before the time was up: "
                 "more lots would measure longer)")
    if posted_hook is not None:
        await posted_hook(lambda: all_in_state(lg.lots, expected_states(accepted, failed_lots)))
    return await settle(lg, concurrency, posted, accepted, failed_lots, wall_start,
                        within=settle_within)


async def settle(lg: Lotgate, concurrency: int, posted: Samples, accepted: dict[str, set[str]],
                 failed_lots: set[str], wall_start: float, *, within: float) -> RecordOutcome:
    """Wait until the lots service applied every accepted result: each lot with all three
    RELEASED, the others waiting for the rest."""
    checks = expected_states(accepted, failed_lots)
    progress(f"  waiting until the lots service has applied "
             f"{sum(len(tests) for tests in accepted.values())} results "
             f"({sum(1 for c in checks.values() if c is released)} lots to be released)")
    done, pending, poll_errors = await await_states(lg.lots, checks, within=within)
    observed = time.time() - wall_start
    last_decision = max((s.decided_at.ToNanoseconds() / 1e9 for s in done.values()),
                        default=wall_start)
    return RecordOutcome(concurrency, posted, accepted, failed_lots,
                         applied_seconds=max(last_decision - wall_start, posted.elapsed),
                         observed_seconds=observed, unsettled=pending,
                         poll_errors=poll_errors, wall_start=wall_start,
                         last_decision=last_decision)


# Row 4d: RecordResults, a plate at a time ------------------------------------------------

PLATE_INSTRUMENTS = 4


async def register_plate_readers(lg: Lotgate) -> list[str]:
    """The instruments that post whole plates (one instrument per RecordResults call)."""
    names = [f"PLATE-{n:02d}" for n in range(1, PLATE_INSTRUMENTS + 1)]
    for name in names:
        await lg.register_instrument(name, type="Plate reader", by="qa.bench")
    return names


def plates(lots: Sequence[str], per_plate: int) -> list[list[tuple[str, str]]]:
    """(lot, test) of `per_plate` lots with their three tests each, plate after plate: a
    plate completes its lots; a last, short plate is left out."""
    whole = len(lots) - len(lots) % per_plate
    return [[(lot, test) for lot in lots[start:start + per_plate] for test in TESTS]
            for start in range(0, whole, per_plate)]


async def record_batches(lg: Lotgate, fixture: Fixture, lots: Sequence[str],
                         instruments: Sequence[str], *, per_plate: int, concurrency: int,
                         seconds: float, seed: int, settle_within: float = 60.0,
                         posted_hook: PostedHook | None = None) -> RecordOutcome:
    """RecordResults of one plate (every test of `per_plate` lots, passing) per call, back to
    back; then wait until the lots service applied them (as record_sustained)."""
    rng = random.Random(seed)
    order = plates(lots, per_plate)
    requests = [results_pb2.RecordResultsRequest(results=[
        _from(result_request(fixture, lot, test, rng), instruments[i % len(instruments)])
        for lot, test in plate]) for i, plate in enumerate(order)]
    accepted: dict[str, set[str]] = {}
    failed_lots: set[str] = set()

    async def call(i: int) -> None:
        try:
            reply = await lg.results.RecordResults(requests[i], timeout=WRITE_TIMEOUT * 4)
        except Exception:
            failed_lots.update(lot for lot, _ in order[i])
            raise
        if len(reply.results) != len(order[i]):
            failed_lots.update(lot for lot, _ in order[i])
            raise ValueError("results missing from the answer")
        for lot, test in order[i]:
            accepted.setdefault(lot, set()).add(test)

    return await _post_all(lg, call, len(requests), "plate", concurrency=concurrency,
                           seconds=seconds, accepted=accepted, failed_lots=failed_lots,
                           settle_within=settle_within, posted_hook=posted_hook)


def _from(request: results_pb2.RecordResultRequest, instrument: str
          ) -> results_pb2.RecordResultRequest:
    request.instrument_id = instrument
    return request


# Row 5: result -> RELEASED ----------------------------------------------------------------

@dataclass
class ReleaseOutcome:
    latency: Samples  # issue of the last RecordResult -> RELEASED seen by the client
    # The same span cut at the services' own clocks (same machine, same wall clock):
    # issue -> the results service stamps recorded_at; recorded_at -> the lots service
    # stamps decided_at (results commit, outbox relay, JetStream, lots consumer, reads);
    # decided_at -> the client sees RELEASED (lots commit, then the watch's push, or the
    # next poll).
    to_recorded: Samples
    to_decided: Samples
    to_seen: Samples
    posts: Samples  # every RecordResult of the phase (measured lots and background)
    schedule: Schedule
    rate: float
    measured_lots: int
    prepare_errors: str
    follow: str
    follow_errors: Counter[str]


class _Watched:
    """One WatchReleaseStatus on the measured lots: for each, when RELEASED or REJECTED
    arrived (perf_counter) with the status as pushed."""

    def __init__(self, stub: lots_pb2_grpc.LotServiceStub, lots: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        self.final: dict[str, asyncio.Future[tuple[float, lots_pb2.ReleaseStatus]]] = {
            lot: loop.create_future() for lot in lots}
        self.errors: Counter[str] = Counter()
        self._snapshots = 0
        self._ready = asyncio.Event()
        self._call = stub.WatchReleaseStatus(lots_pb2.WatchReleaseStatusRequest(
            lot_ids=list(lots)))
        self._task = asyncio.ensure_future(self._read())

    async def ready(self, within: float = 30.0) -> None:
        """Once every lot's current status has arrived: the watch is in place."""
        await asyncio.wait_for(self._ready.wait(), within)

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                status = reply.release_status
                if reply.snapshot:
                    self._snapshots += 1
                    if self._snapshots >= len(self.final):
                        self._ready.set()
                    continue
                final = self.final.get(status.lot_id)
                if final is not None and not final.done() and status.status in (
                        lots_pb2.LOT_STATUS_RELEASED, lots_pb2.LOT_STATUS_REJECTED):
                    final.set_result((time.perf_counter(), status))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._call.cancelled():
                self.errors[error_name(exc)] += 1

    async def stop(self) -> None:
        self._call.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def release_latency(lg: Lotgate, fixture: Fixture, measured: Sequence[str],
                          background: Sequence[str], *, rate: float, seed: int,
                          follow: str = "watch", poll_every: float = 0.002,
                          poll_budget: float = 1000.0, within: float = 10.0,
                          meter: CpuMeter | None = None) -> ReleaseOutcome:
    """Each measured lot already has identity and purity; its sterility result is posted in
    an open loop at `rate` results/s in total, interleaved 1:2 with identity, purity and
    sterility results of background lots. The client follows the measured lots as a
    warehouse would be told: with `follow="watch"` one WatchReleaseStatus stream on all of
    them, opened before the clock starts, pushes each change; with `follow="poll"` each
    lot is polled every `poll_every` seconds from the moment its RecordResult returns
    until it reads RELEASED, all polls together under `poll_budget` per second (when many
    lots are pending at once, polling must not become the load that slows it further).
    `meter` runs from the clock's start until every measured lot was seen or given up:
    the CPU of the posts at `rate` (setting up the measured lots is left out).
    """
    rng = random.Random(seed)
    # Identity and purity of the measured lots first, and wait until they are applied.
    first = [(lot, test) for test in ("IDENTITY", "PURITY") for lot in measured]
    pre_requests = [result_request(fixture, lot, test, rng) for lot, test in first]
    pre_failed: set[str] = set()

    async def pre(i: int) -> None:
        try:
            await lg.results.RecordResult(pre_requests[i], timeout=WRITE_TIMEOUT)
        except Exception:
            pre_failed.add(first[i][0])
            raise

    prepared = await closed_loop(pre, concurrency=16, seconds=60.0,
                                 max_calls=len(pre_requests))
    progress(f"  identity and purity of {len(measured)} lots: {prepared.summary()}")
    checks = {lot: missing("STERILITY") for lot in measured if lot not in pre_failed}
    done, pending, _ = await await_states(lg.lots, checks, within=30.0)
    ready = [lot for lot in measured if lot in done]
    progress(f"  {len(ready)} lots wait only for sterility ({len(pending)} did not get there)")
    # A watch names at least one lot: with none ready there is nothing to follow.
    watched = _Watched(lg.lots, ready) if follow == "watch" and ready else None
    if watched is not None:
        await watched.ready()
    await asyncio.sleep(0.5)  # let the last decisions' events leave before the clock starts

    filler = [(lot, test) for lot in background for test in TESTS]
    filler_requests = [result_request(fixture, lot, test, rng) for lot, test in filler]
    final_requests = [result_request(fixture, lot, "STERILITY", rng) for lot in ready]
    slots = min(3 * len(ready), len(ready) + len(filler))
    latency, posts = Samples(), Samples()
    poll_errors: Counter[str] = Counter()

    to_recorded, to_decided, to_seen = Samples(), Samples(), Samples()

    async def post(request: results_pb2.RecordResultRequest
                   ) -> results_pb2.RecordResultResponse | None:
        started = time.perf_counter()
        try:
            reply = await lg.results.RecordResult(request, timeout=WRITE_TIMEOUT)
        except Exception as exc:
            posts.fail(exc)
            return None
        posts.ok(time.perf_counter() - started)
        return reply

    next_poll = 0.0

    async def poll_slot() -> None:
        nonlocal next_poll
        now = time.perf_counter()
        slot = max(now, next_poll)
        next_poll = slot + 1.0 / poll_budget
        if slot > now:
            await asyncio.sleep(slot - now)

    async def polled(lot: str, issued: float) -> tuple[float, lots_pb2.ReleaseStatus] | None:
        ask = lots_pb2.GetReleaseStatusRequest(lot_id=lot)
        while time.perf_counter() - issued < within:
            await poll_slot()
            try:
                reply = await lg.lots.GetReleaseStatus(ask, timeout=READ_TIMEOUT)
            except Exception as exc:
                poll_errors[error_name(exc)] += 1
            else:
                if reply.release_status.status in (lots_pb2.LOT_STATUS_RELEASED,
                                                   lots_pb2.LOT_STATUS_REJECTED):
                    return time.perf_counter(), reply.release_status
            await asyncio.sleep(poll_every)
        return None

    async def pushed(lot: str, issued: float) -> tuple[float, lots_pb2.ReleaseStatus] | None:
        assert watched is not None
        left = within - (time.perf_counter() - issued)
        try:
            return await asyncio.wait_for(asyncio.shield(watched.final[lot]), max(left, 0.0))
        except TimeoutError:
            return None

    async def measure(lot: str, request: results_pb2.RecordResultRequest) -> None:
        issued, issued_wall = time.perf_counter(), time.time()
        recorded = await post(request)
        if recorded is None:
            latency.fail("RecordResult failed")
            return
        recorded_at = recorded.result.recorded_at.ToNanoseconds() / 1e9
        seen = await (pushed if watched is not None else polled)(lot, issued)
        if seen is None:
            latency.fail(f"not RELEASED within {within:.0f}s")
            return
        at, status = seen
        if status.status == lots_pb2.LOT_STATUS_REJECTED:
            latency.fail("REJECTED")
            return
        latency.ok(at - issued)
        decided_at = status.decided_at.ToNanoseconds() / 1e9
        to_recorded.ok(recorded_at - issued_wall)
        to_decided.ok(decided_at - recorded_at)
        to_seen.ok(issued_wall + (at - issued) - decided_at)

    counters = {"final": 0, "filler": 0}

    async def action(i: int, due: float) -> None:
        # Slots 0, 3, 6, ... release a measured lot; the others carry background results.
        if i % 3 == 0 and counters["final"] < len(ready):
            k = counters["final"]
            counters["final"] += 1
            await measure(ready[k], final_requests[k])
        elif counters["filler"] < len(filler):
            k = counters["filler"]
            counters["filler"] += 1
            await post(filler_requests[k])

    if meter is not None:
        meter.start()
    try:
        schedule = await open_loop(action, rate=rate, count=slots)
    finally:
        if meter is not None:
            meter.stop()
        if watched is not None:
            await watched.stop()
    latency.started = posts.started = schedule.started
    latency.ended = posts.ended = time.perf_counter()
    return ReleaseOutcome(latency, to_recorded, to_decided, to_seen, posts, schedule, rate,
                          len(ready), prepared.error_text(), follow,
                          watched.errors if watched is not None else poll_errors)
