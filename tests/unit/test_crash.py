"""Crash points: off unless armed, and when armed they kill the process the n-th time."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from shared import crash


def test_unarmed_points_do_nothing() -> None:
    for point in crash.POINTS:
        crash.crash_point(point)  # this process lives on


def test_an_unknown_point_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="after_comit"):
        crash._parse("after_comit:2")


def test_an_armed_point_kills_the_process_the_nth_time_it_is_reached() -> None:
    script = ("from shared.crash import crash_point\n"
              "crash_point('inside_decision'); print('first', flush=True)\n"
              "crash_point('inside_decision'); print('second', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"LOTGATE_CRASH_AT": "inside_decision:2",
                               "PYTHONPATH": ":".join(sys.path)}, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "first\n"
    assert "crash point inside_decision reached" in done.stderr
