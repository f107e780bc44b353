"""Every module of the package imports: run on the declared floors too (`make floors`).

The generated protobuf and gRPC code checks its runtime at import (protobuf >= the gencode
version, grpcio >= the version that generated it), and a too-old library fails on a missing
name only when the module that uses it is imported; importing all of them finds both.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    where, include = find["packages"]["find"]["where"], find["packages"]["find"]["include"]
    names: list[str] = []
    for base in where:
        for init in sorted((ROOT / base).glob("*/__init__.py")):
            top = init.parent.name
            if not any(fnmatch.fnmatch(top, pattern) for pattern in include):
                continue
            names.append(top)
            for info in pkgutil.walk_packages([str(init.parent)], prefix=f"{top}."):
                # __main__ modules start a process when imported.
                if info.name.rsplit(".", 1)[-1] != "__main__":
                    names.append(info.name)
    return names


MODULES = _modules()


def test_the_package_has_modules() -> None:
    assert {"shared", "services", "lotgate"} <= {name.split(".")[0] for name in MODULES}
    assert len(MODULES) > 40


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)
