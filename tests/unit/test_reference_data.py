"""Posting's copy of the reference data (services/results/reference.py): what is read
under one reference version is never served under another, also when posts of two
versions read at the same time."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import pytest

from services.results import reference
from services.results.domain.instruments import InstrumentStatus
from services.results.reference import ReferenceData

ACTIVE = (InstrumentStatus.ACTIVE, [(date(2026, 1, 1), date(2027, 1, 1))])
OUT = (InstrumentStatus.OUT_OF_SERVICE, [(date(2026, 1, 1), date(2027, 1, 1))])


class Tables:
    """Stands in for the instruments table: what a read returns, and reads held back."""

    def __init__(self, standing: Any) -> None:
        self.standing = standing
        self.reads = 0
        self.hold: asyncio.Event | None = None

    async def instrument_standing(self, conn: Any, *, instrument_ids: Any) -> dict[str, Any]:
        self.reads += 1
        answer = {i: self.standing for i in instrument_ids}  # as the table was when read
        if self.hold is not None:
            await self.hold.wait()
        return answer


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> Tables:
    stand_in = Tables(ACTIVE)
    monkeypatch.setattr(reference.repository, "instrument_standing",
                        stand_in.instrument_standing)
    return stand_in


async def test_the_same_version_is_served_from_memory_and_another_is_read(tables) -> None:
    data = ReferenceData()
    first = await data.standing(None, 1, ["HPLC-1"])
    again = await data.standing(None, 1, ["HPLC-1"])
    tables.standing = OUT
    changed = await data.standing(None, 2, ["HPLC-1"])

    assert first == again == {"HPLC-1": ACTIVE}
    assert changed == {"HPLC-1": OUT}
    assert tables.reads == 2


async def test_a_read_under_an_older_version_is_not_kept_for_a_newer_one(tables) -> None:
    """A post of version 1 reads while the instrument is ACTIVE and gets its answer late;
    meanwhile the instrument is taken out of service (version 2) and a post of version 2
    reads it. The older read, arriving last, answers its own post and is not what version
    2 then serves."""
    data = ReferenceData()
    slow = tables.hold = asyncio.Event()
    old = asyncio.create_task(data.standing(None, 1, ["HPLC-1"]))
    await asyncio.sleep(0)  # the version 1 read has read ACTIVE and waits
    tables.standing, tables.hold = OUT, None
    new = await data.standing(None, 2, ["HPLC-1"])
    slow.set()
    late = await old

    assert late == {"HPLC-1": ACTIVE}
    assert new == {"HPLC-1": OUT}
    assert await data.standing(None, 2, ["HPLC-1"]) == {"HPLC-1": OUT}
    assert tables.reads == 2
