"""Group commit (shared.group_commit): who waits, who goes together, and that every caller
gets exactly its own answer or error, also when a shared transaction fails."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from shared.group_commit import GroupCommit, Grouped

caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="nobody")


class Writes:
    """Stands in for the database: records what ran together and what ran alone."""

    def __init__(self, *, refuse: frozenset[int] = frozenset(),
                 fail_groups: bool = False) -> None:
        self.refuse = refuse
        self.fail_groups = fail_groups
        self.together_calls: list[list[int]] = []
        self.alone_calls: list[int] = []
        self.together_ran_as: list[str] = []
        self.callers_seen: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def together(self, group: Sequence[Grouped[int]]) -> list[str]:
        self.together_calls.append([g.item for g in group])
        self.together_ran_as.append(caller.get())
        await self.release.wait()
        self.callers_seen += [g.context.run(caller.get) for g in group]
        if self.fail_groups or any(g.item in self.refuse for g in group):
            raise ValueError("the group's transaction failed")
        return [f"stored {g.item}" for g in group]

    async def alone(self, item: int) -> str:
        self.alone_calls.append(item)
        await self.release.wait()
        self.callers_seen.append(caller.get())
        if item in self.refuse:
            raise ValueError(f"item {item} refused")
        return f"stored {item}"


async def _call(group: GroupCommit[int, str], item: int) -> str:
    caller.set(f"caller {item}")
    return await group(item)


def test_a_lone_call_runs_at_once_and_alone() -> None:
    async def scenario() -> None:
        writes = Writes()
        group = GroupCommit(writes.together, writes.alone)
        assert await _call(group, 1) == "stored 1"
        assert writes.alone_calls == [1]
        assert writes.together_calls == []
        assert writes.callers_seen == ["caller 1"]

    asyncio.run(scenario())


def test_calls_arriving_during_a_write_go_together_in_the_next() -> None:
    async def scenario() -> None:
        writes = Writes()
        writes.release.clear()
        group = GroupCommit(writes.together, writes.alone)
        first = asyncio.create_task(_call(group, 1))
        await asyncio.sleep(0.01)  # 1 is being written alone; the rest queue behind it
        rest = [asyncio.create_task(_call(group, i)) for i in range(2, 6)]
        await asyncio.sleep(0.01)
        writes.release.set()
        assert await first == "stored 1"
        assert await asyncio.gather(*rest) == [f"stored {i}" for i in range(2, 6)]
        assert writes.alone_calls == [1]
        assert writes.together_calls == [[2, 3, 4, 5]]
        # Each call's own context reached what was recorded for it.
        assert writes.callers_seen == [f"caller {i}" for i in range(1, 6)]

    asyncio.run(scenario())


def test_a_failed_group_runs_each_call_alone_with_its_own_answer() -> None:
    async def scenario() -> None:
        writes = Writes(refuse=frozenset({3}))
        writes.release.clear()
        group = GroupCommit(writes.together, writes.alone)
        first = asyncio.create_task(_call(group, 1))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(_call(group, i)) for i in range(2, 5)]
        await asyncio.sleep(0.01)
        writes.release.set()
        answers = await asyncio.gather(first, *rest, return_exceptions=True)
        assert answers[:2] == ["stored 1", "stored 2"]
        assert isinstance(answers[2], ValueError) and str(answers[2]) == "item 3 refused"
        assert answers[3] == "stored 4"
        assert writes.together_calls == [[2, 3, 4]]
        assert sorted(writes.alone_calls) == [1, 2, 3, 4]
        assert group.failed_groups == 1

    asyncio.run(scenario())


def test_groups_hold_at_most_max_items() -> None:
    async def scenario() -> None:
        writes = Writes()
        writes.release.clear()
        group = GroupCommit(writes.together, writes.alone, max_items=3)
        tasks = [asyncio.create_task(_call(group, i)) for i in range(1, 9)]
        await asyncio.sleep(0.01)
        writes.release.set()
        assert await asyncio.gather(*tasks) == [f"stored {i}" for i in range(1, 9)]
        # All eight were waiting when the first group was taken.
        assert writes.together_calls == [[1, 2, 3], [4, 5, 6], [7, 8]]
        assert writes.alone_calls == []

    asyncio.run(scenario())


def test_a_call_larger_than_a_group_goes_alone() -> None:
    async def scenario() -> None:
        writes = Writes()
        writes.release.clear()
        group = GroupCommit(writes.together, writes.alone, max_items=10,
                            size=lambda item: item)
        tasks = [asyncio.create_task(_call(group, i)) for i in (1, 20, 2, 3)]
        await asyncio.sleep(0.01)
        writes.release.set()
        assert await asyncio.gather(*tasks) == ["stored 1", "stored 20", "stored 2",
                                                "stored 3"]
        assert writes.alone_calls == [1, 20]
        assert writes.together_calls == [[2, 3]]

    asyncio.run(scenario())


def test_a_caller_cancelled_while_waiting_is_left_out() -> None:
    async def scenario() -> None:
        writes = Writes()
        writes.release.clear()
        group = GroupCommit(writes.together, writes.alone)
        first = asyncio.create_task(_call(group, 1))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(_call(group, 2))
        kept = [asyncio.create_task(_call(group, i)) for i in (3, 4)]
        await asyncio.sleep(0.01)
        gone.cancel()
        writes.release.set()
        assert await first == "stored 1"
        assert await asyncio.gather(*kept) == ["stored 3", "stored 4"]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert writes.together_calls == [[3, 4]]

    asyncio.run(scenario())


def test_the_error_of_a_lone_call_reaches_only_its_caller() -> None:
    async def scenario() -> None:
        writes = Writes(refuse=frozenset({1}))
        group = GroupCommit(writes.together, writes.alone)
        with pytest.raises(ValueError, match="item 1 refused"):
            await _call(group, 1)
        assert await _call(group, 2) == "stored 2"

    asyncio.run(scenario())


def test_a_groups_shared_work_runs_as_its_first_call_not_as_the_one_that_started_the_queue(
        ) -> None:
    async def scenario() -> None:
        writes = Writes()
        writes.release.clear()
        group = GroupCommit(writes.together, writes.alone)
        first = asyncio.create_task(_call(group, 1))  # starts the queue's drain
        await asyncio.sleep(0.01)
        second = [asyncio.create_task(_call(group, i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        writes.release.set()
        await asyncio.gather(first, *second)
        third = [asyncio.create_task(_call(group, i)) for i in (4, 5)]
        await asyncio.gather(*third)
        assert writes.together_calls == [[2, 3], [4, 5]]
        assert writes.together_ran_as == ["caller 2", "caller 4"]

    asyncio.run(scenario())
