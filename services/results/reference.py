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

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import date
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from services.results import repository
from services.results.domain.instruments import InstrumentStatus
from services.results.domain.specifications import Specification

Standing = tuple[InstrumentStatus, list[tuple[date, date]]]
T = TypeVar("T")

# Materials and instruments held at most; past it everything is read again (bounds memory
# should a client post for ever-new instruments that are not registered).
MAX_ENTRIES = 10_000


class ReferenceData:
    """One process's copy, for one database. What is read under a version goes only into
    that version's entries: a read still under way when a post of another version
    replaced them (posts run concurrently) is used by its own post and then dropped."""

    def __init__(self) -> None:
        self._version: int | None = None
        # None: not registered, no EFFECTIVE version.
        self._specs: dict[str, list[Specification] | None] = {}
        self._standing: dict[str, Standing | None] = {}

    def _at(self, version: int) -> None:
        if version != self._version or len(self._specs) + len(self._standing) > MAX_ENTRIES:
            self._version = version
            self._specs, self._standing = {}, {}

    async def standing(self, conn: AsyncConnection, version: int | None,
                       instrument_ids: Sequence[str]) -> dict[str, Standing]:
        """repository.instrument_standing, from memory for the instruments read under
        `version` (None: read them all)."""
        def read(ids: Sequence[str]) -> Awaitable[dict[str, Standing]]:
            return repository.instrument_standing(conn, instrument_ids=ids)

        if version is None:
            return await read(instrument_ids)
        self._at(version)
        return await _through(self._standing, instrument_ids, read)

    async def specifications(self, conn: AsyncConnection, version: int | None,
                             material_codes: Iterable[str]) -> dict[str, list[Specification]]:
        """repository.effective_specifications, from memory for the materials read under
        `version` (None: read them all)."""
        def read(codes: Sequence[str]) -> Awaitable[dict[str, list[Specification]]]:
            return repository.effective_specifications(conn, material_codes=codes)

        wanted = sorted(set(material_codes))
        if version is None:
            return await read(wanted)
        self._at(version)
        return await _through(self._specs, wanted, read)


async def _through(held: dict[str, T | None], keys: Sequence[str],
                   read: Callable[[Sequence[str]], Awaitable[dict[str, T]]]) -> dict[str, T]:
    """What `read` gives for `keys` (those it finds), the ones in `held` from there: what
    is read goes into `held`, the entries this call started from, found or not."""
    missing = [key for key in keys if key not in held]
    if missing:
        found = await read(missing)
        held.update((key, found.get(key)) for key in missing)
    return {key: value for key in keys if (value := held[key]) is not None}
