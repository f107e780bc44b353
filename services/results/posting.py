"""Writes of posted results (RecordResult, RecordResults): one post alone, or several
posts (from any instruments, for any lots) in one unit of work, by the same steps.

A post is the commands of one call. Alone (`record_results`) it is answered as it always
was: its results, or the precise error of what is wrong. Together (`record_posts`, for
shared.group_commit) the posts share each read and write: one take of their lots'
numbers (in lot order), their instruments and specifications (from memory while the
reference data is unchanged: services/results/reference.py), the lots' earlier results,
one insert; each post is judged in group order, seeing the posts before it as a batch's
entry sees the entries before it. Each post's audit entries and events are noted in its
caller's own context (who, request id, trace). When anything of the group is wrong, the
group raises and each post runs again alone.

Posts are first taken for new results, as nearly all are: their keys are not looked up
before the lots are locked (a round trip less). A key stored already shows among the
locked lots' results, or at the insert; then, and on any refusal, the post runs again
alone the way it always did, keys looked up first, so that a retry is answered from its
original whatever else has changed since (an instrument out of calibration, a result
under investigation).
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.results import repository
from services.results.commands import RecordResult
from services.results.convert import result_recorded
from services.results.domain.posting import (
    Judging,
    check_instrument,
    check_original,
    entry_field,
    entry_said,
)
from services.results.domain.results import Result
from services.results.reference import ReferenceData
from shared import audit, messaging
from shared.errors import Aborted, NotFound
from shared.group_commit import GroupCommit, Grouped
from shared.metrics import group_committed
from shared.uow import UnitOfWork, UnitOfWorkFactory, new_event_id


@dataclass(frozen=True)
class Post:
    """The results of one call: one instrument's, in the order posted; a `batch` names
    its entries as results[i]."""

    commands: Sequence[RecordResult]
    batch: bool = False


# The group-commit metric's label for posts.
GROUP = "results.post"
# A post of this many results or more (a plate) is written alone at once: it shares its
# reads and writes among its own results already, and waiting for a group would only
# queue it behind the posts being written (measured with plates of 96 at four calls in
# flight: 1,639 results/s grouped, 2,123 each alone).
ALONE_FROM = 32


class Posting:
    """Where the API sends posts: with group commit, a post arriving while others are
    written waits and goes with the posts beside it in the next unit of work; without,
    when its group fails, or when it is a plate (ALONE_FROM results or more), it is
    written alone."""

    def __init__(self, uow: UnitOfWorkFactory, *, group_commit: bool = True,
                 max_items: int = 500) -> None:
        self._uow = uow
        self.reference = ReferenceData()
        self.group: GroupCommit[Post, list[Result]] | None = GroupCommit(
            self._together, self._alone, max_items=max_items,
            size=lambda post: len(post.commands), name=GROUP) if group_commit else None

    async def post(self, post: Post) -> list[Result]:
        """The post's results, in the order of its commands."""
        if self.group is None or len(post.commands) >= ALONE_FROM:
            return await self._alone(post)
        return await self.group(post)

    async def _alone(self, post: Post) -> list[Result]:
        return await record_results(self._uow(), post.commands, batch=post.batch,
                                    reference=self.reference)

    async def _together(self, group: Sequence[Grouped[Post]]) -> list[list[Result]]:
        try:
            answers = await record_posts(self._uow(), group, reference=self.reference)
        except Exception:
            group_committed(GROUP, len(group), committed=False)
            raise
        group_committed(GROUP, len(group), committed=True)
        return answers


class _KeyTaken(Exception):
    """A concurrent call stored a result under one of the posts' instrument_result_ids."""


async def record_results(uow: UnitOfWork, commands: Sequence[RecordResult], *,
                         batch: bool = False, reference: ReferenceData | None = None
                         ) -> list[Result]:
    """Judge results of one instrument against the specification version in force when
    each was measured, store them and announce each one; all or, when any is refused,
    none. The answers are in the order of `commands`.

    Idempotent on (instrument_id, instrument_result_id): a retry with the same content
    gets the stored original (and no new event); other content is ALREADY_EXISTS. This
    holds also for a retry that overlaps its original: it starts again once the original
    is stored, and is answered from it. With `batch`, what is wrong with an entry names
    it as results[i].
    """
    with contextlib.suppress(Exception):
        # The common case, a post of new results, without first looking up its keys;
        # anything else (a retry, a refusal, a conflict) is answered as below.
        (answer,) = await _record_posts(uow, [Post(commands, batch)], [None],
                                        reference or ReferenceData(), fresh=True)
        return answer
    for _ in range(2):
        try:
            (answer,) = await _record_posts(uow, [Post(commands, batch)], [None],
                                            reference or ReferenceData())
            return answer
        except _KeyTaken as taken:
            conflict = taken  # a concurrent request with the same id won: answer as a retry
    raise Aborted("the results could not be stored because of concurrent posts with the same "
                  "instrument_result_id; retry") from conflict


async def record_posts(uow: UnitOfWork, group: Sequence[Grouped[Post]], *,
                       reference: ReferenceData | None = None) -> list[list[Result]]:
    """The answers of several posts written in one unit of work, in group order; raises
    when any post is refused or conflicts (nothing is then written: run each alone)."""
    keys = [(c.instrument_id, c.instrument_result_id) for g in group for c in g.item.commands]
    if len(set(keys)) < len(keys):
        # Copies of one post (an overlapping retry): alone, the second is answered from
        # the first once it is stored.
        raise _KeyTaken("two posts of the group share an instrument_result_id")
    return await _record_posts(uow, [g.item for g in group], [g.context for g in group],
                               reference or ReferenceData(), fresh=True)


def _in(context: contextvars.Context | None, note: Callable[..., Any], *args: Any,
        **kwargs: Any) -> None:
    """`note` run in the post's caller's context (None: the current one)."""
    if context is None:
        note(*args, **kwargs)
    else:
        context.run(note, *args, **kwargs)


async def _record_posts(uow: UnitOfWork, posts: Sequence[Post],
                        contexts: Sequence[contextvars.Context | None],
                        reference: ReferenceData, *, fresh: bool = False
                        ) -> list[list[Result]]:
    """`fresh`: take every result for new, without looking its key up first (one round
    trip less); a key stored already is then found among the lots' results once they are
    locked, or by the insert, and raises _KeyTaken, as does a key of another lot."""
    async with uow:
        previous = {} if fresh else await repository.results_by_keys(uow.conn, keys=[
            (c.instrument_id, c.instrument_result_id) for p in posts for c in p.commands])
        answers: list[list[Result | None]] = []
        for p in posts:
            answers.append([])
            for i, c in enumerate(p.commands):
                stored = previous.get((c.instrument_id, c.instrument_result_id))
                answers[-1].append(check_original(stored.result, stored.fingerprint, c,
                                                  entry_said(i, p.batch, ""))
                                   if stored else None)
        todo = [[i for i, answer in enumerate(post) if answer is None] for post in answers]
        if any(todo):
            await _store(uow, posts, contexts, todo, answers, reference)
            await uow.commit()
    return [[a for a in post if a is not None] for post in answers]


async def _store(uow: UnitOfWork, posts: Sequence[Post],
                 contexts: Sequence[contextvars.Context | None], todo: Sequence[list[int]],
                 answers: list[list[Result | None]], reference: ReferenceData) -> None:
    """Judge and insert entries `todo` of each post (the ones not stored yet), noting
    their audit entries and events; their answers go into `answers`. The lots' numbers
    are taken first: that statement also tells whether the instruments and specifications
    held in memory (`reference`) are current."""
    counts = Counter(p.commands[i].lot_id for p, t in zip(posts, todo, strict=True)
                     for i in t)
    numbers, version = await repository.take_result_numbers(uow.conn, counts=dict(counts))
    standing = await reference.standing(uow.conn, version, sorted(
        {p.commands[0].instrument_id for p, t in zip(posts, todo, strict=True) if t}))
    for p, t in zip(posts, todo, strict=True):
        if t:
            instrument_id = p.commands[0].instrument_id
            status, intervals = standing.get(instrument_id, (None, []))
            check_instrument(status, intervals, instrument_id=instrument_id, batch=p.batch,
                             measured=[(i, p.commands[i].measured_at) for i in t])
    for p, t in zip(posts, todo, strict=True):
        for i in t:
            if p.commands[i].lot_id not in numbers:
                raise NotFound(
                    entry_said(i, p.batch, f"lot {p.commands[i].lot_id} is not known to the "
                                           "results service yet; if it was just received, "
                                           "retry shortly"),
                    field=f"{entry_field(i, p.batch)}lot_id")
    materials = {lot: material for lot, (material, _) in numbers.items()}
    specs = await reference.specifications(uow.conn, version, materials.values())
    # Read only now that the lots are locked: a copy of this very call that was stored
    # while this one waited is among them, and is answered as the original before any
    # rule could take it for an earlier result (an out-of-specification one would refuse
    # its own retry as "under investigation").
    priors, stored_keys = await repository.prior_results(uow.conn, lot_ids=sorted(counts))
    if any((c.instrument_id, c.instrument_result_id) in stored_keys
           for p, t in zip(posts, todo, strict=True) for c in (p.commands[i] for i in t)):
        raise _KeyTaken()

    now = uow.clock.now()
    judging = Judging(materials=materials,
                      first_numbers={lot: first for lot, (_, first) in numbers.items()},
                      specs=specs, priors=priors, now=now, new_id=lambda: str(uuid.uuid4()))
    new = [judging.judge(p.commands, t, batch=p.batch) for p, t in zip(posts, todo,
                                                                          strict=True)]
    try:
        rows = iter(await repository.add_results(uow.conn, new=[
            (result, p.commands[i].fingerprint)
            for p, judged in zip(posts, new, strict=True) for i, result in judged]))
    except IntegrityError as exc:  # answered as a retry, not as the interceptor would
        raise _KeyTaken() from exc
    for k, judged in enumerate(new):
        for i, result in judged:
            row = next(rows)
            result = replace(result, sequence=row.sequence)
            answers[k][i] = result
            # Nothing in this unit of work changes a result it inserted: its entry keeps
            # the row as the insert returned it, not read again at commit.
            _in(contexts[k], audit.record_row, uow, "result", row, action="record",
                created=True)
            _in(contexts[k], uow.emit, messaging.RESULT_RECORDED, result.lot_id,
                result_recorded(result, event_id=new_event_id(), now=now))
