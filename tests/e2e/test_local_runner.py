"""`lotgate run` and `lotgate --version` as a user runs them, as real processes on loopback.

A port that is taken (or given twice), or a service that cannot start, stops `lotgate run`
with a message naming what failed and how to change it: it never says "Lotgate is running"
then, and leaves no nats-server or service behind; a service that dies later stops it the
same way. Its hints on other ports, and `lotgate demo` through them: tests/e2e/test_demo.py.
"""

from __future__ import annotations

import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import IO

import psutil
import pytest

from tests.support.processes import LOTGATE, kill_group, left_in_group, unused_port

pytestmark = pytest.mark.e2e

PORT_FLAGS = ("--nats-port", "--monitor-port", "--suppliers-port", "--lots-port",
              "--results-port")
# A guard against a hang only: a refusal takes a second or two.
HANG_S = 120


def run_lotgate(data_dir: Path, ports: dict[str, int]
                ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `lotgate run` until it exits; with the processes of its group left running."""
    command = [LOTGATE, "run", "--data-dir", str(data_dir)]
    for flag, port in ports.items():
        command += [flag, str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, cwd=data_dir.parent)
    try:
        out, err = process.communicate(timeout=HANG_S)
        left = left_in_group(process.pid)
    finally:
        kill_group(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, out, err), left


@pytest.mark.parametrize("taken", ["--nats-port", "--monitor-port", "--lots-port"])
def test_a_taken_port_stops_lotgate_run_before_it_starts_anything(
        taken: str, tmp_path: Path) -> None:
    ports = {flag: unused_port() for flag in PORT_FLAGS}
    with socket.socket() as holder:  # another program's listener
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        done, left = run_lotgate(tmp_path / "data", ports)

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Lotgate is running" not in done.stdout
    assert f"port {ports[taken]} for " in done.stderr
    assert "is already in use" in done.stderr
    assert f"choose another with {taken}" in done.stderr
    assert "nothing was started" in done.stderr
    assert left == []


def test_a_port_wanted_twice_is_refused_naming_both(tmp_path: Path) -> None:
    ports = {flag: unused_port() for flag in PORT_FLAGS}
    ports["--results-port"] = ports["--lots-port"]

    done, left = run_lotgate(tmp_path / "data", ports)

    assert done.returncode == 1, (done.stdout, done.stderr)
    line = next(line for line in done.stderr.splitlines() if "also wanted by" in line)
    assert f"port {ports['--lots-port']} for the " in line
    assert "lots service's gRPC port" in line and "results service's gRPC port" in line
    assert "Lotgate is running" not in done.stdout
    assert left == []


def test_a_service_that_cannot_start_stops_lotgate_run_and_what_it_started(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "data" / "lots.db").mkdir(parents=True)  # a directory where SQLite wants a file

    done, left = run_lotgate(data, {flag: unused_port() for flag in PORT_FLAGS})

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Lotgate is running" not in done.stdout
    # Its schema is migrated before any service starts, and that is where it fails.
    assert "the lots database could not be migrated" in done.stderr
    assert "unable to open database file" in done.stderr
    assert "Everything it had started is stopped." in done.stderr
    # nats-server had started: it is stopped again.
    assert "Server Exiting" in (data / "nats" / "nats-server.log").read_text()
    assert left == []


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run([LOTGATE, "--version"], capture_output=True, text=True,
                          timeout=HANG_S)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"lotgate {metadata.version('lotgate')}\n"


def test_demo_at_an_address_where_nothing_answers_exits_2_naming_it(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{unused_port()}"

    done = subprocess.run([LOTGATE, "demo", "--lots", nowhere], capture_output=True,
                          text=True, timeout=HANG_S, cwd=tmp_path)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"lots at {nowhere}" in done.stderr
    assert "Starting a private Lotgate" not in done.stdout


def test_a_service_that_dies_while_running_stops_lotgate_run_and_the_others(
        tmp_path: Path) -> None:
    command = [LOTGATE, "run", "--data-dir", str(tmp_path / "data")]
    for flag in PORT_FLAGS:
        command += [flag, str(unused_port())]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True, cwd=tmp_path)
    try:
        assert run.stdout is not None
        printed = _read_through(run.stdout, "Drive the demo scenario through it:")
        assert "Lotgate is running" in printed, run.stderr.read()  # type: ignore[union-attr]
        lots = next(process for process in psutil.Process(run.pid).children()
                    if "services.lots" in process.cmdline())
        lots.kill()  # SIGKILL, as the OOM killer would
        out, err = run.communicate(timeout=HANG_S)
        left = left_in_group(run.pid)
    finally:
        kill_group(run.pid)

    assert run.returncode == 1, (out, err)
    assert "lots exited with status -9; the others are stopped" in err
    assert left == []


def _read_through(stream: IO[str], marker: str) -> str:
    """What a process prints, up to the line starting with `marker` or until it exits."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith(marker):
            break
    return "".join(lines)
