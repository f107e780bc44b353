"""FileClock (tests only): the system time plus an offset read from a file."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.clock import FileClock


def write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_missing_file_is_no_offset(tmp_path: Path) -> None:
    clock = FileClock(str(tmp_path / "absent"))

    assert clock.offset() == timedelta(0)
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(minutes=1)


def test_the_offset_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write(path, "172800", 1_000_000_000)
    clock = FileClock(str(path))

    assert clock.offset() == timedelta(days=2)
    assert clock.now() - datetime.now(UTC) > timedelta(days=1, hours=23)
    write(path, "3600.5", 2_000_000_000)
    assert clock.offset() == timedelta(seconds=3600.5)
    write(path, "not a number", 3_000_000_000)  # half written: keep the last offset
    assert clock.offset() == timedelta(seconds=3600.5)
    path.unlink()
    assert clock.offset() == timedelta(0)
