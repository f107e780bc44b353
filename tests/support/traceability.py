"""The traceability matrix: requirements -> the tests that prove them -> their results.

Pure: it reads nothing but what it is given, so the rules of the evidence are unit-tested
(tests/unit/test_traceability.py). The pytest plugin in tests.support.validation feeds it
the requirements of docs/requirements.yaml and each test's outcome and `req` marks.

A requirement is PASSED only when at least one test names it and every test that names it
passed; FAILED when one of them failed; UNTESTED when no test of the session names it;
NOT RUN when a test naming it was skipped, xfailed or xpassed, or never reported (a run
stopped early). The report fails
unless every requirement PASSED and no mark names an id that is not a requirement: an
inspector must be able to read "covered" as "shown to hold by this run".
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

ID_PATTERN = re.compile(r"^[A-Z]{2,5}-\d{3}$")

PASSED, FAILED, UNTESTED, NOT_RUN = "PASSED", "FAILED", "UNTESTED", "NOT RUN"


class RequirementsError(ValueError):
    """docs/requirements.yaml is not a list of well-formed, distinct requirements."""


@dataclass(frozen=True)
class Requirement:
    id: str
    text: str
    source: str


@dataclass(frozen=True)
class TestResult:
    """One test function (all its parametrized cases): its outcome and the ids it names."""

    __test__ = False  # not a pytest test class

    name: str  # the node id without parameters: tests/unit/test_x.py::test_y
    requirement_ids: tuple[str, ...]
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def outcome(self) -> str:
        if self.failed:
            return "failed"
        if self.passed and not self.skipped:
            return "passed"
        if self.passed:
            return "passed with skips"
        return "skipped" if self.skipped else "not run"

    @property
    def cases(self) -> int:
        return self.passed + self.failed + self.skipped


@dataclass(frozen=True)
class Row:
    requirement: Requirement
    tests: tuple[TestResult, ...]

    @property
    def result(self) -> str:
        if not self.tests:
            return UNTESTED
        if any(t.failed for t in self.tests):
            return FAILED
        if all(t.passed and not t.skipped for t in self.tests):
            return PASSED
        return NOT_RUN


@dataclass(frozen=True)
class Matrix:
    rows: tuple[Row, ...]
    # Marks naming an id that docs/requirements.yaml does not have: test -> ids.
    unknown: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Tests that ran without naming any requirement (shown, not a failure).
    unmarked: tuple[str, ...] = ()

    @property
    def problems(self) -> list[str]:
        """Why the report fails, one line each; empty when it passes."""
        found = [f"{row.requirement.id}: {row.result.lower()}" for row in self.rows
                 if row.result != PASSED]
        found += [f"{test} names unknown requirement(s) {', '.join(ids)}"
                  for test, ids in sorted(self.unknown.items())]
        return found

    @property
    def passed(self) -> bool:
        return not self.problems

    def count(self, result: str) -> int:
        return sum(1 for row in self.rows if row.result == result)


def parse_requirements(text: str) -> list[Requirement]:
    """The requirements of a requirements.yaml document, checked for shape and duplicates."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RequirementsError(f"not YAML: {exc}") from exc
    entries = document.get("requirements") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RequirementsError("expected a non-empty list under 'requirements'")
    found: list[Requirement] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"requirements[{i}]"
        if not isinstance(entry, dict):
            raise RequirementsError(f"{where}: expected a mapping with id, text and source")
        values = {key: entry.get(key) for key in ("id", "text", "source")}
        for key, value in values.items():
            if not isinstance(value, str) or not value.strip():
                raise RequirementsError(f"{where}.{key}: a non-empty text is required")
        extra = sorted(set(entry) - set(values))
        if extra:
            raise RequirementsError(f"{where}: unknown key(s) {', '.join(map(str, extra))}")
        rid = values["id"].strip()
        if not ID_PATTERN.match(rid):
            raise RequirementsError(f"{where}.id: {rid!r} is not like REL-001")
        if rid in seen:
            raise RequirementsError(f"{where}.id: {rid} appears twice")
        seen.add(rid)
        found.append(Requirement(rid, " ".join(values["text"].split()),
                                 " ".join(values["source"].split())))
    return found


def build(requirements: Sequence[Requirement], tests: Iterable[TestResult]) -> Matrix:
    """Join the requirements with the tests naming them, in the requirements' order."""
    known = {r.id for r in requirements}
    by_id: dict[str, list[TestResult]] = {r.id: [] for r in requirements}
    unknown: dict[str, tuple[str, ...]] = {}
    unmarked: list[str] = []
    for test in sorted(tests, key=lambda t: t.name):
        if not test.requirement_ids:
            unmarked.append(test.name)
            continue
        strangers = tuple(i for i in test.requirement_ids if i not in known)
        if strangers:
            unknown[test.name] = strangers
        for rid in dict.fromkeys(test.requirement_ids):
            if rid in by_id:
                by_id[rid].append(test)
    rows = tuple(Row(r, tuple(by_id[r.id])) for r in requirements)
    return Matrix(rows, unknown, tuple(unmarked))


def to_csv(matrix: Matrix, run: Mapping[str, str]) -> str:
    """One line per (requirement, test); a requirement no test names gets one line with no
    test. Every line carries the commit, the time and the machine, so any extract of the
    file still says which run it comes from."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["requirement", "text", "source", "requirement_result", "test",
                     "test_result", "cases", "commit", "run_at_utc", "machine"])
    machine = machine_line(run)
    for row in matrix.rows:
        r = row.requirement
        for test in row.tests or (None,):
            writer.writerow([r.id, r.text, r.source, row.result,
                             test.name if test else "", test.outcome if test else "",
                             test.cases if test else 0,
                             run.get("commit", ""), run.get("run_at_utc", ""), machine])
    return out.getvalue()


def machine_line(run: Mapping[str, str]) -> str:
    keys = ("hostname", "platform", "python", "database", "nats_server")
    return "; ".join(f"{key}={run[key]}" for key in keys if run.get(key))


RUN_LABELS = {
    "commit": "commit", "run_at_utc": "run at (UTC)", "command": "command",
    "hostname": "machine", "platform": "platform", "python": "Python",
    "database": "database", "nats_server": "nats-server",
}

_STYLE = """
body { font: 11pt/1.35 system-ui, sans-serif; margin: 2em; color: #111; }
h1 { font-size: 16pt; margin-bottom: .2em; }
h2 { font-size: 13pt; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #999; padding: 3px 6px; vertical-align: top; text-align: left; }
th { background: #eee; }
td.id { white-space: nowrap; font-weight: bold; }
td.tests { font-family: ui-monospace, monospace; font-size: 8.5pt; word-break: break-all; }
.PASSED { color: #075e07; font-weight: bold; }
.FAILED, .UNTESTED, .NOT-RUN, .bad { color: #a00; font-weight: bold; }
.verdict { font-size: 13pt; padding: .4em .6em; border: 2px solid; display: inline-block; }
tr { page-break-inside: avoid; }
@media print { body { margin: 0; font-size: 9pt; } a { color: inherit; } }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def to_html(matrix: Matrix, run: Mapping[str, str]) -> str:
    """One self-contained page (no script, no link, no image): every text escaped."""
    verdict = ("PASSED: every requirement is proven by passing tests" if matrix.passed
               else f"FAILED: {len(matrix.problems)} problem(s)")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Lotgate traceability matrix</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Lotgate: requirements traceability matrix</h1>",
        f'<p class="verdict {"PASSED" if matrix.passed else "FAILED"}">{_e(verdict)}</p>',
        "<h2>Run</h2><table>",
    ]
    for key, label in RUN_LABELS.items():
        if run.get(key):
            parts.append(f"<tr><th>{_e(label)}</th><td>{_e(run[key])}</td></tr>")
    parts.append("</table>")
    total = len(matrix.rows)
    parts.append(
        f"<p>{total} requirements: {matrix.count(PASSED)} passed, {matrix.count(FAILED)} "
        f"failed, {matrix.count(UNTESTED)} untested, {matrix.count(NOT_RUN)} not run. "
        f"{sum(1 for _ in _tests_named(matrix))} test functions name a requirement; "
        f"{len(matrix.unmarked)} ran without naming one.</p>")
    if matrix.problems:
        parts.append("<h2>Problems</h2><ul>")
        parts += [f'<li class="bad">{_e(problem)}</li>' for problem in matrix.problems]
        parts.append("</ul>")
    parts.append("<h2>Matrix</h2><table><thead><tr><th>requirement</th><th>text</th>"
                 "<th>source</th><th>result</th><th>tests (cases)</th></tr></thead><tbody>")
    for row in matrix.rows:
        r = row.requirement
        tests = "<br>".join(
            f'{_e(t.name)} <span class="{_e(_css(t.outcome))}">{_e(t.outcome)}</span>'
            f" ({t.cases})" for t in row.tests) or '<span class="bad">none</span>'
        parts.append(
            f'<tr id="{_e(r.id)}"><td class="id">{_e(r.id)}</td><td>{_e(r.text)}</td>'
            f"<td>{_e(r.source)}</td><td class=\"{_e(_css(row.result))}\">{_e(row.result)}"
            f'</td><td class="tests">{tests}</td></tr>')
    parts.append("</tbody></table>")
    if matrix.unknown:
        parts.append("<h2>Marks naming unknown requirements</h2><ul>")
        parts += [f'<li class="bad">{_e(test)}: {_e(", ".join(ids))}</li>'
                  for test, ids in sorted(matrix.unknown.items())]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _css(result: str) -> str:
    return {"passed": PASSED, "failed": FAILED}.get(result, result.replace(" ", "-"))


def _tests_named(matrix: Matrix) -> set[str]:
    return {t.name for row in matrix.rows for t in row.tests} | set(matrix.unknown)


def summary(matrix: Matrix) -> str:
    """One line for the terminal."""
    return (f"{len(matrix.rows)} requirements: {matrix.count(PASSED)} passed, "
            f"{matrix.count(FAILED)} failed, {matrix.count(UNTESTED)} untested, "
            f"{matrix.count(NOT_RUN)} not run; {len(matrix.unknown)} test(s) naming unknown "
            "requirements")


def ids_of(args: Sequence[Any]) -> tuple[str, ...]:
    """The ids of one `req` mark's arguments; anything but a text is kept as its repr so
    that it shows up as an unknown requirement rather than vanishing."""
    return tuple(a if isinstance(a, str) else repr(a) for a in args)
