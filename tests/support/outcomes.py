"""Outcomes a CI run must not end with, even though pytest counts them as a pass.

A skipped test means a server or a tool was missing; an xfail is a known failure kept
quiet, and an xpass a test that no longer shows what its mark says. In CI each of these
fails the run, so a green run means every test ran and passed.
"""

from __future__ import annotations

import os

import pytest

FORBIDDEN_IN_CI = ("skipped", "xfailed", "xpassed")


def forbidden(stats: dict[str, list[object]]) -> dict[str, int]:
    """Outcome -> how many tests ended so, for the outcomes CI rejects."""
    return {outcome: len(stats[outcome]) for outcome in FORBIDDEN_IN_CI if stats.get(outcome)}


def reject_in_ci(session: pytest.Session) -> None:
    """Fail the session (in CI only) when any test was skipped, xfailed or xpassed."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    found = forbidden(reporter.stats) if reporter else {}
    if found:
        counted = ", ".join(f"{count} {outcome}" for outcome, count in found.items())
        reporter.write_line(f"CI: {counted}; every test must run and pass: failing the run",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
