"""The lots status cache is bounded by its memory budget (LOTGATE_STATUS_CACHE_MB), not
by how many lots are read; eviction keeps the most recently used."""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest

from services.lots.domain import LotStatus
from services.lots.read_model import ENTRY_BYTES, FLOOR_BYTES, StatusCache, StatusEntry
from shared.config import DEFAULT_STATUS_CACHE_MB, settings_for

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def entry(n: int, version: int = 1) -> StatusEntry:
    lot = SimpleNamespace(lot_id=f"LOT-{n}", supplier_id="SUP-1", supplier_site_id="MAIN",
                          material_code="MAT-1", expiry_date=date(2030, 1, 31),
                          retest_date=None)
    return StatusEntry.make(lot, LotStatus.RELEASED, version, (), NOW)


def test_a_budget_gives_as_many_entries_and_floors_as_it_holds() -> None:
    cache = StatusCache.for_budget(2)
    assert cache.max_entries == cache.max_floors == 2 * 1024 * 1024 // (
        ENTRY_BYTES + FLOOR_BYTES) == 744
    assert StatusCache.for_budget(0.0001).max_entries == 1
    # The default keeps the lots process under 200 MB (see shared.config).
    default = StatusCache.for_budget(DEFAULT_STATUS_CACHE_MB)
    assert default.max_entries * (ENTRY_BYTES + FLOOR_BYTES) <= 40 * 1024 * 1024
    assert settings_for("lots").status_cache_mb == DEFAULT_STATUS_CACHE_MB


def test_the_budget_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOTGATE_STATUS_CACHE_MB", "8")
    assert settings_for("lots").status_cache_mb == 8
    monkeypatch.setenv("LOTGATE_STATUS_CACHE_MB", "0")
    with pytest.raises(ValueError, match="status_cache_mb"):
        settings_for("lots")


def test_the_cache_never_holds_more_than_its_bound_and_keeps_the_recently_used() -> None:
    cache = StatusCache.for_budget(1)
    bound = cache.max_entries
    heard: list[str] = []
    cache.subscribe(lambda e: heard.append(e.lot_id))
    for n in range(bound):
        assert cache.put(entry(n))
    assert cache.get("LOT-0") is not None  # used: the newest now
    assert cache.put(entry(bound))
    # The least recently used went, not the oldest put.
    assert cache.peek("LOT-0") is not None
    assert cache.peek("LOT-1") is None
    for n in range(bound + 1, 10 * bound):
        assert cache.put(entry(n))
        assert len(cache) <= bound
    assert len(cache) == bound
    assert cache.peek(f"LOT-{10 * bound - 1}") is not None
    # Every entry taken was announced, evicted ones too.
    assert len(heard) == 10 * bound


def test_floors_never_outnumber_their_bound() -> None:
    cache = StatusCache(max_entries=10, max_floors=100)
    for n in range(1000):
        cache.raise_floor(f"LOT-{n}", 2)
        assert cache.floors <= 100
    assert cache.floors == 100
    # The newest floors are kept: a stale fill of a recent lot is still refused.
    assert not cache.put(entry(999, version=1))
    assert cache.put(entry(0, version=1))  # its floor was dropped long ago


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError):
        StatusCache(max_entries=0)
