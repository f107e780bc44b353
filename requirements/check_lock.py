"""Offline check that the lockfiles still fit pyproject.toml; `make lint` runs it.

- every requirement of pyproject.toml (runtime in lock.txt and dev-lock.txt, the `dev`
  extra in dev-lock.txt) is pinned, at a version its specifier allows;
- dev-lock.txt pins every package of lock.txt at the same version (CI tests what ships);
- build-lock.txt pins the [build-system] requirements (the image builds the wheel with it);
- every pin carries at least one hash (pip --require-hashes would refuse it anyway);
- floors.txt pins each runtime requirement at the lower bound pyproject declares.

It reads files only, so it cannot see a newer release; `make lock` is what moves the pins.
Exit status 1 with one line per problem.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile / uv lockfile."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def floor(requirement: Requirement) -> str | None:
    """The version of the `>=` (or `==`) clause, the declared lower bound."""
    for spec in requirement.specifier:
        if spec.operator in (">=", "=="):
            return spec.version
    return None


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    build = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    runtime = [Requirement(r) for r in project["dependencies"]]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    lock = read_pins(ROOT / "requirements/lock.txt")
    dev_lock = read_pins(ROOT / "requirements/dev-lock.txt")
    build_lock = read_pins(ROOT / "requirements/build-lock.txt")
    problems: list[str] = []

    def check(requirements: list[Requirement], pins: dict, name: str) -> None:
        for requirement in requirements:
            pinned = pins.get(canonicalize_name(requirement.name))
            if pinned is None:
                problems.append(f"{name}: {requirement} is not pinned (run make lock)")
            elif not requirement.specifier.contains(pinned[0], prereleases=True):
                problems.append(
                    f"{name}: {requirement.name}=={pinned[0]} is outside {requirement} "
                    "(run make lock)"
                )

    check(runtime, lock, "lock.txt")
    check(runtime + dev, dev_lock, "dev-lock.txt")
    check(build, build_lock, "build-lock.txt")
    for package, (version, _) in lock.items():
        other = dev_lock.get(package)
        if other is None or other[0] != version:
            problems.append(
                f"dev-lock.txt: {package} is {other[0] if other else 'missing'}, "
                f"lock.txt has {version} (run make lock)"
            )
    for name, pins in (("lock.txt", lock), ("dev-lock.txt", dev_lock),
                       ("build-lock.txt", build_lock)):
        for package, (version, hashes) in pins.items():
            if hashes == 0:
                problems.append(f"{name}: {package}=={version} has no hash")

    floors = read_pins(ROOT / "requirements/floors.txt")
    for requirement in runtime:
        declared = floor(requirement)
        pinned = floors.get(canonicalize_name(requirement.name))
        if declared is None:
            problems.append(f"pyproject.toml: {requirement} declares no lower bound")
        elif pinned is None or Version(pinned[0]) != Version(declared):
            problems.append(
                f"floors.txt: {requirement.name} is {pinned[0] if pinned else 'missing'}, "
                f"pyproject.toml's floor is {declared}"
            )

    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(
            f"lockfiles match pyproject.toml: {len(lock)} runtime pins, "
            f"{len(dev_lock)} with dev, {len(floors)} floors"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
