"""Posts written together (group commit) over real gRPC: posts that arrive while one is
being written share the next transaction, yet each caller sees exactly what it would
alone: its own result, numbered without gaps per lot, its own audit entry and event,
and, when its post is refused, the very error it gets alone, while the rest are stored.

Whether calls really went together is read from the service's own metric
(`lotgate_group_commit_calls`): each test fires its calls at once, in rounds, until a
group of the kind it is about has formed (the first round practically always).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from services.results.posting import ALONE_FROM
from shared.runtime import RunningService
from shared.tracing import REQUEST_ID_HEADER
from tests.support import auth
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    BACT,
    FTIR,
    HPLC,
    LIMS,
    RESULT_RECORDED,
    identity,
    list_results,
    new_instrument,
    post,
    post_all,
    purity,
    receive_lot,
    specify,
    sterility,
)
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

service = support.service
stub = support.stub
instruments = support.instruments
js = support.js

ROUNDS = 5  # at most: each test stops once its kind of group has formed
CALLS = 16


@pytest.fixture(scope="module")
async def audit(service) -> AsyncIterator[apb_grpc.AuditServiceStub]:
    async with auth.channel(service.address, "auditor", sub="auditor.max") as channel:
        yield apb_grpc.AuditServiceStub(channel)


def groups(service: RunningService, outcome: str) -> float:
    """How many calls went in groups that committed, or that fell back to running alone."""
    assert service.metrics is not None
    return service.metrics.registry.get_sample_value(
        "lotgate_group_commit_calls_sum", {"group": "results.post", "outcome": outcome}) or 0.0


async def at_once(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Every call started together; their answers or errors, in order."""
    return await asyncio.gather(*(call() for call in calls), return_exceptions=True)


def sent(stub, request: pb.RecordResultRequest, request_id: str
         ) -> Callable[[], Awaitable[pb.Result]]:
    return lambda: post(stub, request, metadata=(("x-request-id", request_id),))


async def material_lots(stub, js, count: int) -> list[str]:
    """`count` known lots of one material with a specification in force."""
    material = ref("MAT")
    await specify(stub, material)
    return [await receive_lot(stub, js, material) for _ in range(count)]


async def recorded_events(nats_server, lots: list[str], last: dict[str, str]
                          ) -> Counter[tuple[str, str]]:
    """(result_id, request id header) of every ResultRecorded of `lots`, read up to the
    event of each lot's result `last[lot]`: the relay publishes a lot's events in commit
    order, so any event of the lot committed before that one has come by then."""
    nc = await nats_server.connect()
    seen: Counter[tuple[str, str]] = Counter()
    waiting = set(last.values())
    try:
        sub = await nc.jetstream().subscribe(RESULT_RECORDED, ordered_consumer=True)
        async with asyncio.timeout(15):
            while waiting:
                msg = await sub.next_msg(timeout=15)
                try:
                    event = events_pb2.ResultRecorded.FromString(msg.data)
                except Exception:  # other tests' poison messages
                    continue
                if event.result.lot_id in lots:
                    seen[(event.result.result_id,
                          (msg.headers or {}).get(REQUEST_ID_HEADER, ""))] += 1
                    waiting.discard(event.result.result_id)
    finally:
        await nc.close()
    return seen


@pytest.mark.req("RES-001", "RES-003")
async def test_posts_written_together_are_each_stored_numbered_and_recorded_as_their_own(
        service, stub, js, audit, nats_server) -> None:
    lots = await material_lots(stub, js, 3)
    makers = [lambda lot: purity(lot, 99.0, instrument=HPLC),
              lambda lot: purity(lot, 99.5, instrument=LIMS),
              lambda lot: identity(lot, instrument=FTIR),
              lambda lot: sterility(lot, instrument=BACT)]
    before = groups(service, "committed")
    posted: list[tuple[pb.RecordResultRequest, str, pb.Result]] = []
    for _ in range(ROUNDS):
        requests = [(makers[n % len(makers)](lots[n % len(lots)]), ref("REQ"))
                    for n in range(CALLS)]
        answers = await at_once([sent(stub, r, rid) for r, rid in requests])

        assert not [a for a in answers if isinstance(a, BaseException)]
        posted += [(r, rid, a) for (r, rid), a in zip(requests, answers, strict=True)]
        if groups(service, "committed") > before:
            break
    assert groups(service, "committed") > before, "no posts were written together"

    # Each caller got its own result.
    for request, _, result in posted:
        assert (result.instrument_id, result.instrument_result_id, result.lot_id) == (
            request.instrument_id, request.instrument_result_id, request.lot_id)
    # All stored, once each, numbered 1..n per lot without gaps.
    for lot_id in lots:
        stored = await list_results(stub, lot_id)
        mine = sorted(r.result_id for _, _, r in posted if r.lot_id == lot_id)
        assert sorted(r.result_id for r in stored) == mine
        assert sorted(r.lot_result_number for r in stored) == list(range(1, len(mine) + 1))
    # Each its own audit entry, naming its own caller and request.
    for request, request_id, result in posted:
        found = (await audit.ListAuditTrail(apb.ListAuditTrailRequest(
            record_type="result", record_id=result.result_id))).entries
        assert [(e.action, e.principal_subject, e.request_id) for e in found] == [
            ("record", f"instrument:{request.instrument_id}", request_id)]
    # And one event each, carrying its own request's context.
    last = {lot: (await post(stub, purity(lot, 99.1))).result_id for lot in lots}
    events = await recorded_events(nats_server, lots, last)
    assert {key: n for key, n in events.items() if key[0] not in last.values()} == {
        (result.result_id, request_id): 1 for _, request_id, result in posted}


async def _out_of_service(stub, js) -> pb.RecordResultRequest:
    instrument = await new_instrument(stub)
    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=instrument, status=pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
        reason="pump leaking", requested_by="qc.lead"))
    (lot_id,) = await material_lots(stub, js, 1)
    return purity(lot_id, 99.0, instrument=instrument)


async def _unknown_lot(stub, js) -> pb.RecordResultRequest:
    return purity(ref("LOT"), 99.0)


async def _out_of_calibration(stub, js) -> pb.RecordResultRequest:
    (lot_id,) = await material_lots(stub, js, 1)
    # Measured before the instrument's calibration (30 days ago, see `register`).
    return purity(lot_id, 99.0, measured_at=support.now() - timedelta(days=40))


async def _under_investigation(stub, js) -> pb.RecordResultRequest:
    (lot_id,) = await material_lots(stub, js, 1)
    await post(stub, purity(lot_id, 50.0))  # out of specification: under investigation
    return purity(lot_id, 99.0)  # a new purity result, not a retest of it: refused


@pytest.mark.req("RES-005", "INS-001", "OOS-003")
@pytest.mark.parametrize("refused_post", [_unknown_lot, _out_of_service, _out_of_calibration,
                                          _under_investigation])
async def test_a_refused_post_in_a_group_gets_its_own_error_and_the_others_are_stored(
        service, stub, js, refused_post) -> None:
    bad = await refused_post(stub, js)
    alone = await support.refused(post(stub, bad))
    lots = await material_lots(stub, js, 2)
    before = groups(service, "fell_back")
    for _ in range(ROUNDS):
        good = [purity(lots[n % 2], 99.0 + n / 10, instrument=(HPLC, LIMS)[n % 2])
                for n in range(CALLS)]
        calls = [lambda r=r: post(stub, r) for r in good]
        calls.insert(CALLS // 2, lambda: post(stub, bad))
        answers = await at_once(calls)

        error = answers.pop(CALLS // 2)
        assert isinstance(error, grpc.aio.AioRpcError)
        assert (error.code(), error.details(), error.trailing_metadata()) == (
            alone.code(), alone.details(), alone.trailing_metadata())
        assert [(a.instrument_result_id, a.lot_id) for a in answers] == [
            (r.instrument_result_id, r.lot_id) for r in good]
        if groups(service, "fell_back") > before:
            break
    assert groups(service, "fell_back") > before, "the refused post never shared a group"
    stored = [r for lot in lots for r in await list_results(stub, lot)]
    assert len(stored) == len({r.result_id for r in stored})
    assert bad.instrument_result_id not in {r.instrument_result_id for r in stored}
    for lot in lots:
        numbers = [r.lot_result_number for r in await list_results(stub, lot)]
        assert sorted(numbers) == list(range(1, len(numbers) + 1))


@pytest.mark.req("DEL-005", "RES-001")
async def test_overlapping_identical_posts_in_a_group_are_stored_once_and_answered_alike(
        service, stub, js) -> None:
    lots = await material_lots(stub, js, 2)
    before = groups(service, "committed") + groups(service, "fell_back")
    for _ in range(ROUNDS):
        copied = purity(lots[0], 99.3, instrument=LIMS)
        others = [purity(lots[n % 2], 99.0) for n in range(CALLS)]
        calls = [lambda r=r: post(stub, r) for r in others]
        calls[3:3] = [lambda r=copied: post(stub, r), lambda r=copied: post(stub, r)]
        answers = await at_once(calls)

        assert not [a for a in answers if isinstance(a, BaseException)]
        assert answers[3] == answers[4]
        stored = await list_results(stub, lots[0])
        assert [r.result_id for r in stored
                if r.instrument_result_id == copied.instrument_result_id] == [
            answers[3].result_id]
        if groups(service, "committed") + groups(service, "fell_back") > before:
            break
    assert groups(service, "committed") + groups(service, "fell_back") > before


@pytest.mark.req("RES-002")
async def test_a_batch_written_in_a_group_stays_all_or_none(service, stub, js) -> None:
    lots = await material_lots(stub, js, 2)
    before = groups(service, "fell_back")
    for _ in range(ROUNDS):
        # The second entry's measurement is not the purity criterion's unit: refused.
        bad = pb.RecordResultsRequest(results=[
            purity(lots[0], 99.0, instrument=LIMS), purity(lots[0], 99.0, "mg", instrument=LIMS)])
        alone = await support.refused(stub.RecordResults(bad))
        good = [purity(lots[0], 99.2, instrument=LIMS), purity(lots[1], 99.4, instrument=LIMS),
                purity(lots[1], 99.6, instrument=LIMS)]
        singles = [purity(lots[n % 2], 99.0) for n in range(CALLS)]
        calls: list[Callable[[], Awaitable[Any]]] = [lambda r=r: post(stub, r) for r in singles]
        calls.insert(2, lambda g=good: post_all(stub, *g))
        calls.insert(CALLS // 2, lambda b=bad: stub.RecordResults(b))
        answers = await at_once(calls)

        error = answers.pop(CALLS // 2)
        assert isinstance(error, grpc.aio.AioRpcError)
        assert (error.code(), field_violations(error)) == (
            alone.code(), field_violations(alone))
        assert field_violations(error)  # names results[1]
        batch = answers.pop(2)
        assert [r.instrument_result_id for r in batch] == [
            r.instrument_result_id for r in good]
        stored = {r.instrument_result_id for lot in lots for r in await list_results(stub, lot)}
        assert {r.instrument_result_id for r in bad.results}.isdisjoint(stored)
        assert {r.instrument_result_id for r in [*good, *singles]} <= stored
        if groups(service, "fell_back") > before:
            break
    assert groups(service, "fell_back") > before, "the refused batch never shared a group"


async def test_with_group_commit_off_every_post_is_written_alone(
        databases, nats_server, service, stub, js) -> None:
    """LOTGATE_GROUP_COMMIT=off: a second replica on the same database writes every post
    in a transaction of its own."""
    lots = await material_lots(stub, js, 1)
    running = await start_in_process("results", databases=databases, nats=nats_server,
                                     database_url=service.infra.settings.database_url,
                                     group_commit="off")
    try:
        async with auth.channel(running.address) as channel:
            alone = pb_grpc.ResultServiceStub(channel)
            answers = await at_once([lambda n=n: post(alone, purity(lots[0], 99.0 + n / 10))
                                     for n in range(CALLS)])
        assert not [a for a in answers if isinstance(a, BaseException)]
        assert sorted(r.lot_result_number for r in await list_results(stub, lots[0])) == list(
            range(1, CALLS + 1))
        assert groups(running, "committed") + groups(running, "fell_back") == 0
    finally:
        await running.stop()


async def test_plates_are_written_alone_at_once_not_queued_into_groups(
        service, stub, js) -> None:
    """A post of ALONE_FROM results or more (a plate) shares its statements among its own
    results already; several plates at once each run in a transaction of their own."""
    lots = await material_lots(stub, js, 2)
    before = groups(service, "committed") + groups(service, "fell_back")
    plates = [[purity(lots[n % 2], 99.0 + n / 100, instrument=LIMS) for n in range(ALONE_FROM)]
              for _ in range(4)]
    answers = await at_once([lambda p=p: post_all(stub, *p) for p in plates])

    assert not [a for a in answers if isinstance(a, BaseException)]
    assert [len(a) for a in answers] == [ALONE_FROM] * 4
    assert len(await list_results(stub, lots[0])) + len(await list_results(stub, lots[1])) \
        == 4 * ALONE_FROM
    assert groups(service, "committed") + groups(service, "fell_back") == before
