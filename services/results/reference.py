"""What posting reads of the reference data, kept in memory while it is unchanged.

Every post judges against its material's EFFECTIVE specification versions and checks its
instrument's status and calibrations. These change seldom, and only by rows of their
tables; the database raises `reference_version` in every transaction that changes them
(triggers, whoever the writer), and a post reads that number in the statement that takes
its lots' numbers. Entries read under another number than the post's are dropped and read
again, so a post never uses what another replica, a migration or a hand-made correction
has changed in a transaction committed before that statement, which is as fresh as the
tables' own reads were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

from sqlalchemy.ext.asyncio import AsyncConnection

from services.results import repository
from services.results.domain.instruments import InstrumentStatus
from services.results.domain.specifications import Specification

Standing = tuple[InstrumentStatus, list[tuple[date, date]]]

# Materials and instruments held at most; past it everything is read again (bounds memory
# should a client post for ever-new instruments that are not registered).
MAX_ENTRIES = 10_000


class ReferenceData:
    """One process's copy, for one database. What is read under a version goes only into
    that version's entries: a read still under way when a post of another version
    replaced them (posts run concurrently) is used by its own post and then dropped."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._specs: dict[str, list[Specification]] = {}
        self._standing: dict[str, Standing | None] = {}  # None: not registered

    def _at(self, version: int) -> None:
        if version != self._version or len(self._specs) + len(self._standing) > MAX_ENTRIES:
            self._version = version
            self._specs, self._standing = {}, {}

    async def standing(self, conn: AsyncConnection, version: int | None,
                       instrument_ids: Sequence[str]) -> dict[str, Standing]:
        """repository.instrument_standing, from memory for the instruments read under
        `version` (None: read them all)."""
        if version is None:
            return await repository.instrument_standing(conn, instrument_ids=instrument_ids)
        self._at(version)
        held = self._standing
        missing = [i for i in instrument_ids if i not in held]
        if missing:
            found = await repository.instrument_standing(conn, instrument_ids=missing)
            held.update((i, found.get(i)) for i in missing)
        return {i: s for i in instrument_ids if (s := held[i]) is not None}

    async def specifications(self, conn: AsyncConnection, version: int | None,
                             material_codes: Iterable[str]) -> dict[str, list[Specification]]:
        """repository.effective_specifications, from memory for the materials read under
        `version` (None: read them all)."""
        wanted = sorted(set(material_codes))
        if version is None:
            return await repository.effective_specifications(conn, material_codes=wanted)
        self._at(version)
        held = self._specs
        missing = [m for m in wanted if m not in held]
        if missing:
            found = await repository.effective_specifications(conn, material_codes=missing)
            held.update((m, found.get(m, [])) for m in missing)
        return {m: specs for m in wanted if (specs := held[m])}
