"""The traceability matrix: when it passes, when it fails, and what it writes."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.traceability import (
    FAILED,
    NOT_RUN,
    PASSED,
    UNTESTED,
    Requirement,
    RequirementsError,
    TestResult,
    build,
    parse_requirements,
    to_csv,
    to_html,
)

REL1 = Requirement("REL-001", "A lot is released only when every condition holds.",
                   "21 CFR 211.84(a)")
REL2 = Requirement("REL-002", "A received lot is in quarantine.", "21 CFR 211.82(b)")
ROOT = Path(__file__).resolve().parents[2]
RUN = {"commit": "abc123", "run_at_utc": "2026-12-01 03:00:00 UTC", "hostname": "ci-1",
       "platform": "Linux", "python": "CPython 3.11.9", "database": "PostgreSQL 15.4",
       "nats_server": "nats-server: v2.10.23"}


def passing(name: str, *ids: str, cases: int = 1) -> TestResult:
    return TestResult(f"tests/unit/test_x.py::{name}", ids, passed=cases)


@pytest.mark.req("VAL-002")
def test_every_requirement_with_passing_tests_passes() -> None:
    matrix = build([REL1, REL2], [passing("test_a", "REL-001"),
                                  passing("test_b", "REL-001", "REL-002", cases=3)])

    assert [row.result for row in matrix.rows] == [PASSED, PASSED]
    assert matrix.passed and matrix.problems == []
    assert [t.name for t in matrix.rows[0].tests] == ["tests/unit/test_x.py::test_a",
                                                      "tests/unit/test_x.py::test_b"]


@pytest.mark.req("VAL-002")
def test_a_requirement_no_test_names_fails_the_report() -> None:
    matrix = build([REL1, REL2], [passing("test_a", "REL-001")])

    assert matrix.rows[1].result == UNTESTED
    assert not matrix.passed
    assert matrix.problems == ["REL-002: untested"]


@pytest.mark.req("VAL-002")
def test_a_failing_test_fails_its_requirement_even_beside_passing_ones() -> None:
    failing = TestResult("tests/unit/test_x.py::test_c", ("REL-001",), passed=4, failed=1)
    matrix = build([REL1], [passing("test_a", "REL-001"), failing])

    assert matrix.rows[0].result == FAILED
    assert failing.outcome == "failed"
    assert matrix.problems == ["REL-001: failed"]


@pytest.mark.req("VAL-002")
@pytest.mark.parametrize("test", [
    TestResult("t::skipped", ("REL-001",), skipped=1),
    TestResult("t::partly_skipped", ("REL-001",), passed=2, skipped=1),
    TestResult("t::never_reported", ("REL-001",)),
])
def test_a_skipped_or_unreported_test_proves_nothing(test: TestResult) -> None:
    matrix = build([REL1], [passing("test_a", "REL-001"), test])

    assert matrix.rows[0].result == NOT_RUN
    assert not matrix.passed


@pytest.mark.req("VAL-002")
def test_a_mark_naming_an_unknown_requirement_fails_the_report() -> None:
    matrix = build([REL1], [passing("test_a", "REL-001", "REL-099")])

    assert matrix.rows[0].result == PASSED
    assert matrix.unknown == {"tests/unit/test_x.py::test_a": ("REL-099",)}
    assert matrix.problems == ["tests/unit/test_x.py::test_a names unknown requirement(s) "
                               "REL-099"]


@pytest.mark.req("VAL-002")
def test_tests_without_marks_are_listed_not_failed() -> None:
    matrix = build([REL1], [passing("test_a", "REL-001"), passing("test_helper")])

    assert matrix.passed
    assert matrix.unmarked == ("tests/unit/test_x.py::test_helper",)


@pytest.mark.req("VAL-002")
def test_the_csv_has_a_line_per_requirement_and_test_with_the_run() -> None:
    matrix = build([REL1, REL2], [passing("test_a", "REL-001"),
                                  passing("test_b", "REL-001", cases=2)])

    rows = list(csv.DictReader(io.StringIO(to_csv(matrix, RUN))))

    assert [(r["requirement"], r["test"], r["test_result"], r["requirement_result"])
            for r in rows] == [
        ("REL-001", "tests/unit/test_x.py::test_a", "passed", PASSED),
        ("REL-001", "tests/unit/test_x.py::test_b", "passed", PASSED),
        ("REL-002", "", "", UNTESTED)]
    assert rows[0]["source"] == "21 CFR 211.84(a)" and rows[1]["cases"] == "2"
    assert {r["commit"] for r in rows} == {"abc123"}
    assert "database=PostgreSQL 15.4" in rows[0]["machine"]
    assert "nats_server=nats-server: v2.10.23" in rows[0]["machine"]


@pytest.mark.req("VAL-002")
def test_the_html_is_escaped_and_self_contained() -> None:
    hostile = Requirement("REL-001", '<script>alert("x")</script> & more', "<b>21 CFR</b>")
    matrix = build([hostile], [TestResult('t::test_y[<img src=x onerror=1>]', ("REL-001",),
                                          passed=1)])

    page = to_html(matrix, {**RUN, "hostname": "<host>"})

    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert "&lt;host&gt;" in page
    for elsewhere in ("src=", "href=", "@import", "url("):
        assert elsewhere not in page.replace("src=x", "")  # only the escaped test name
    assert "PASSED: every requirement is proven by passing tests" in page


@pytest.mark.req("VAL-002")
def test_the_html_names_the_run_and_what_failed() -> None:
    matrix = build([REL1, REL2], [passing("test_a", "REL-001")])

    page = to_html(matrix, RUN)

    assert "FAILED: 1 problem(s)" in page
    assert "REL-002: untested" in page
    for value in RUN.values():
        assert value in page
    assert "@media print" in page


def requirements_yaml(body: str) -> str:
    return "requirements:\n" + body


@pytest.mark.req("VAL-002")
@pytest.mark.parametrize(("body", "says"), [
    ("- {id: REL-001, text: t, source: s}\n- {id: REL-001, text: u, source: s}\n",
     "REL-001 appears twice"),
    ("- {id: rel-1, text: t, source: s}\n", "is not like REL-001"),
    ("- {id: REL-001, text: '', source: s}\n", "requirements[0].text"),
    ("- {id: REL-001, text: t}\n", "requirements[0].source"),
    ("- {id: REL-001, text: t, source: s, tests: [x]}\n", "unknown key(s) tests"),
    ("  []\n", "non-empty list"),
])
def test_a_malformed_requirements_file_is_refused_saying_where(body: str, says: str) -> None:
    with pytest.raises(RequirementsError, match=re.escape(says)):
        parse_requirements(requirements_yaml(body))


@pytest.mark.req("VAL-002")
def test_the_project_requirements_are_well_formed_and_each_has_a_source() -> None:
    found = parse_requirements((ROOT / "docs" / "requirements.yaml").read_text())

    assert len(found) >= 40
    assert all(r.source and r.text for r in found)


# The plugin itself, run for real in a child process on a small suite.

SMALL_REQUIREMENTS = """\
requirements:
- {id: ABC-001, text: the first promise, source: "21 CFR 11.10(a)"}
- {id: ABC-002, text: the second promise, source: "EU GMP Annex 11 §4.7"}
"""

SMALL_CONFTEST = 'pytest_plugins = ["tests.support.validation"]\n'

SMALL_INI = """\
[pytest]
markers =
    req(*ids): requirements
addopts = --strict-markers
"""


def run_plugin(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "requirements.yaml").write_text(SMALL_REQUIREMENTS)
    (tmp_path / "conftest.py").write_text(SMALL_CONFTEST)
    (tmp_path / "pytest.ini").write_text(SMALL_INI)
    (tmp_path / "test_small.py").write_text("import pytest\n\n\n" + body)
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DATABASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--requirements", str(tmp_path / "requirements.yaml"),
         "--validation-report", str(out), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return done, out


BOTH = ('@pytest.mark.req("ABC-001")\ndef test_one():\n    assert True\n\n\n'
        '@pytest.mark.req("ABC-002")\n@pytest.mark.parametrize("n", [1, 2])\n'
        'def test_two(n):\n    assert n\n')


@pytest.mark.req("VAL-002")
def test_the_plugin_passes_a_run_proving_every_requirement_and_writes_both_files(
        tmp_path: Path) -> None:
    done, out = run_plugin(tmp_path, BOTH)

    assert done.returncode == 0, done.stdout
    rows = list(csv.DictReader((out / "traceability.csv").open(encoding="utf-8")))
    assert [(r["requirement"], r["test"], r["cases"], r["requirement_result"])
            for r in rows] == [("ABC-001", "test_small.py::test_one", "1", PASSED),
                               ("ABC-002", "test_small.py::test_two", "2", PASSED)]
    assert "ABC-002" in (out / "traceability.html").read_text(encoding="utf-8")
    assert "2 requirements: 2 passed" in done.stdout


@pytest.mark.req("VAL-002")
@pytest.mark.parametrize(("body", "says"), [
    ('@pytest.mark.req("ABC-001")\ndef test_one():\n    assert True\n', "ABC-002: untested"),
    (BOTH.replace("assert n", "assert n < 2"), "ABC-002: failed"),
    (BOTH + '\n\n@pytest.mark.req("ABC-009")\ndef test_three():\n    assert True\n',
     "test_small.py::test_three names unknown requirement(s) ABC-009"),
])
def test_the_plugin_fails_a_run_that_does_not_prove_every_requirement(
        tmp_path: Path, body: str, says: str) -> None:
    done, out = run_plugin(tmp_path, body)

    assert done.returncode == 1, done.stdout
    assert says in done.stdout
    assert says in (out / "traceability.html").read_text(encoding="utf-8")
