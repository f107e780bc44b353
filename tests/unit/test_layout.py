"""The shape of the code: who may import whom, and how large a module may grow.

- A service never imports another service: they meet only through gRPC and events.
- The service library (shared/) and the operator tools (lotgate_tools/) import no service;
  the service library and the services never import the tools.
- A service's tables can be described without the runtime: importing
  `services.<name>.tables` loads neither gRPC nor NATS.
- No module in CHECKED_ROOTS is longer than MAX_LINES: a longer one does more than one job.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__init__.py"))

# The roots whose modules are held to MAX_LINES (generated code lives in protos/).
CHECKED_ROOTS = ("services", "shared", "lotgate_tools")
MAX_LINES = 400


def _modules(root: str) -> list[Path]:
    return sorted((ROOT / root).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every module name `path` imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports_of(root: str, prefix: str) -> list[str]:
    """`file: module` for each import in `root` of `prefix` or anything under it."""
    return [f"{path.relative_to(ROOT)}: {name}"
            for path in _modules(root) for name in sorted(_imported(path))
            if name == prefix or name.startswith(prefix + ".")]


def test_the_services_are_found() -> None:
    assert {"lots", "results", "suppliers"} <= set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    found = [hit for other in SERVICES if other != service
             for hit in _imports_of(f"services/{service}", f"services.{other}")]
    assert found == [], f"services/{service} imports another service: {found}"


@pytest.mark.parametrize("root", ["shared", "lotgate_tools"])
def test_the_library_and_the_tools_import_no_service(root: str) -> None:
    assert _imports_of(root, "services") == []


@pytest.mark.parametrize("root", ["services", "shared"])
def test_nothing_a_service_runs_imports_the_tools(root: str) -> None:
    assert _imports_of(root, "lotgate_tools") == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_services_tables_load_without_grpc_or_nats(service: str) -> None:
    probe = (f"import json, sys; import services.{service}.tables; "
             "print(json.dumps(sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('grpc', 'nats'))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [], (
        f"importing services.{service}.tables loads the runtime; build tables from "
        "shared.tables only")


def test_no_module_is_longer_than_the_limit() -> None:
    modules = [path for root in CHECKED_ROOTS for path in _modules(root)]
    assert len(modules) > len(CHECKED_ROOTS)
    too_long = {str(path.relative_to(ROOT)): lines for path in modules
                if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: split them by job"
