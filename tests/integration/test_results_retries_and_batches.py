"""Posting results over real gRPC, again and many at once: retries answered with the
original, numbering without gaps, batches stored whole or not at all.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    HPLC,
    LIMS,
    RESULT_RECORDED,
    events_until,
    identity,
    list_results,
    new_instrument,
    post,
    post_all,
    purity,
    refused,
    specified_lot,
    sterility,
)
from tests.support.services import ref

pytestmark = pytest.mark.integration

# The fixtures of tests/support/results.py: the running service, a stub for it, its
# instruments (registered for the module) and JetStream.
service = support.service
stub = support.stub
instruments = support.instruments
js = support.js


# Idempotency


@pytest.mark.req("RES-001")
async def test_a_retried_post_is_answered_identically_and_published_once(
        stub, js, nats_server) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)

    first = await post(stub, request)
    again = await post(stub, request)
    second = await post(stub, purity(lot_id, 99.2))
    seen = await events_until(nats_server, {RESULT_RECORDED: events_pb2.ResultRecorded},
                              lambda e: e.result.lot_id == lot_id,
                              lambda e: e.result.result_id == second.result_id)

    assert again == first
    assert await list_results(stub, lot_id) == [first, second]
    assert [e.result for _, e in seen] == [first, second]
    assert all(e.occurred_at == e.result.recorded_at for _, e in seen)


@pytest.mark.req("RES-001")
async def test_a_retry_is_answered_from_its_original_after_its_instrument_left_service(
        stub, js) -> None:
    """A post is first written as new, without looking its key up; a retry must still be
    answered from the stored original, not judged again (the instrument has since been
    taken out of service, which would refuse a new result), in a batch as alone."""
    _, lot_id = await specified_lot(stub, js)
    instrument = await new_instrument(stub)
    request = purity(lot_id, 99.0, instrument=instrument)
    plate = pb.RecordResultsRequest(results=[purity(lot_id, v, instrument=instrument)
                                             for v in (99.1, 99.2)])
    first = await post(stub, request)
    first_plate = (await stub.RecordResults(plate)).results
    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=instrument, status=pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
        reason="lamp failure", requested_by="qc.lead"))

    again = await post(stub, request)
    again_plate = (await stub.RecordResults(plate)).results
    new = await refused(post(stub, purity(lot_id, 99.3, instrument=instrument)))

    assert again == first
    assert list(again_plate) == list(first_plate)
    assert new.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await list_results(stub, lot_id) == [first, *first_plate]


@pytest.mark.req("RES-001")
async def test_a_conflicting_retry_is_already_exists_and_changes_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)
    original = await post(stub, request)
    changed = pb.RecordResultRequest()
    changed.CopyFrom(request)
    changed.quantity.value = 97.0

    error = await refused(post(stub, changed))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert original.result_id in error.details()
    assert await list_results(stub, lot_id) == [original]


@pytest.mark.req("RES-001")
async def test_the_same_id_from_another_instrument_is_another_result(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0, instrument=HPLC)

    first = await post(stub, request)
    request.instrument_id = LIMS
    second = await post(stub, request)

    assert first.result_id != second.result_id
    assert len(await list_results(stub, lot_id)) == 2


@pytest.mark.req("RES-001")
async def test_concurrent_duplicates_are_recorded_once(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)

    replies = await asyncio.gather(*(post(stub, request) for _ in range(8)))

    assert len({reply.SerializeToString(deterministic=True) for reply in replies}) == 1
    assert len(await list_results(stub, lot_id)) == 1


@pytest.mark.req("RES-003")
async def test_a_lots_results_are_numbered_without_gaps_and_retries_take_no_number(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    _, other_lot = await specified_lot(stub, js)
    first = purity(lot_id, 99.0)

    numbers = [(await post(stub, first)).lot_result_number,
               (await post(stub, purity(other_lot, 99.0))).lot_result_number,
               (await post(stub, first)).lot_result_number,
               (await post(stub, purity(lot_id, 98.5))).lot_result_number]
    numbers += [r.lot_result_number for r in await asyncio.gather(
        *(post(stub, purity(lot_id, 99.5)) for _ in range(5)))]

    assert numbers[:4] == [1, 1, 1, 2]
    assert sorted(numbers[4:]) == [3, 4, 5, 6, 7]
    assert [r.lot_result_number for r in await list_results(stub, lot_id)] == list(range(1, 8))


# Posting many at once


@pytest.mark.req("RES-002")
async def test_a_batch_is_stored_whole_and_answered_in_request_order(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    _, other_lot = await specified_lot(stub, js)
    batch = [identity(lot_id, instrument=LIMS), purity(other_lot, 99.0, instrument=LIMS),
             purity(lot_id, 99.5, instrument=LIMS), sterility(lot_id, instrument=LIMS)]

    stored = await post_all(stub, *batch)
    again = await post_all(stub, *batch)

    assert [r.instrument_result_id for r in stored] == [e.instrument_result_id for e in batch]
    assert [(r.lot_id, r.lot_result_number) for r in stored] == [
        (lot_id, 1), (other_lot, 1), (lot_id, 2), (lot_id, 3)]
    assert [r.sequence for r in stored] == sorted(r.sequence for r in stored)
    assert again == stored
    assert await list_results(stub, lot_id) == [stored[0], stored[2], stored[3]]


@pytest.mark.req("RES-002")
async def test_one_entry_refused_refuses_the_whole_batch(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    assay = purity(lot_id, 99.0, instrument=LIMS)
    assay.test = pb.TEST_KIND_ASSAY

    error = await refused(post_all(stub, identity(lot_id, instrument=LIMS),
                                   purity(lot_id, 99.0, "CFU/g", instrument=LIMS), assay))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"results[1].quantity.unit", "results[2].test"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-002")
async def test_a_batch_names_every_bad_entry(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    good = purity(lot_id, 99.0, instrument=LIMS)
    missing_time = purity(lot_id, 99.0, instrument=LIMS)
    missing_time.ClearField("measured_at")

    error = await refused(post_all(
        stub, good, purity(lot_id, math.nan, instrument=LIMS), missing_time,
        purity(lot_id, 99.0, instrument=HPLC), good))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "results[1].quantity.value", "results[2].measured_at", "results[3].instrument_id",
        "results[4].instrument_result_id"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-002")
async def test_a_batch_refused_for_one_entry_stores_none_of_it(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    unknown_lot = ref("LOT")

    not_found = await refused(post_all(stub, purity(lot_id, 99.0, instrument=LIMS),
                                       purity(unknown_lot, 99.0, instrument=LIMS)))

    assert not_found.code() == grpc.StatusCode.NOT_FOUND
    assert set(field_violations(not_found)) == {"results[1].lot_id"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-002", "RES-001")
async def test_a_batch_with_a_conflicting_retry_stores_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    stored = await post(stub, purity(lot_id, 99.0, instrument=LIMS, key="RUN-1"))

    error = await refused(post_all(stub, purity(lot_id, 99.5, instrument=LIMS),
                                   purity(lot_id, 99.9, instrument=LIMS, key="RUN-1")))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "results[1]" in error.details()
    assert await list_results(stub, lot_id) == [stored]


@pytest.mark.req("RES-002")
async def test_a_batch_holds_one_to_five_hundred_results(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    empty = await refused(post_all(stub))
    too_many = await refused(post_all(stub, *(identity(lot_id, instrument=LIMS)
                                               for _ in range(501))))
    most = await post_all(stub, *(identity(lot_id, instrument=LIMS) for _ in range(500)))

    assert set(field_violations(empty)) == set(field_violations(too_many)) == {"results"}
    assert [r.lot_result_number for r in most] == list(range(1, 501))
