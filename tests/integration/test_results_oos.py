"""Out-of-specification results over real gRPC: no testing into compliance, QA's
invalidations and confirmations, and their events.
"""

from __future__ import annotations

import grpc
import pytest

from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    FAILED,
    LIMS,
    RESULT_CONFIRMED,
    RESULT_INVALIDATED,
    RESULT_RECORDED,
    confirm,
    events_until,
    identity,
    invalidate,
    list_results,
    post,
    post_all,
    precondition,
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


# Out-of-specification results


@pytest.mark.req("OOS-004")
async def test_an_out_of_specification_result_blocks_further_tests_until_qa_decides(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, purity(lot_id, 97.0))

    error = await refused(post(stub, purity(lot_id, 99.5)))
    other_test = await post(stub, sterility(lot_id))

    assert failing.verdict == pb.VERDICT_FAIL
    assert error.code() == FAILED
    assert precondition(error) == ("INVESTIGATION", f"results/{failing.result_id}")
    assert "under investigation" in error.details()
    assert other_test.verdict == pb.VERDICT_PASS
    assert [r.result_id for r in await list_results(stub, lot_id)] == [
        failing.result_id, other_test.result_id]


@pytest.mark.req("OOS-003")
async def test_an_invalidated_result_is_kept_and_its_retest_must_name_it(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, purity(lot_id, 97.0))

    invalidated = await invalidate(stub, failing.result_id, reason="wrong dilution (LIR-7)")
    unnamed = await refused(post(stub, purity(lot_id, 99.5)))
    retest = await post(stub, purity(lot_id, 99.5, retest_of=failing.result_id))
    twice = await refused(post(stub, purity(lot_id, 99.6, retest_of=failing.result_id)))

    assert (invalidated.state, invalidated.state_reason, invalidated.state_changed_by) == (
        pb.RESULT_STATE_INVALIDATED, "wrong dilution (LIR-7)", "qa.jane")
    assert invalidated.HasField("state_changed_at")
    # The original measurement and verdict stay as they were.
    assert (invalidated.quantity, invalidated.verdict, invalidated.verdict_reason) == (
        failing.quantity, failing.verdict, failing.verdict_reason)
    assert precondition(unnamed) == ("RETEST", f"results/{failing.result_id}")
    assert (retest.retest_of, retest.verdict, retest.state) == (
        failing.result_id, pb.VERDICT_PASS, pb.RESULT_STATE_VALID)
    assert twice.code() == FAILED
    assert "retested already" in twice.details()
    assert await list_results(stub, lot_id) == [invalidated, retest]


@pytest.mark.req("OOS-003")
async def test_a_retest_must_name_an_invalidated_result_of_the_same_lot_and_test(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    passing = await post(stub, purity(lot_id, 99.0))
    other = await post(stub, sterility(lot_id))
    await invalidate(stub, other.result_id)

    not_invalidated = await refused(post(stub, purity(lot_id, 99.0,
                                                      retest_of=passing.result_id)))
    other_test = await refused(post(stub, purity(lot_id, 99.0, retest_of=other.result_id)))

    assert [precondition(e)[0] for e in (not_invalidated, other_test)] == ["RETEST", "RETEST"]
    assert "only an invalidated result is retested" in not_invalidated.details()
    assert "is not a PURITY result of this lot" in other_test.details()


@pytest.mark.req("OOS-004")
async def test_testing_into_compliance_is_refused_within_a_batch_too(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(post_all(stub, sterility(lot_id, growth=True, instrument=LIMS),
                                   sterility(lot_id, instrument=LIMS)))

    assert error.code() == FAILED
    assert precondition(error)[0] == "INVESTIGATION"
    assert "results[1]" in error.details()
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("OOS-002")
async def test_a_confirmed_result_stays_confirmed(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, sterility(lot_id, growth=True))
    passing = await post(stub, identity(lot_id))

    confirmed = await confirm(stub, failing.result_id, reason="OOS confirmed (INV-3)")
    again = await confirm(stub, failing.result_id, reason="OOS confirmed (INV-3)")
    other_reason = await refused(confirm(stub, failing.result_id, reason="changed my mind"))
    invalidating = await refused(invalidate(stub, failing.result_id))
    confirming_a_pass = await refused(confirm(stub, passing.result_id))

    assert (confirmed.state, confirmed.state_reason) == (pb.RESULT_STATE_CONFIRMED,
                                                         "OOS confirmed (INV-3)")
    assert again == confirmed
    assert [e.code() for e in (other_reason, invalidating, confirming_a_pass)] == [FAILED] * 3
    assert "is CONFIRMED" in other_reason.details()
    assert "is CONFIRMED" in invalidating.details()
    assert "passes its specification" in confirming_a_pass.details()
    assert await list_results(stub, lot_id) == [confirmed, passing]


@pytest.mark.req("OOS-003", "DEL-005")
async def test_an_invalidation_retried_is_answered_with_the_result(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    result = await post(stub, purity(lot_id, 97.0))

    first = await invalidate(stub, result.result_id, reason="wrong dilution", by="qa.jane")
    again = await invalidate(stub, result.result_id, reason="wrong dilution", by="qa.jane")
    other = await refused(invalidate(stub, result.result_id, reason="wrong dilution",
                                     by="qa.john"))

    assert again == first
    assert other.code() == FAILED
    assert "is INVALIDATED" in other.details()


@pytest.mark.req("OOS-003", "INP-001")
async def test_handling_a_result_needs_a_reason_and_a_known_result(stub) -> None:
    no_reason = await refused(stub.InvalidateResult(pb.InvalidateResultRequest(
        result_id=ref("R"), reason=" ", requested_by="qa.jane")))
    unknown = await refused(invalidate(stub, ref("R")))

    assert set(field_violations(no_reason)) == {"reason"}
    assert (unknown.code(), set(field_violations(unknown))) == (grpc.StatusCode.NOT_FOUND,
                                                                 {"result_id"})


@pytest.mark.req("OOS-002", "OOS-003")
async def test_invalidations_and_confirmations_are_published_with_the_result(
        stub, js, nats_server) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, purity(lot_id, 97.0))
    invalidated = await invalidate(stub, failing.result_id)
    retest = await post(stub, purity(lot_id, 96.0, retest_of=failing.result_id))
    confirmed = await confirm(stub, retest.result_id)

    seen = await events_until(
        nats_server, {RESULT_RECORDED: events_pb2.ResultRecorded,
                      RESULT_INVALIDATED: events_pb2.ResultInvalidated,
                      RESULT_CONFIRMED: events_pb2.ResultConfirmed},
        lambda e: e.result.lot_id == lot_id,
        lambda e: e.result.state == pb.RESULT_STATE_CONFIRMED)

    assert [(subject, e.result) for subject, e in seen] == [
        (RESULT_RECORDED, failing), (RESULT_INVALIDATED, invalidated),
        (RESULT_RECORDED, retest), (RESULT_CONFIRMED, confirmed)]
    assert seen[1][1].occurred_at == invalidated.state_changed_at
