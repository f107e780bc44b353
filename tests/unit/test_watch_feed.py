"""The change feed's cache coherence and a watcher's bounded queue, without servers."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest

from lotgate.lots.v1 import events_pb2
from lotgate.lots.v1 import lots_pb2 as pb
from services.lots import watch as watch_module
from services.lots.api import validate_watch
from services.lots.convert import release_status_of
from services.lots.domain import LotStatus
from services.lots.feed import ChangeFeed, Watcher
from services.lots.read_model import StatusCache, StatusEntry
from services.lots.watch import watch
from shared.errors import Aborted, Unavailable

NOW = datetime(2026, 5, 1, tzinfo=UTC)
LOT = SimpleNamespace(lot_id="LOT-1", supplier_id="SUP-1", supplier_site_id="MAIN",
                      material_code="MAT-1", expiry_date=date(2030, 1, 31), retest_date=None)


def entry(version: int, status: LotStatus = LotStatus.QUARANTINE, lot=LOT) -> StatusEntry:
    return StatusEntry.make(lot, status, version, (), NOW)


@pytest.mark.req("WAT-001", "WAT-004")
def test_the_cache_takes_only_newer_versions_and_tells_its_subscribers() -> None:
    cache = StatusCache()
    heard: list[int] = []
    cache.subscribe(lambda e: heard.append(e.version))
    assert cache.put(entry(2))
    assert not cache.put(entry(1))
    assert not cache.put(entry(2))
    assert cache.put(entry(3))
    assert heard == [2, 3]


@pytest.mark.req("WAT-004")
def test_a_floor_refuses_a_stale_fill_of_a_lot_not_held() -> None:
    cache = StatusCache()
    cache.raise_floor("LOT-1", 3)
    assert not cache.put(entry(2))  # read before version 3 committed
    assert cache.get("LOT-1") is None
    assert cache.put(entry(3))
    assert cache.put(entry(4))


@pytest.mark.req("WAT-001")
async def test_the_feed_hands_each_version_once_to_the_watchers_that_want_it() -> None:
    cache = StatusCache()
    feed = ChangeFeed(engine=None, cache=cache)  # type: ignore[arg-type]
    other = SimpleNamespace(**{**vars(LOT), "lot_id": "LOT-2", "material_code": "MAT-2"})
    with feed.watching(["LOT-1"], "") as by_lot, feed.watching([], "MAT-2") as by_material:
        cache.put(entry(1))
        cache.put(entry(1))  # a second copy (the broker's, after the local commit)
        cache.put(entry(1, lot=other))
        assert [e.version for e in await by_lot.next_batch()] == [1]
        assert [e.lot_id for e in await by_material.next_batch()] == ["LOT-2"]
        # A replica's announcement for a held lot replaces the entry with its version.
        await feed.apply([_announced(entry(2, LotStatus.RELEASED))])
        got = await by_lot.next_batch()
        assert [(e.version, e.status) for e in got] == [(2, LotStatus.RELEASED)]
        assert cache.get("LOT-1") == entry(2, LotStatus.RELEASED)
    assert not feed._by_lot and not feed._by_material


class _Rows(list):
    """A result as the read iterates it, or takes `all()` of it."""

    def all(self) -> list:
        return list(self)


class _DatabaseAwayOnce:
    """An engine whose first connection fails (an outage), then reads `rows`."""

    def __init__(self, rows: list[SimpleNamespace]) -> None:
        self.rows = rows
        self.connects = 0

    @contextlib.asynccontextmanager
    async def _conn(self):
        yield SimpleNamespace(execute=self._execute, dialect=SimpleNamespace(name="sqlite"))

    async def _execute(self, _query, _parameters=None):
        return _Rows(self.rows)

    def connect(self):
        self.connects += 1
        if self.connects == 1:
            raise OSError("the database cannot be reached")
        return self._conn()


@pytest.mark.req("WAT-001")
async def test_a_change_whose_read_fails_is_applied_again_before_any_later_one() -> None:
    row = SimpleNamespace(**vars(LOT), status="RELEASED", status_version=2, unmet="[]",
                          decided_at=NOW)
    engine = _DatabaseAwayOnce([row])
    feed = ChangeFeed(engine=engine, cache=StatusCache())  # type: ignore[arg-type]
    with feed.watching(["LOT-1"], "") as watcher:
        # Another replica's change of a lot this process does not hold: it must be read.
        # Bounded, so that a change never applied fails the test instead of hanging it.
        await asyncio.wait_for(feed._apply_until_done(
            [_announced(entry(2, LotStatus.RELEASED))], asyncio.Event()), 10)
        got = await asyncio.wait_for(watcher.next_batch(), 10)

    assert engine.connects == 2
    assert [(e.version, e.status) for e in got] == [(2, LotStatus.RELEASED)]


def _announced(e: StatusEntry) -> bytes:
    return events_pb2.LotStatusChanged(event_id="E-1", release_status=release_status_of(e)
                                     ).SerializeToString()


@pytest.mark.req("WAT-003")
async def test_a_watcher_that_falls_behind_overflows_instead_of_dropping() -> None:
    watcher = Watcher(frozenset({"LOT-1"}), "", size=3)
    for version in range(1, 5):
        watcher.offer(entry(version))
    assert watcher.overflowed
    assert await watcher.next_batch() == []


@pytest.mark.req("WAT-003")
async def test_closing_the_feed_ends_its_watchers() -> None:
    feed = ChangeFeed(engine=None, cache=StatusCache())  # type: ignore[arg-type]
    with feed.watching(["LOT-1"], "") as watcher:
        feed.close()
        assert await watcher.next_batch() == []
        assert watcher.closed


class _Engine:
    """Stands in for the database: the queries are replaced below."""

    @contextlib.asynccontextmanager
    async def connect(self):
        yield None


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> dict[int, StatusEntry]:
    """Decisions of LOT-1 by version; the current status is the highest."""
    decided = {1: entry(1)}

    async def initial(conn, wanted):
        return [(decided[max(decided)], True)]

    async def between(conn, lot, after, before):
        return [decided[v] for v in sorted(decided) if after < v < before]

    monkeypatch.setattr(watch_module, "_initial", initial)
    monkeypatch.setattr(watch_module, "versions_between", between)
    return decided


async def _started(feed: ChangeFeed):
    feed.ready.set()
    stream = watch(feed, _Engine(),  # type: ignore[arg-type]
                   validate_watch(pb.WatchReleaseStatusRequest(lot_ids=["LOT-1"])))
    first, snapshot = await stream.__anext__()
    assert (first.version, snapshot) == (1, True)
    return stream


@pytest.mark.req("WAT-002")
async def test_a_watch_fills_versions_it_has_not_heard_of_from_the_decisions(
        database: dict[int, StatusEntry]) -> None:
    cache = StatusCache()
    feed = ChangeFeed(engine=None, cache=cache)  # type: ignore[arg-type]
    stream = await _started(feed)
    database.update({2: entry(2), 3: entry(3), 4: entry(4, LotStatus.RELEASED)})
    cache.put(entry(4, LotStatus.RELEASED))  # 2 and 3 were decided by another replica
    got = [await stream.__anext__() for _ in range(3)]
    assert [(e.version, snapshot) for e, snapshot in got] == [
        (2, False), (3, False), (4, False)]
    cache.put(entry(3))  # their late announcement changes nothing
    cache.put(entry(5))
    assert (await stream.__anext__())[0].version == 5
    await stream.aclose()
    assert not feed._by_lot


@pytest.mark.req("WAT-003")
async def test_a_watch_that_falls_behind_ends_with_aborted(
        database: dict[int, StatusEntry]) -> None:
    cache = StatusCache()
    feed = ChangeFeed(engine=None, cache=cache, queue_size=2)  # type: ignore[arg-type]
    stream = await _started(feed)
    for version in (2, 3, 4):
        cache.put(entry(version))
    with pytest.raises(Aborted, match="resume_from"):
        await stream.__anext__()


@pytest.mark.req("WAT-003")
async def test_a_watch_ends_with_unavailable_when_the_service_stops(
        database: dict[int, StatusEntry]) -> None:
    feed = ChangeFeed(engine=None, cache=StatusCache())  # type: ignore[arg-type]
    stream = await _started(feed)
    feed.close()
    with pytest.raises(Unavailable):
        await stream.__anext__()
