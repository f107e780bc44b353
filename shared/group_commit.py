"""Group commit: concurrent writes of one kind share one transaction.

A busy service commits one transaction per call: every call pays its own BEGIN, its own
reads of what it checks, its own audit-trail append (serialised per service) and its
own COMMIT (a WAL flush). `GroupCommit` lets calls that arrive while a transaction of
their kind is running wait for it, then go together in the next one:

- a call that finds nothing running is run at once, alone: an idle service adds no wait;
- calls that arrived meanwhile (up to `max_items`) are handed together to `together`,
  which writes them in one transaction and returns one answer per call, in order;
- each caller is answered only once that transaction has committed;
- when the shared transaction fails (one call refused, a conflict, the database away),
  nothing of it was committed, and each of its calls runs again alone (`alone`, in the
  caller's own task): every caller gets exactly the answer, or the error, it would have
  had without grouping.

Each call keeps its own context (contextvars: the caller, the request id, the trace),
which `together` uses for what it records per call (`Grouped.context.run`). A lone call
runs in its own context; a group's shared work (its statements, spans and log lines) in
a copy of its first call's, and no group inherits the context of whichever call happened
to start the queue's drain.

A caller cancelled while its call is in a running group (a client's deadline) does not
stop the group: its write may still commit, as a write whose answer was lost does, and
a retry of it is answered from it (writes that are grouped must be idempotent).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared.logs import get_logger

log = get_logger(__name__)

I = TypeVar("I")  # noqa: E741 (the item)
R = TypeVar("R")


@dataclass(frozen=True)
class Grouped(Generic[I]):
    """One call in a group: what it asked, and its caller's context."""

    item: I
    context: contextvars.Context


class _Alone:
    """The answer that sends a caller to run its call alone (its group failed)."""


_ALONE = _Alone()


class GroupCommit(Generic[I, R]):
    """`await group(item)`: `item` written alone or with the calls waiting beside it."""

    def __init__(self, together: Callable[[Sequence[Grouped[I]]], Awaitable[Sequence[R]]],
                 alone: Callable[[I], Awaitable[R]], *, max_items: int = 256,
                 size: Callable[[I], int] = lambda item: 1, name: str = "") -> None:
        self._together = together
        self._alone = alone
        self._max_items = max_items
        self._size = size
        self._name = name
        self._pending: list[tuple[Grouped[I], asyncio.Future[R | _Alone]]] = []
        self._running: asyncio.Task[None] | None = None
        # What happened, for tests and logs: groups run, calls in them, groups that failed.
        self.groups = 0
        self.grouped = 0
        self.failed_groups = 0

    async def __call__(self, item: I) -> R:
        future: asyncio.Future[R | _Alone] = asyncio.get_running_loop().create_future()
        self._pending.append((Grouped(item, contextvars.copy_context()), future))
        if self._running is None:
            self._running = _detached(self._drain())
        answer = await future
        if isinstance(answer, _Alone):
            return await self._alone(item)
        return answer

    def _take(self) -> list[tuple[Grouped[I], asyncio.Future[R | _Alone]]]:
        """The next group: the oldest calls still waited for, up to `max_items` in size
        (one call larger than that goes alone)."""
        taken: list[tuple[Grouped[I], asyncio.Future[R | _Alone]]] = []
        total = 0
        while self._pending:
            grouped, future = self._pending[0]
            if future.cancelled():
                self._pending.pop(0)
                continue
            size = self._size(grouped.item)
            if taken and total + size > self._max_items:
                break
            taken.append(self._pending.pop(0))
            total += size
        return taken

    async def _drain(self) -> None:
        try:
            while self._pending:
                taken = self._take()
                if len(taken) == 1:
                    await self._run_alone(*taken[0])
                elif taken:
                    await self._run_together(taken)
        finally:
            self._running = None
            if self._pending:  # a call arrived while the last one was being answered
                self._running = _detached(self._drain())

    async def _run_alone(self, grouped: Grouped[I],
                         future: asyncio.Future[R | _Alone]) -> None:
        task = asyncio.create_task(self._alone(grouped.item), context=grouped.context)
        try:
            answer = await task
        except asyncio.CancelledError:  # the service is stopping
            future.cancel()
            raise
        except Exception as exc:  # the caller's own answer: raised in its task
            _settle_error(future, exc)
        else:
            _settle(future, answer)

    async def _run_together(self, taken: list[tuple[Grouped[I],
                                                    asyncio.Future[R | _Alone]]]) -> None:
        self.groups += 1
        self.grouped += len(taken)
        try:
            answers = await asyncio.create_task(
                self._together([grouped for grouped, _ in taken]),
                context=taken[0][0].context.copy())
            if len(answers) != len(taken):
                raise RuntimeError(f"{len(answers)} answers for {len(taken)} calls")
        except asyncio.CancelledError:  # the service is stopping
            for _, future in taken:
                future.cancel()
            raise
        except Exception as exc:
            self.failed_groups += 1
            log.info("group_commit_fell_back", group=self._name, calls=len(taken),
                     error=repr(exc)[:300])
            for _, future in taken:
                _settle(future, _ALONE)
            return
        for (_, future), answer in zip(taken, answers, strict=True):
            _settle(future, answer)


def _detached(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task in a context of its own, not of the call that happened to start it."""
    return asyncio.create_task(work, context=contextvars.Context())


def _settle(future: asyncio.Future[R | _Alone], answer: R | _Alone) -> None:
    if not future.done():
        future.set_result(answer)


def _settle_error(future: asyncio.Future[R | _Alone], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
