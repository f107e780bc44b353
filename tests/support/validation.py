"""A pytest plugin that turns a test run into validation evidence.

    pytest --validation-report=build/validation      (tests/conftest.py loads the plugin)

collects each test's outcome and its `@pytest.mark.req(...)` ids, joins them with
docs/requirements.yaml (tests.support.traceability) and writes traceability.html and
traceability.csv into the directory, with the commit, the time (UTC) and the machine
(hostname, platform, Python, database and nats-server versions). The run fails when a
requirement has no passing test or a mark names an unknown requirement, even if every
test passed. The suite runs once: the report is a by-product of the ordinary test run
(`make validation-report`, and CI).
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sqlite3
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import traceability

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "docs" / "requirements.yaml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("validation")
    group.addoption("--validation-report", metavar="DIR", default=None,
                    help="write the requirements traceability matrix (HTML, CSV) into DIR "
                         "and fail the run unless every requirement is proven")
    group.addoption("--requirements", metavar="FILE", default=str(REQUIREMENTS),
                    help="the requirements file (default: docs/requirements.yaml)")


def pytest_configure(config: pytest.Config) -> None:
    directory = config.getoption("--validation-report")
    if directory:
        collector = Collector(Path(directory), Path(config.getoption("--requirements")))
        # The requirements are read first: a broken file stops the run before it starts.
        collector.requirements = traceability.parse_requirements(
            collector.requirements_file.read_text(encoding="utf-8"))
        config.pluginmanager.register(collector, "lotgate-validation-report")


def _function_of(nodeid: str) -> str:
    """tests/x.py::test_y[case-1] -> tests/x.py::test_y: one row per test function."""
    return nodeid.split("[", 1)[0]


@dataclass
class _Tally:
    ids: tuple[str, ...] = ()
    passed: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(eq=False)  # a plugin object must stay hashable
class Collector:
    directory: Path
    requirements_file: Path
    requirements: list[traceability.Requirement] = field(default_factory=list)
    # node id -> "passed" / "failed" / "skipped"; the worst phase wins.
    outcomes: dict[str, str] = field(default_factory=dict)
    marks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    database: str = ""

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            ids: list[str] = []
            for mark in item.iter_markers("req"):
                ids.extend(traceability.ids_of(mark.args))
            self.marks[item.nodeid] = tuple(dict.fromkeys(ids))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if getattr(report, "wasxfail", None) is not None:
            outcome = "skipped"  # an xfail or xpass proves nothing
        elif report.failed:
            outcome = "failed"
        elif report.skipped:
            outcome = "skipped"
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        rank = {"passed": 0, "skipped": 1, "failed": 2}
        before = self.outcomes.get(report.nodeid)
        if before is None or rank[outcome] > rank[before]:
            self.outcomes[report.nodeid] = outcome

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef, request: object):
        outcome = yield
        if fixturedef.argname == "databases" and not self.database:
            databases = outcome.get_result() if outcome.excinfo is None else None
            kind = getattr(databases, "kind", "")
            url = getattr(databases, "admin_url", None)
            self.database = _database(kind, url)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        matrix = traceability.build(self.requirements, self.tests())
        run = self.run_facts(session)
        self.directory.mkdir(parents=True, exist_ok=True)
        html_file = self.directory / "traceability.html"
        csv_file = self.directory / "traceability.csv"
        html_file.write_text(traceability.to_html(matrix, run), encoding="utf-8")
        csv_file.write_text(traceability.to_csv(matrix, run), encoding="utf-8", newline="")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "validation report")
            reporter.write_line(traceability.summary(matrix))
            for problem in matrix.problems[:50]:
                reporter.write_line(f"  {problem}", red=True)
            reporter.write_line(f"written: {html_file} and {csv_file}")
        if not matrix.passed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def tests(self) -> list[traceability.TestResult]:
        tallies: dict[str, _Tally] = defaultdict(_Tally)
        for nodeid, ids in self.marks.items():
            tally = tallies[_function_of(nodeid)]
            tally.ids = tuple(dict.fromkeys(tally.ids + ids))
            outcome = self.outcomes.get(nodeid)
            if outcome == "passed":
                tally.passed += 1
            elif outcome == "failed":
                tally.failed += 1
            elif outcome == "skipped":
                tally.skipped += 1
        return [traceability.TestResult(name, t.ids, t.passed, t.failed, t.skipped)
                for name, t in tallies.items()]

    def run_facts(self, session: pytest.Session) -> dict[str, str]:
        return {
            "commit": _commit(),
            "run_at_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(["pytest", *session.config.invocation_params.args]),
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "database": self.database or _database("", os.environ.get("DATABASE_URL")),
            "nats_server": _nats_server_version(),
        }


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30,
                              cwd=ROOT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip() if done.returncode == 0 else ""


def _commit() -> str:
    commit = _run("git", "rev-parse", "HEAD") or "unknown (not a git checkout)"
    # Uncommitted changes mean the evidence is not for that commit alone: say so.
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no")
    return f"{commit} (with uncommitted changes)" if dirty else commit


def _nats_server_version() -> str:
    from lotgate_tools.stack import nats_server_binary

    try:
        binary = nats_server_binary()
    except FileNotFoundError as exc:
        return f"unknown ({exc})"
    return _run(binary, "--version") or "unknown"


def _database(kind: str, admin_url: str | None) -> str:
    """The database the tests ran on, with the server's version."""
    if not admin_url:
        return f"SQLite {sqlite3.sqlite_version}" if kind in ("", "sqlite") else kind
    return f"PostgreSQL {_postgres_version(admin_url)}"


def _postgres_version(admin_url: str) -> str:
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(
        hide_password=False)

    async def ask() -> str:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    # In a thread of its own: asyncio.run would replace this thread's event loop, which
    # pytest-asyncio's session loop may be.
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(asyncio.run, ask()).result(timeout=30)
        except Exception as exc:  # the report must still be written
            return f"(version unknown: {type(exc).__name__})"
