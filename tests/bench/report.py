"""The benchmark's markdown table: each measurement beside its target, and whether it was met."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    number: str
    measurement: str
    result: str
    target: str = "-"
    met: bool | None = None  # None: a reference value, no target
    details: str = ""
    errors: int = 0

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "-"
        if self.errors:
            return "NO (errors)"
        return "yes" if self.met else "**NO**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(title: str, facts: list[str], rows: list[Row], notes: list[str]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {fact}" for fact in facts]
    lines += ["", "| # | Measurement | Result | Target | Met | Details |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in (
            row.number, row.measurement, row.result, row.target, row.verdict,
            row.details)) + " |")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
