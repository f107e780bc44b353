"""The whole system under faults: its own PostgreSQL and nats-server, the three services as
processes, a seeded random workload, a record of what each client saw acknowledged, and an
oracle that judges the end state from those acknowledgements alone.

The method is Jepsen's: record each operation's invocation and its acknowledgement (OK,
a definite error, or none at all), let a nemesis break things meanwhile, let the system
quiesce, then check the history against a model. The model here (`Oracle`) is the README's
release rule written again from the outside; it imports nothing of the services' rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from lotgate.lots.v1 import lots_pb2 as lpb
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate_tools.client import DEFAULT_SITE, Lotgate, identity, purity, sterility
from lotgate_tools.dev_secrets import DevSecrets
from lotgate_tools.stack import SERVICES, NatsServer, ServiceProcess, free_port
from shared import migrations
from shared.crash import ENV as CRASH_ENV
from tests.faults.postgres import PgCluster
from tests.support.auth import TEST_KEYS, acting

TESTS = ("IDENTITY", "PURITY", "STERILITY")
INSTRUMENTS = {"IDENTITY": ("FTIR-1", "FTIR"), "PURITY": ("HPLC-1", "HPLC"),
               "STERILITY": ("BACT-1", "BacT/ALERT")}
SUPPLIER_CODES = {"SUPPLIER_NOT_QUALIFIED", "SUPPLIER_SUSPENDED", "SUPPLIER_DISQUALIFIED",
                  "QUALIFICATION_EXPIRED"}
# Answers after which the same request is sent again: the outcome may still change.
RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
         grpc.StatusCode.CANCELLED}
VALID_UNTIL = datetime.now(UTC) + timedelta(days=365)


# --- the system --------------------------------------------------------------------------

@dataclass
class FaultStack:
    """PostgreSQL, nats-server and the three services, each of which may be broken.

    `crash_at` arms a service's crash points (shared.crash) for its first run; a
    supervisor restarts a service that died (without the crash points) and counts it.
    """

    workdir: Path
    pg: PgCluster
    crash_at: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    # More lots processes on the same database ("lots#2", ...): the clients talk to the
    # first; the others share its consumers and compete for its relay's leader lock.
    lots_replicas: int = 1
    nats: NatsServer | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    _urls: dict[str, str] = field(default_factory=dict)
    _supervisor: asyncio.Task[None] | None = None
    _stopping: bool = False
    _expected_down: set[str] = field(default_factory=set)

    def addresses(self) -> dict[str, str]:
        return {name: self.services[name].address for name in SERVICES}

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        secrets = DevSecrets(self.workdir / "secrets").ensure()
        self.nats = NatsServer(self.workdir / "nats", secrets=secrets)
        await self.nats.start()
        tag = os.urandom(4).hex()
        for name in SERVICES:
            self._urls[name] = await self.pg.create_database(f"faults_{name}_{tag}")
            await migrations.migrate(name, self._urls[name])
            env = {**os.environ,
                   "LOTGATE_DATABASE_URL": self._urls[name],
                   "LOTGATE_NATS_URL": self.nats.url,
                   "LOTGATE_GRPC_HOST": "127.0.0.1",
                   "LOTGATE_GRPC_PORT": str(free_port()),
                   "LOTGATE_LOG_LEVEL": "info",
                   "LOTGATE_OUTBOX_POLL_SECONDS": "0.2",
                   **secrets.service_env(name), **TEST_KEYS.service_env(), **self.extra_env}
            env.pop(CRASH_ENV, None)
            if name in self.crash_at:
                env[CRASH_ENV] = self.crash_at[name]
            self.services[name] = ServiceProcess(name, int(env["LOTGATE_GRPC_PORT"]), env,
                                                 self.workdir / f"{name}.log")
        for n in range(2, self.lots_replicas + 1):
            first = self.services["lots"]
            env = {**first.env, "LOTGATE_GRPC_PORT": str(free_port())}
            env.pop(CRASH_ENV, None)
            self.services[f"lots#{n}"] = ServiceProcess(
                "lots", int(env["LOTGATE_GRPC_PORT"]), env, self.workdir / f"lots-{n}.log")
        await asyncio.gather(*(s.start() for s in self.services.values()))
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Restart a service that died on its own (a crash point), once per death."""
        while not self._stopping:
            for name, service in self.services.items():
                process = service.process
                if (process is None or process.returncode is None
                        or name in self._expected_down):
                    continue
                self.faults[f"crash:{name}"] += 1
                await self.restart(name)
            await asyncio.sleep(0.1)

    async def restart(self, name: str) -> None:
        service = self.services[name]
        service.env.pop(CRASH_ENV, None)  # the crash point fired: the next run is clean
        for attempt in range(5):
            try:
                await service.start()
                return
            except RuntimeError:
                if attempt == 4:
                    raise
                with contextlib.suppress(ProcessLookupError, AttributeError):
                    service.process.kill()  # type: ignore[union-attr]

    async def kill(self, name: str) -> None:
        """SIGKILL a service and start it again."""
        self._expected_down.add(name)
        try:
            await self.services[name].stop(signal.SIGKILL)
            self.faults[f"sigkill:{name}"] += 1
            await self.restart(name)
        finally:
            self._expected_down.discard(name)

    async def kill_nats(self, down_s: float) -> None:
        assert self.nats is not None
        await self.nats.kill()
        self.faults["sigkill:nats"] += 1
        await asyncio.sleep(down_s)  # the outage itself
        await self.nats.start()

    async def pause_nats(self, paused_s: float) -> None:
        assert self.nats is not None and self.nats.process is not None
        self.nats.process.send_signal(signal.SIGSTOP)
        self.faults["sigstop:nats"] += 1
        try:
            await asyncio.sleep(paused_s)  # the stall itself
        finally:
            self.nats.process.send_signal(signal.SIGCONT)

    async def crash_postgres(self, down_s: float) -> None:
        await self.pg.crash()
        self.faults["immediate-stop:postgres"] += 1
        await asyncio.sleep(down_s)  # the outage itself
        await self.pg.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await asyncio.gather(*(s.stop() for s in self.services.values()),
                             return_exceptions=True)
        if self.nats is not None:
            await self.nats.stop()

    def logs_tail(self, chars: int = 2500) -> str:
        parts = []
        for name in self.services:
            path = self.workdir / f"{name.replace('#', '-')}.log"
            if path.exists():
                parts.append(f"--- {name}.log\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


# --- the history -------------------------------------------------------------------------

@dataclass
class Op:
    """One client operation: what was asked, when, and what the client saw come back."""

    kind: str
    key: dict[str, Any]
    invoked: float
    acked: float | None = None
    outcome: str = "pending"  # ok | error:<CODE> | indeterminate
    value: Any = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass
class Recorder:
    ops: list[Op] = field(default_factory=list)
    deadline_s: float = 150.0

    async def call(self, kind: str, key: dict[str, Any], attempt: Callable[[], Awaitable[Any]],
                   *, retry_also: frozenset[grpc.StatusCode] = frozenset(),
                   settle: Callable[[grpc.StatusCode], Awaitable[bool]] | None = None) -> Op:
        """Send the same request until a definite answer (or `deadline_s`): OK, or an error
        that retrying cannot change. `settle` turns a refusal seen on a retry (the first
        attempt may have worked) into OK when it finds the change made."""
        op = Op(kind, key, time.time())
        self.ops.append(op)
        give_up = time.monotonic() + self.deadline_s
        delay = 0.05
        while True:
            op.attempts += 1
            try:
                op.value = await attempt()
                op.outcome, op.acked = "ok", time.time()
                return op
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code not in RETRY and code not in retry_also:
                    if op.attempts > 1 and settle is not None and await settle(code):
                        op.outcome, op.acked = "ok", time.time()
                    else:
                        op.outcome, op.acked = f"error:{code.name}", time.time()
                    return op
            if time.monotonic() > give_up:
                op.outcome = "indeterminate"
                return op
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


# --- the workload ------------------------------------------------------------------------

@dataclass
class Plan:
    lots: int = 10
    suppliers: int = 3
    fail_p: float = 0.2
    duplicate_p: float = 0.3
    hold_p: float = 0.15
    reject_p: float = 0.05
    suspend_p: float = 0.5
    concurrency: int = 4


class Workload:
    """Seeded random operations against the running system, recorded."""

    def __init__(self, lg: Lotgate, seed: int, plan: Plan, recorder: Recorder) -> None:
        self.lg, self.seed, self.plan, self.rec = lg, seed, plan, recorder
        self.rng = random.Random(seed)
        self.material = f"MAT-{seed}"
        self.suppliers = [f"SUP-{seed}-{i}" for i in range(plan.suppliers)]
        self.lots: dict[str, str] = {}  # lot -> supplier
        self.tag = f"{seed}-{os.urandom(2).hex()}"

    async def setup(self) -> None:
        """Instruments, a specification and qualified suppliers (retried through faults)."""
        for instrument, kind in INSTRUMENTS.values():
            await self._retrying(
                lambda i=instrument, k=kind: self.lg.register_instrument(i, type=k))
        await self._retrying(lambda: self.lg.specify(self.material))
        for supplier in self.suppliers:
            op = Op("qualify", {"supplier": supplier, "material": self.material}, time.time())
            await self._retrying(lambda s=supplier: self.lg.qualify(
                s, "Supplier " + s, self.material, VALID_UNTIL))
            op.outcome, op.acked = "ok", time.time()
            self.rec.ops.append(op)

    async def _retrying(self, step: Callable[[], Awaitable[Any]]) -> Any:
        give_up = time.monotonic() + self.rec.deadline_s
        while True:
            try:
                return await step()
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRY or time.monotonic() > give_up:
                    raise
            await asyncio.sleep(0.2)

    async def run(self, *, extra: Callable[[], Awaitable[None]] | None = None) -> None:
        """The lots (a few at a time) and the suppliers' changes, interleaved."""
        gate = asyncio.Semaphore(self.plan.concurrency)
        lot_rngs = [(f"LOT-{self.tag}-{i:03d}", random.Random(f"{self.seed}/{i}"))
                    for i in range(self.plan.lots)]

        async def one(lot: str, rng: random.Random) -> None:
            async with gate:
                await self.lot_life(lot, rng)

        tasks = [one(lot, rng) for lot, rng in lot_rngs]
        tasks += [self.supplier_life(s, random.Random(f"{self.seed}/{s}"))
                  for s in self.suppliers]
        if extra is not None:
            tasks.append(extra())
        await asyncio.gather(*tasks)

    async def lot_life(self, lot: str, rng: random.Random) -> None:
        supplier = rng.choice(self.suppliers)
        receipt = lpb.ReceiveLotRequest(
            lot_id=lot, material_code=self.material, supplier_id=supplier,
            supplier_site_id=DEFAULT_SITE, supplier_lot_number=f"S-{lot}",
            quantity=lpb.Quantity(value=25.0, unit="kg"), container_count=2,
            expiry_date=date(date.today().year + 3, 12, 31).isoformat(), requested_by="wms")
        op = await self.rec.call("receive", {"lot": lot, "supplier": supplier},
                                 lambda: self.lg.lots.ReceiveLot(receipt, timeout=5))
        if not op.ok:
            return
        self.lots[lot] = supplier
        tests = list(TESTS)
        rng.shuffle(tests)
        qa = asyncio.create_task(self.qa_life(lot, rng))
        await asyncio.gather(*(self.test_life(lot, test, rng.random() < self.plan.fail_p,
                                              random.Random(rng.random()))
                               for test in tests))
        await qa

    async def post(self, lot: str, test: str, passing: bool, key: str, rng: random.Random,
                   retest_of: str = "") -> Op:
        instrument = INSTRUMENTS[test][0]
        if test == "IDENTITY":
            request = identity(lot, instrument, key, match=passing, retest_of=retest_of)
        elif test == "PURITY":
            value = rng.choice([99.0, 100.0, 101.5]) if passing else rng.choice([90.0, 104.0])
            request = purity(lot, instrument, key, value, retest_of=retest_of)
        else:
            request = sterility(lot, instrument, key, growth=not passing, retest_of=retest_of)

        def attempt() -> Awaitable[Any]:
            return self.lg.results.RecordResult(request, timeout=5)

        info = {"lot": lot, "test": test, "passing": passing, "key": key}
        copies = 1 + (rng.random() < self.plan.duplicate_p) + (rng.random() < 0.1)
        # Copies of one post at once (an instrument retrying on a timeout): one record.
        ops = await asyncio.gather(*(
            self.rec.call("result", info, attempt,
                          retry_also=frozenset({grpc.StatusCode.NOT_FOUND}))
            for _ in range(copies)))
        if rng.random() < self.plan.duplicate_p:  # and a late retry of the same key
            ops.append(await self.rec.call("result", info, attempt,
                                           retry_also=frozenset({grpc.StatusCode.NOT_FOUND})))
        return next((o for o in ops if o.ok), ops[0])

    async def test_life(self, lot: str, test: str, fails: bool, rng: random.Random) -> None:
        await asyncio.sleep(rng.random() * 0.5)  # results arrive in random order
        op = await self.post(lot, test, not fails, f"{lot}-{test}-1", rng)
        if not (op.ok and fails):
            return
        result_id = op.value.result.result_id
        choice = rng.random()
        if choice < 0.45:
            change = await self.rec.call(
                "invalidate", {"lot": lot, "result_id": result_id},
                lambda: self.lg.results.InvalidateResult(rpb.InvalidateResultRequest(
                    result_id=result_id, reason="laboratory error: wrong dilution",
                    requested_by="qa.fault"), timeout=5))
            if change.ok and rng.random() < 0.7:
                await self.post(lot, test, True, f"{lot}-{test}-2", rng, retest_of=result_id)
        elif choice < 0.75:
            await self.rec.call(
                "confirm", {"lot": lot, "result_id": result_id},
                lambda: self.lg.results.ConfirmResult(rpb.ConfirmResultRequest(
                    result_id=result_id, reason="no laboratory error found",
                    requested_by="qa.fault"), timeout=5))

    async def qa_life(self, lot: str, rng: random.Random) -> None:
        roll = rng.random()
        await asyncio.sleep(rng.random())
        if roll < self.plan.reject_p:
            await self.rec.call("reject", {"lot": lot}, lambda: self.lg.lots.RejectLot(
                lpb.RejectLotRequest(lot_id=lot, reason="container damaged",
                                     requested_by="qa.fault"), timeout=5))
        elif roll < self.plan.reject_p + self.plan.hold_p:
            held = await self.rec.call("hold", {"lot": lot}, lambda: self.lg.lots.HoldLot(
                lpb.HoldLotRequest(lot_id=lot, reason="deviation under review",
                                   requested_by="qa.fault"), timeout=5))
            if held.ok and rng.random() < 0.6:
                await asyncio.sleep(rng.random())
                await self.rec.call(
                    "release_hold", {"lot": lot},
                    lambda: self.lg.lots.ReleaseHold(lpb.ReleaseHoldRequest(
                        lot_id=lot, reason="deviation closed", requested_by="qa.fault"),
                        timeout=5),
                    settle=lambda code: self._hold_lifted(lot))

    async def _hold_lifted(self, lot: str) -> bool:
        status = (await _read(lambda: self.lg.lots.GetReleaseStatus(
            lpb.GetReleaseStatusRequest(lot_id=lot), timeout=10))).release_status
        return "QA_HOLD" not in {u.code for u in status.unmet}

    async def supplier_life(self, supplier: str, rng: random.Random) -> None:
        if rng.random() >= self.plan.suspend_p:
            return
        await asyncio.sleep(rng.random() * 2)
        await self.suspend(supplier)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 2)
            await self.requalify(supplier)

    def _qkey(self, supplier: str) -> dict[str, str]:
        return {"supplier_id": supplier, "site_id": DEFAULT_SITE,
                "material_code": self.material}

    async def _standing(self, supplier: str) -> int:
        request = spb.GetQualificationRequest(**self._qkey(supplier))
        return (await _read(lambda: self.lg.suppliers.GetQualification(
            request, timeout=10))).qualification.status

    async def suspend(self, supplier: str) -> Op:
        async def settled(code: grpc.StatusCode) -> bool:
            return await self._standing(supplier) == spb.QUALIFICATION_STATUS_SUSPENDED

        return await self.rec.call(
            "suspend", {"supplier": supplier, "material": self.material},
            lambda: self.lg.suppliers.SuspendQualification(spb.SuspendQualificationRequest(
                reason="audit found a critical deviation", requested_by="qa.fault",
                **self._qkey(supplier)), timeout=5), settle=settled)

    async def requalify(self, supplier: str) -> Op:
        async def again() -> Any:
            return await self.lg.qualify(supplier, "Supplier " + supplier, self.material,
                                         VALID_UNTIL)

        return await self.rec.call("qualify", {"supplier": supplier, "material": self.material},
                                   again)


# --- the oracle --------------------------------------------------------------------------

@dataclass
class Expected:
    lot: str
    supplier: str
    status: str
    codes: frozenset[str]
    # Released earlier and only the supplier's standing lapsed since: may stay RELEASED
    # (then it must be on the review list).
    may_stay_released: bool = False
    certain: bool = True


class Oracle:
    """What the end state must be, from the acknowledged operations alone.

    The README's rule, in its own words: a lot is RELEASED only when its supplier is
    qualified and each of identity, purity and sterility has a result that counts and
    passes, with no failure that still counts. A failure that counts holds the lot
    (ON_HOLD) until QA invalidates it (it stops counting; a retest is needed) or
    confirms it (REJECTED). QA's hold holds, QA's rejection rejects. A lot released
    before its supplier lapsed stays RELEASED and is reviewed.
    """

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.standing: dict[str, str] = {}
        self.lots: dict[str, str] = {}
        self.results: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.keys: dict[str, set[str]] = defaultdict(set)  # lot -> acked instrument keys
        self.held: dict[str, bool] = {}
        self.rejected: set[str] = set()
        self.uncertain: set[str] = set()
        for op in sorted((o for o in ops if o.acked is not None or o.outcome != "pending"),
                         key=lambda o: o.acked or o.invoked):
            self._apply(op)

    def _apply(self, op: Op) -> None:
        lot = op.key.get("lot")
        if op.outcome == "indeterminate":
            if lot:
                self.uncertain.add(lot)
            if op.kind in ("suspend", "qualify"):
                self.standing[op.key["supplier"]] = "UNKNOWN"
            return
        if not op.ok:
            return
        if op.kind == "qualify":
            self.standing[op.key["supplier"]] = "QUALIFIED"
        elif op.kind == "suspend":
            self.standing[op.key["supplier"]] = "SUSPENDED"
        elif op.kind == "receive":
            self.lots[lot] = op.key["supplier"]
        elif op.kind == "result":
            result_id = op.value.result.result_id
            self.keys[lot].add(op.key["key"])
            self.results[lot].setdefault(result_id, {
                "test": op.key["test"], "passing": op.key["passing"], "state": "VALID",
                "key": op.key["key"]})
        elif op.kind in ("invalidate", "confirm"):
            entry = self.results[lot].get(op.key["result_id"])
            if entry is not None:
                entry["state"] = "INVALIDATED" if op.kind == "invalidate" else "CONFIRMED"
        elif op.kind == "hold":
            self.held[lot] = True
        elif op.kind == "release_hold":
            self.held[lot] = False
        elif op.kind == "reject":
            self.rejected.add(lot)

    def expected(self, lot: str) -> Expected:
        supplier = self.lots[lot]
        codes: set[str] = set()
        standing = self.standing.get(supplier, "NONE")
        if standing == "SUSPENDED":
            codes.add("SUPPLIER_SUSPENDED")
        elif standing != "QUALIFIED":
            codes.add("SUPPLIER_NOT_QUALIFIED")
        rejected = lot in self.rejected
        on_hold = bool(self.held.get(lot))
        for test in TESTS:
            of_test = [r for r in self.results[lot].values() if r["test"] == test]
            counted = [r for r in of_test if r["state"] != "INVALIDATED"]
            failing = [r for r in counted if not r["passing"]]
            if any(r["state"] == "CONFIRMED" for r in failing):
                codes.add(f"{test}_FAILED")
                rejected = True
            elif failing:
                codes.add(f"{test}_OUT_OF_SPECIFICATION")
                on_hold = True
            elif counted:
                pass
            elif of_test:
                codes.add(f"{test}_RETEST_REQUIRED")
            else:
                codes.add(f"{test}_MISSING")
        if lot in self.rejected:
            codes.add("QA_REJECTED")
        if self.held.get(lot):
            codes.add("QA_HOLD")
        status = ("REJECTED" if rejected else "ON_HOLD" if on_hold
                  else "QUARANTINE" if codes else "RELEASED")
        only_supplier = bool(codes) and codes <= SUPPLIER_CODES and not rejected and not on_hold
        return Expected(lot, supplier, status, frozenset(codes),
                        may_stay_released=only_supplier,
                        certain=lot not in self.uncertain and standing != "UNKNOWN")


# --- the check ---------------------------------------------------------------------------

@dataclass
class Verdict:
    lots: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong_releases: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong_releases or self.mismatches)

    def describe(self) -> str:
        lines = [f"{len(self.lost)} lost, {len(self.duplicated)} duplicated, "
                 f"{len(self.wrong_releases)} wrong releases, {len(self.mismatches)} "
                 f"mismatches over {self.lots} lots"]
        for title, items in (("lost", self.lost), ("duplicated", self.duplicated),
                             ("wrong release", self.wrong_releases),
                             ("mismatch", self.mismatches)):
            lines += [f"  {title}: {item}" for item in items[:20]]
        return "\n".join(lines)


async def _read(call: Callable[[], Awaitable[Any]]) -> Any:
    """A read for the check, retried while the answer is UNAVAILABLE or the like: the
    first use of a pooled connection the database restart cut answers so (nothing was
    changed, retry later), as any client sees it."""
    give_up = time.monotonic() + 60
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRY or time.monotonic() > give_up:
                raise
        await asyncio.sleep(0.2)


def _status_name(value: int) -> str:
    return lpb.LotStatus.Name(value).removeprefix("LOT_STATUS_")


async def _observe(lg: Lotgate, lot: str) -> tuple[str, frozenset[str]]:
    status = (await _read(lambda: lg.lots.GetReleaseStatus(
        lpb.GetReleaseStatusRequest(lot_id=lot), timeout=10))).release_status
    return _status_name(status.status), frozenset(u.code for u in status.unmet)


def _agrees(expected: Expected, seen: tuple[str, frozenset[str]], reviewed: bool) -> bool:
    status, codes = seen
    if (status, codes) == (expected.status, expected.codes):
        return True
    # REJECTED is final: its reasons are those of the rejection, the supplier's standing
    # as it was then (a later requalification does not decide the lot again).
    if status == expected.status == "REJECTED" and (
            codes - SUPPLIER_CODES == expected.codes - SUPPLIER_CODES):
        return True
    # Released before the supplier lapsed: stays RELEASED, and QA reviews it.
    return expected.may_stay_released and status == "RELEASED" and reviewed


async def _reviewed_lots(lg: Lotgate, suppliers: set[str]) -> set[str]:
    reviewed: set[str] = set()
    for supplier in suppliers:
        reply = await _read(lambda s=supplier: lg.lots.ListLotReviews(
            lpb.ListLotReviewsRequest(supplier_id=s), timeout=10))
        reviewed |= {r.lot_id for r in reply.reviews}
    return reviewed


async def check(lg: Lotgate, ops: list[Op], *, quiesce_s: float = 120.0) -> Verdict:
    """Wait (up to `quiesce_s`) for every lot to reach what the oracle says, then judge."""
    oracle = Oracle(ops)
    verdict = Verdict(lots=len(oracle.lots))
    expected = {lot: oracle.expected(lot) for lot in oracle.lots}
    suppliers = set(oracle.lots.values())
    give_up = time.monotonic() + quiesce_s
    while True:
        reviewed = await _reviewed_lots(lg, suppliers)
        seen = {}
        for lot in expected:
            try:
                seen[lot] = await _observe(lg, lot)
            except grpc.aio.AioRpcError as error:
                seen[lot] = (f"error:{error.code().name}", frozenset())
        waiting = [lot for lot, e in expected.items()
                   if e.certain and not _agrees(e, seen[lot], lot in reviewed)]
        if not waiting or time.monotonic() > give_up:
            break
        await asyncio.sleep(0.5)
    for lot, e in expected.items():
        status, codes = seen[lot]
        if status.startswith("error:"):
            verdict.lost.append(f"lot {lot}: receipt acknowledged, now {status}")
            continue
        if status == "RELEASED" and e.status != "RELEASED" and not (
                e.may_stay_released and lot in reviewed):
            verdict.wrong_releases.append(
                f"lot {lot}: RELEASED, oracle {e.status} {sorted(e.codes)}"
                + (" (released before the supplier lapsed, but not on the review list)"
                   if e.may_stay_released else ""))
        elif e.certain and not _agrees(e, seen[lot], lot in reviewed):
            verdict.mismatches.append(f"lot {lot}: {status} {sorted(codes)}, oracle "
                                      f"{e.status} {sorted(e.codes)}")
    await _check_standing(lg, oracle, verdict)
    await _check_results(lg, oracle, verdict)
    await _check_history(lg, oracle, verdict)
    return verdict


async def _check_standing(lg: Lotgate, oracle: Oracle, verdict: Verdict) -> None:
    """Each supplier's qualification is what its last acknowledged change made it."""
    checked: set[str] = set()
    for op in oracle.ops:
        if op.kind not in ("qualify", "suspend") or not op.ok:
            continue
        supplier = op.key["supplier"]
        expected = oracle.standing.get(supplier)
        if expected in (None, "UNKNOWN") or supplier in checked:
            continue
        checked.add(supplier)
        request = spb.GetQualificationRequest(supplier_id=supplier, site_id=DEFAULT_SITE,
                                              material_code=op.key.get("material", ""))
        reply = await _read(lambda r=request: lg.suppliers.GetQualification(r, timeout=10))
        seen = spb.QualificationStatus.Name(reply.qualification.status).removeprefix(
            "QUALIFICATION_STATUS_")
        if seen != expected:
            verdict.lost.append(f"supplier {supplier}: {seen}, acknowledged {expected}")


async def _check_results(lg: Lotgate, oracle: Oracle, verdict: Verdict) -> None:
    """Every acknowledged result stored exactly once, in the state QA's acknowledged
    invalidation or confirmation gave it."""
    for lot in oracle.lots:
        stored = (await _read(lambda lot=lot: lg.results.ListLotResults(
            rpb.ListLotResultsRequest(lot_id=lot), timeout=10))).results
        by_key = Counter(r.instrument_result_id for r in stored)
        verdict.duplicated += [f"lot {lot}: {key} stored {n} times"
                               for key, n in by_key.items() if n > 1]
        states = {r.result_id: rpb.ResultState.Name(r.state).removeprefix("RESULT_STATE_")
                  for r in stored}
        for result_id, entry in oracle.results[lot].items():
            if result_id not in states:
                verdict.lost.append(f"lot {lot}: result {result_id} ({entry['key']}) "
                                    "acknowledged, not stored")
            elif states[result_id] != entry["state"] and lot not in oracle.uncertain:
                verdict.lost.append(f"lot {lot}: result {result_id} is {states[result_id]}, "
                                    f"acknowledged {entry['state']}")


async def _check_history(lg: Lotgate, oracle: Oracle, verdict: Verdict) -> None:
    """Each lot's decision history: versions 1..n without a gap, the last one the status
    it shows, every decision replays to what was stored, and none ever released a lot
    with a failure that was never invalidated (in this workload a failing result is the
    lot's first of its test, so no release can have come before it counted)."""
    for lot in oracle.lots:
        decisions = list((await _read(lambda lot=lot: lg.lots.ListDecisions(
            lpb.ListDecisionsRequest(lot_id=lot), timeout=10))).decisions)
        status = (await _read(lambda lot=lot: lg.lots.GetReleaseStatus(
            lpb.GetReleaseStatusRequest(lot_id=lot), timeout=10))).release_status
        versions = [d.decision.version for d in decisions]
        if versions != list(range(1, len(versions) + 1)) or (
                versions and versions[-1] != status.version):
            verdict.mismatches.append(f"lot {lot}: decision versions {versions}, status "
                                      f"version {status.version}")
        verdict.mismatches += [f"lot {lot} decision {d.decision.version} does not replay: "
                               f"{d.replay.difference}" for d in decisions if not d.replay.agrees]
        failures_kept = [r for r in oracle.results[lot].values()
                         if not r["passing"] and r["state"] != "INVALIDATED"]
        released = [d.decision.version for d in decisions
                    if d.decision.status == lpb.LOT_STATUS_RELEASED]
        if failures_kept and released:
            verdict.wrong_releases.append(
                f"lot {lot}: released (decision versions {released}) though result(s) "
                f"{[r['key'] for r in failures_kept]} fail and were never invalidated")


def summary(ops: list[Op], faults: Counter[str], verdict: Verdict, seed: int,
            seconds: float) -> str:
    outcomes = Counter(o.outcome for o in ops)
    rows = [("seed", seed), ("seconds", f"{seconds:.0f}"), ("operations", len(ops)),
            ("acknowledged (OK)", outcomes["ok"]),
            ("definite errors", sum(n for k, n in outcomes.items() if k.startswith("error"))),
            ("indeterminate", outcomes["indeterminate"]), ("lots", verdict.lots)]
    refused = Counter(f"{o.kind} {o.outcome.removeprefix('error:')}" for o in ops
                      if o.outcome.startswith("error:"))
    rows += [(f"  refused: {what}", n) for what, n in sorted(refused.items())]
    rows += [(f"fault {kind}", n) for kind, n in sorted(faults.items())]
    rows += [("lost acknowledged operations", len(verdict.lost)),
             ("duplicated results", len(verdict.duplicated)),
             ("wrong releases", len(verdict.wrong_releases)),
             ("status mismatches", len(verdict.mismatches))]
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{k!s:<{width}}  {v}" for k, v in rows)


@contextlib.asynccontextmanager
async def connected(stack: FaultStack) -> Any:
    async with Lotgate.connect(stack.addresses(), acting()) as lg:
        yield lg
