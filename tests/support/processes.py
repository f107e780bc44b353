"""Lotgate's command line as a user runs it: the venv's `lotgate`, each run in a process
group of its own, so that a test can tell whether anything it started is left behind."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import psutil

LOTGATE = str(Path(sys.executable).parent / "lotgate")


def unused_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def left_in_group(pgid: int) -> list[str]:
    """The command lines of the live processes of process group `pgid`."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(process.cmdline()))
        except (ProcessLookupError, psutil.Error):
            continue
    return left


def kill_group(pgid: int) -> None:
    """After a failed test: SIGKILL whatever of the group still runs."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
