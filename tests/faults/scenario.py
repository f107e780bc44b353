"""One run of the fault suite: start the system, break it while the workload runs, let it
quiesce, judge it. Shared by the fault tests and the soak (tests.faults.soak)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats.js.errors

from lotgate.results.v1 import events_pb2 as result_events
from shared import messaging
from tests.faults.harness import (
    FaultStack,
    Plan,
    Recorder,
    Verdict,
    Workload,
    check,
    connected,
    summary,
)
from tests.faults.postgres import PgCluster
from tests.support.events import harness

Nemesis = Callable[[FaultStack, Workload, random.Random], Awaitable[None]]


@dataclass
class Outcome:
    verdict: Verdict
    stack: FaultStack
    recorder: Recorder
    table: str

    def explain(self) -> str:
        return f"{self.table}\n{self.verdict.describe()}\n{self.stack.logs_tail()}"


async def run(workdir: Path, pg: PgCluster, seed: int, *, plan: Plan | None = None,
              crash_at: dict[str, str] | None = None, nemesis: Nemesis | None = None,
              after: Nemesis | None = None, lots_replicas: int = 1) -> Outcome:
    """Start, set up, run the workload with `nemesis` beside it, run `after` once the
    workload is done, then wait for the system to quiesce and check it against the oracle."""
    started = time.monotonic()
    stack = FaultStack(workdir, pg, crash_at=crash_at or {}, lots_replicas=lots_replicas)
    await stack.start()
    try:
        recorder = Recorder()
        async with connected(stack) as lg:
            workload = Workload(lg, seed, plan or Plan(), recorder)
            await workload.setup()
            rng = random.Random(f"nemesis/{seed}")
            extra = (lambda: nemesis(stack, workload, rng)) if nemesis else None
            await workload.run(extra=extra)
            if after is not None:
                await after(stack, workload, rng)
            verdict = await check(lg, recorder.ops)
        table = summary(recorder.ops, stack.faults, verdict, seed,
                        time.monotonic() - started)
        print(table)
        return Outcome(verdict, stack, recorder, table)
    finally:
        await stack.stop()


# --- nemeses -----------------------------------------------------------------------------

def repeatedly(fault: Callable[[FaultStack, random.Random], Awaitable[None]], times: int, *,
               gap_s: tuple[float, float] = (0.5, 2.0)) -> Nemesis:
    """`fault` `times` times, a random gap before each (the workload runs meanwhile)."""
    async def nemesis(stack: FaultStack, workload: Workload, rng: random.Random) -> None:
        for _ in range(times):
            await asyncio.sleep(rng.uniform(*gap_s))  # let the workload get going
            await fault(stack, rng)
    return nemesis


async def kill_nats(stack: FaultStack, rng: random.Random) -> None:
    await stack.kill_nats(rng.uniform(0.5, 2.0))


async def pause_nats(stack: FaultStack, rng: random.Random) -> None:
    await stack.pause_nats(rng.uniform(1.0, 4.0))


async def crash_postgres(stack: FaultStack, rng: random.Random) -> None:
    await stack.crash_postgres(rng.uniform(1.0, 3.0))


def kill_service(name: str) -> Callable[[FaultStack, random.Random], Awaitable[None]]:
    async def fault(stack: FaultStack, rng: random.Random) -> None:
        await stack.kill(name)
    return fault


async def _stream_messages(stack: FaultStack, stream: str) -> list[object]:
    """Every message in `stream`, oldest first (read directly, by sequence)."""
    assert stack.nats is not None
    nc = await stack.nats.connect()
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                messages.append(await js.get_msg(stream, seq))
            except nats.js.errors.NotFoundError:  # a deleted sequence
                continue
        return messages
    finally:
        await nc.close()


async def republish_after_window(stack: FaultStack, workload: Workload,
                                 rng: random.Random) -> None:
    """Every event of the three streams again, byte for byte (same Nats-Msg-Id, same
    signature), after the broker's de-duplication window: the window is shortened for the
    copies and put back after. Only the consumers' inboxes stand between a copy and a
    double count, and an old qualification version must not override a newer one."""
    assert stack.nats is not None
    h = await harness(stack.nats)
    try:
        for stream in (messaging.RESULTS_STREAM.name, messaging.SUPPLIERS_STREAM.name,
                       messaging.LOTS_STREAM.name):
            messages = await _stream_messages(stack, stream)
            config = (await h.raw.stream_info(stream)).config
            window = config.duplicate_window
            config.duplicate_window = 0.1  # the least the broker takes
            await h.raw.update_stream(config)
            await asyncio.sleep(0.3)  # the fault itself: the window passes
            rng.shuffle(messages)
            for msg in messages:
                ack = await h.raw.publish(msg.subject, msg.data,  # type: ignore[attr-defined]
                                          headers=dict(msg.headers or {}))  # type: ignore[attr-defined]
                assert not ack.duplicate, "the broker still de-duplicated the copy"
                stack.faults["duplicate-after-window"] += 1
            config.duplicate_window = window
            await h.raw.update_stream(config)
    finally:
        await h.close()


async def poison(stack: FaultStack, workload: Workload, rng: random.Random) -> None:
    """Mid-workload: undecodable events, an unsigned one and one signed by the wrong
    producer, on the subjects the lots and results services consume."""
    assert stack.nats is not None
    await asyncio.sleep(rng.uniform(0.5, 1.5))
    h = await harness(stack.nats)
    try:
        for subject in (messaging.RESULT_RECORDED, messaging.QUALIFICATION_CHANGED,
                        messaging.LOT_RECEIVED):
            await h.js.publish(subject, b"\xff\x00 not a protobuf \x13",
                               headers={"Nats-Msg-Id": str(uuid.uuid4())})
            await h.raw.publish(subject, b"\x0a\x03abc",
                                headers={"Nats-Msg-Id": str(uuid.uuid4())})
            stack.faults["poison"] += 2
    finally:
        await h.close()


async def unknown_lots(stack: FaultStack, workload: Workload, rng: random.Random) -> None:
    """Copies of recorded results re-addressed to lots nobody received (and new ids):
    kept aside by the lots service, never counted for a real lot."""
    assert stack.nats is not None
    await asyncio.sleep(rng.uniform(1.0, 3.0))  # let the workload get going
    recorded: list[object] = []
    for _ in range(600):  # wait (at most a minute) for the first recorded results
        recorded = [m for m in await _stream_messages(stack, messaging.RESULTS_STREAM.name)
                    if m.subject == messaging.RESULT_RECORDED]  # type: ignore[attr-defined]
        if recorded:
            break
        await asyncio.sleep(0.1)
    h = await harness(stack.nats)
    try:
        for msg in recorded:
            event = result_events.ResultRecorded.FromString(msg.data)  # type: ignore[attr-defined]
            event.event_id = str(uuid.uuid4())
            event.result.lot_id = f"UNKNOWN-{uuid.uuid4().hex[:8]}"
            event.result.result_id = str(uuid.uuid4())
            await h.js.publish(messaging.RESULT_RECORDED, event.SerializeToString(),
                               headers={"Nats-Msg-Id": event.event_id})
            stack.faults["event-for-unknown-lot"] += 1
    finally:
        await h.close()
