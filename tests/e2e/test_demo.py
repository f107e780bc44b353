"""`make demo` against the running system ends as it says it does, also through
`lotgate run` on ports of the user's choice."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from lotgate_tools.demo import run_demo
from lotgate_tools.stack import SERVICES, Stack
from tests.support.auth import acting
from tests.support.processes import LOTGATE, kill_group, left_in_group, unused_port

pytestmark = pytest.mark.e2e

# A guard against a hang only.
HANG_S = 300


@pytest.mark.req("REL-001", "OOS-003", "REL-010")
async def test_the_demo_ends_as_expected(stack: Stack, capsys: pytest.CaptureFixture) -> None:
    outcome = await run_demo({name: stack.address(name) for name in SERVICES}, acting())

    printed = capsys.readouterr().out
    assert outcome == 0, printed
    assert "Demo finished as expected." in printed
    assert "is on QA's review list" in printed


async def test_lotgate_run_on_other_ports_prints_them_and_lotgate_demo_runs_through_it(
        tmp_path: Path) -> None:
    """`lotgate run` on ports of the user's choice prints those ports in its hints; the
    `lotgate demo` command it prints ends as expected; Ctrl-C stops everything."""
    ports = {flag: unused_port() for flag in ("--nats-port", "--monitor-port",
                                              "--suppliers-port", "--lots-port",
                                              "--results-port")}
    command = [LOTGATE, "run", "--data-dir", str(tmp_path / "data")]
    for flag, port in ports.items():
        command += [flag, str(port)]
    errors = open(tmp_path / "run.err", "wb")
    run = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=errors, cwd=tmp_path,
        start_new_session=True)
    errors.close()
    try:
        printed = await asyncio.wait_for(_until_demo_hint(run), timeout=HANG_S)
        assert "Lotgate is running" in printed, (tmp_path / "run.err").read_text()
        assert f"nats://127.0.0.1:{ports['--nats-port']}" in printed
        assert f"http://127.0.0.1:{ports['--monitor-port']}" in printed
        assert (f"127.0.0.1:{ports['--lots-port']} lotgate.lots.v1.LotService/ListLots"
                in printed)
        assert f"--keys {tmp_path / 'data' / 'keys'}" in printed
        hint = printed.splitlines()[-1].split()
        assert hint[0] == "lotgate" and hint[1] == "demo", printed
        for name in SERVICES:
            flag = hint.index(f"--{name}")
            assert hint[flag + 1] == f"127.0.0.1:{ports[f'--{name}-port']}", printed

        demo = await asyncio.create_subprocess_exec(
            LOTGATE, *hint[1:], stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
        out, _ = await asyncio.wait_for(demo.communicate(), timeout=HANG_S)
        told = out.decode()
        assert demo.returncode == 0, told
        assert "Using the Lotgate that is already running." in told
        assert "Demo finished as expected." in told

        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        await asyncio.wait_for(run.wait(), timeout=HANG_S)
        assert run.returncode == 0, (tmp_path / "run.err").read_text()
        assert left_in_group(run.pid) == []
    finally:
        kill_group(run.pid)


async def _until_demo_hint(run: asyncio.subprocess.Process) -> str:
    """What `lotgate run` prints, up to its `lotgate demo` hint (its last line)."""
    assert run.stdout is not None
    lines = []
    while True:
        line = (await run.stdout.readline()).decode()
        if not line:  # it exited
            return "".join(lines)
        lines.append(line)
        if line.strip().startswith("lotgate demo"):
            return "".join(lines)
