"""Time as a dependency, so that rules about dates can be tested with a controlled clock."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: for tests of time-driven rules (expiry).

    Services given the same ManualClock share one notion of "now", so a test can step
    past a qualification's valid_until and watch every service react.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock does not go back")
        self._now += delta
        return self._now


class FileClock:
    """The system time plus an offset in seconds read from a file: FOR TESTS ONLY.

    It lets end-to-end tests move the clock of service processes they do not run
    themselves (`LOTGATE_CLOCK_FILE`): writing "172800" into the file moves every process
    that reads it two days ahead. The file is read again whenever its modification time
    changes; a missing file is an offset of 0, and content that cannot be read keeps the
    last offset read. Never set it in production: it lets whoever can write the file
    change what the services believe the time is.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset()

    def offset(self) -> timedelta:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._offset = None, timedelta(0)
            return self._offset
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                with open(self._path, encoding="utf-8") as file:
                    text = file.read().strip()
                self._offset = timedelta(seconds=float(text or 0))
                self._stamp = stamp
            except (OSError, ValueError, OverflowError):
                pass  # being written: read it again next time
        return self._offset
