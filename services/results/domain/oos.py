"""QA's handling of results, and the investigation of an out-of-specification (OOS)
result: while one is under investigation no other result of that test is taken (no
testing into compliance); QA invalidates it (a laboratory error, to be retested) or
confirms it (FDA guidance on investigating OOS results, 2006; 21 CFR 211.192).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.contract import ResultState, TestKind, Verdict
from shared.errors import FailedPrecondition

# The only state QA's handling moves a result from (the repository's guard against a
# concurrent decision filters on it too).
HANDLED_FROM = ResultState.VALID


def check_invalidation(state: ResultState, *, result_id: str) -> None:
    """A VALID result may be invalidated (a laboratory error); nothing else."""
    if state is not HANDLED_FROM:
        raise FailedPrecondition(
            f"result {result_id} is {state.value}; only a VALID result can be invalidated",
            subject=f"results/{result_id}")


def check_confirmation(state: ResultState, verdict: Verdict, *, result_id: str) -> None:
    """Only a VALID out-of-specification result may be confirmed."""
    if state is not HANDLED_FROM:
        raise FailedPrecondition(
            f"result {result_id} is {state.value}; only a VALID result can be confirmed",
            subject=f"results/{result_id}")
    if verdict is not Verdict.FAIL:
        raise FailedPrecondition(
            f"result {result_id} passes its specification; only an out-of-specification "
            "result is confirmed", subject=f"results/{result_id}")


@dataclass(frozen=True)
class PriorResult:
    """What posting a new result needs to know of a result of the same lot and test."""

    result_id: str
    verdict: Verdict
    state: ResultState
    retested: bool  # a later result names it in retest_of


def check_posting(prior: Sequence[PriorResult], *, test: TestKind, retest_of: str) -> None:
    """Whether a new result of `test` may be posted, given the lot's earlier ones.

    No testing into compliance: while an out-of-specification result is under
    investigation, no other result of that test is taken. After an invalidation, the
    retest must name the invalidated result.
    """
    for r in prior:
        if r.state is ResultState.VALID and r.verdict is Verdict.FAIL:
            raise FailedPrecondition(
                f"{test} result {r.result_id} of this lot is out of specification and under "
                "investigation: QA must invalidate or confirm it before another result is "
                "taken", type_="INVESTIGATION", subject=f"results/{r.result_id}")
    awaiting = [r for r in prior if r.state is ResultState.INVALIDATED and not r.retested]
    if retest_of:
        target = next((r for r in prior if r.result_id == retest_of), None)
        if target is None:
            raise FailedPrecondition(
                f"retest_of {retest_of} is not a {test} result of this lot",
                type_="RETEST", subject=f"results/{retest_of}")
        if target.state is not ResultState.INVALIDATED:
            raise FailedPrecondition(
                f"result {retest_of} is {target.state.value}; only an invalidated result is "
                "retested", type_="RETEST", subject=f"results/{retest_of}")
        if target.retested:
            raise FailedPrecondition(f"result {retest_of} has been retested already",
                                     type_="RETEST", subject=f"results/{retest_of}")
    elif awaiting:
        raise FailedPrecondition(
            f"{test} result {awaiting[0].result_id} of this lot was invalidated: its retest "
            "must name it in retest_of", type_="RETEST",
            subject=f"results/{awaiting[0].result_id}")


def check_handling(state: ResultState, verdict: Verdict, target: ResultState, *,
                   result_id: str) -> None:
    """Whether QA may move a result in `state` to `target` (INVALIDATED or CONFIRMED)."""
    if target is ResultState.INVALIDATED:
        check_invalidation(state, result_id=result_id)
    else:
        check_confirmation(state, verdict, result_id=result_id)


def is_repeated_handling(state: ResultState, reason: str, changed_by: str, *,
                         target: ResultState, asked_reason: str, asked_by: str) -> bool:
    """Whether QA's decision is the one already recorded on the result (a retry)."""
    return state is target and reason == asked_reason and changed_by == asked_by
