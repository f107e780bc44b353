"""`make demo` against the running system ends as it says it does."""

from __future__ import annotations

import pytest

from lotgate_tools.demo import run_demo
from lotgate_tools.stack import SERVICES, Stack
from tests.support.auth import acting

pytestmark = pytest.mark.e2e


@pytest.mark.req("REL-001", "OOS-003", "REL-010")
async def test_the_demo_ends_as_expected(stack: Stack, capsys: pytest.CaptureFixture) -> None:
    outcome = await run_demo({name: stack.address(name) for name in SERVICES}, acting())

    printed = capsys.readouterr().out
    assert outcome == 0, printed
    assert "Demo finished as expected." in printed
    assert "is on QA's review list" in printed
