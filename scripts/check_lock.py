"""Check that requirements-cpu.lock matches pyproject.toml, and optionally that an environment matches the lock.

Set-up step run by `make` (never imported by the package). The lock is written by `make lock` (pip-compile); this
check catches a dependency added to, removed from or re-bounded in one file but not the other, and an environment
that drifted from the lock (a package installed by hand, an upgrade), so the tests never run on an unlocked tree.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKED_EXTRAS = ("dev", "eval")          # the extras `make lock` compiles; keep in step with the Makefile
PROJECT = "multimeditron"
# In a venv but never pinned by the lock: the installer itself.
NOT_LOCKED = {"pip"}
FIX = "run `make lock` and commit requirements-cpu.lock"


def read_lock(path: Path) -> tuple[dict[str, Version], set[str], set[str]]:
    """Pins by canonical name, and the names pip-compile says come straight from pyproject (runtime, build)."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    build: set[str] = set()
    current = None
    for line in path.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = Version(pin.group(2))
        elif current and f"{PROJECT} (pyproject.toml::build-system.requires)" in line:
            build.add(current)
        elif current and f"{PROJECT} (pyproject.toml)" in line:
            direct.add(current)
    return pins, direct, build


def pyproject_requirements(path: Path) -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads(path.read_text())
    runtime = list(project["project"]["dependencies"])
    for extra in LOCKED_EXTRAS:
        runtime += project["project"]["optional-dependencies"][extra]
    build = project["build-system"]["requires"]
    return [Requirement(r) for r in runtime], [Requirement(r) for r in build]


def compare_with_pyproject(pins: dict[str, Version], direct: set[str], build: set[str],
                           runtime: list[Requirement], build_reqs: list[Requirement]) -> list[str]:
    problems = []
    for kind, requirements, locked_as in (("dependency", runtime, direct), ("build requirement", build_reqs, build)):
        wanted = {canonicalize_name(r.name) for r in requirements}
        for req in requirements:
            name = canonicalize_name(req.name)
            if name not in pins:
                problems.append(f"pyproject.toml lists the {kind} `{req}`, the lock has no `{req.name}`")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"pyproject.toml asks `{req}`, the lock pins {req.name}=={pins[name]}")
            elif name not in locked_as:
                problems.append(f"pyproject.toml lists the {kind} `{req}`; the lock pins it only as a transitive one")
        for name in sorted(locked_as - wanted):
            problems.append(f"the lock pins {name} as a {kind} of pyproject.toml, which no longer lists it")
    return problems


def installed_versions() -> dict[str, Version]:
    found = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name != PROJECT and name not in NOT_LOCKED:
            found[name] = Version(dist.version)
    return found


def compare_with_environment(pins: dict[str, Version], installed: dict[str, Version]) -> list[str]:
    problems = [f"{name}: locked {pins[name]}, not installed" for name in sorted(pins.keys() - installed.keys())]
    problems += [f"{name}: locked {pins[name]}, installed {installed[name]}"
                 for name in sorted(pins.keys() & installed.keys()) if pins[name] != installed[name]]
    problems += [f"{name}=={installed[name]}: installed, not in the lock" for name in sorted(installed.keys() - pins.keys())]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements-cpu.lock")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--installed", action="store_true",
                        help="also require this Python's environment to hold exactly the locked versions")
    parser.add_argument("--report-installed", action="store_true",
                        help="list how this environment differs from the lock, without failing (make test-latest)")
    args = parser.parse_args(argv)

    pins, direct, build = read_lock(args.lock)
    if args.report_installed:
        differences = compare_with_environment(pins, installed_versions())
        print("\n".join(differences) if differences else "same versions as the lock")
        return 0
    problems = compare_with_pyproject(pins, direct, build, *pyproject_requirements(args.pyproject))
    if problems:
        print(f"error: {args.lock.name} disagrees with pyproject.toml ({FIX}):", file=sys.stderr)
        print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    if args.installed:
        problems = compare_with_environment(pins, installed_versions())
        if problems:
            print(f"error: {sys.prefix} is not the locked environment "
                  "(run `make clean-venv test` to rebuild it from the lock):", file=sys.stderr)
            print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
