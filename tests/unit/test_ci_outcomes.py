"""CI fails a run in which any test was skipped, xfailed or xpassed, as it fails on a failure.

Each case runs pytest for real, in a child process, on a small suite with this project's
session hook, and reads its exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """\
from tests.support.outcomes import reject_in_ci


def pytest_sessionfinish(session, exitstatus):
    reject_in_ci(session)
"""

PASSING = "def test_passes():\n    assert True\n"

ENDINGS = {
    "skipped": "import pytest\n\n\ndef test_skipped():\n    pytest.skip('no server')\n",
    "xfailed": ("import pytest\n\n\n@pytest.mark.xfail(reason='known bug')\n"
                "def test_known_failure():\n    assert False\n"),
    "xpassed": ("import pytest\n\n\n@pytest.mark.xfail(reason='known bug')\n"
                "def test_no_longer_fails():\n    assert True\n"),
}


def run_suite(tmp_path: Path, body: str, *, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_passing.py").write_text(PASSING)
    (tmp_path / "test_other.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsxX",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.req("VAL-001")
@pytest.mark.parametrize("outcome", sorted(ENDINGS))
def test_ci_fails_a_run_with_a_skipped_xfailed_or_xpassed_test(tmp_path, outcome) -> None:
    run = run_suite(tmp_path, ENDINGS[outcome], ci=True)

    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    assert f"CI: 1 {outcome}; every test must run and pass" in run.stdout, run.stdout


@pytest.mark.req("VAL-001")
@pytest.mark.parametrize("outcome", sorted(ENDINGS))
def test_outside_ci_the_same_run_passes(tmp_path, outcome) -> None:
    run = run_suite(tmp_path, ENDINGS[outcome], ci=False)

    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr


@pytest.mark.req("VAL-001")
def test_ci_passes_a_run_in_which_every_test_ran_and_passed(tmp_path) -> None:
    run = run_suite(tmp_path, PASSING.replace("test_passes", "test_also_passes"), ci=True)

    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
