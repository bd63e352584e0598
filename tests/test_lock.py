"""The lock check of `make test` (scripts/check_lock.py): the committed lock agrees with pyproject.toml, and drift is named."""
import importlib.util
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)

LOCK = """\
accelerate==1.15.0
    # via
    #   multimeditron (pyproject.toml)
    #   peft
peft==0.21.0
    # via multimeditron (pyproject.toml)
torch==2.13.0+cpu
    # via
    #   accelerate
    #   multimeditron (pyproject.toml)
wheel==0.48.0
    # via multimeditron (pyproject.toml::build-system.requires)
"""
PYPROJECT = """\
[build-system]
requires = ["wheel"]
[project]
dependencies = [{deps}]
[project.optional-dependencies]
dev = []
eval = []
"""


def _problems(tmp_path: Path, deps: str) -> list[str]:
    (tmp_path / "requirements-cpu.lock").write_text(LOCK)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(deps=deps))
    pins, direct, build = check_lock.read_lock(tmp_path / "requirements-cpu.lock")
    return check_lock.compare_with_pyproject(pins, direct, build,
                                             *check_lock.pyproject_requirements(tmp_path / "pyproject.toml"))


def test_the_committed_lock_agrees_with_pyproject():
    pins, direct, build = check_lock.read_lock(ROOT / "requirements-cpu.lock")
    assert check_lock.compare_with_pyproject(pins, direct, build,
                                             *check_lock.pyproject_requirements(ROOT / "pyproject.toml")) == []
    assert "torch" in direct and pins["torch"].local == "cpu"   # the CPU build, not the registry's CUDA one


def test_matching_files_pass(tmp_path):
    assert _problems(tmp_path, '"accelerate>=1.0", "peft", "torch>=2.4"') == []


def test_a_dependency_added_to_pyproject_only_is_named(tmp_path):
    problems = _problems(tmp_path, '"accelerate>=1.0", "peft", "torch>=2.4", "scikit-learn>=1.3"')
    assert problems == ["pyproject.toml lists the dependency `scikit-learn>=1.3`, the lock has no `scikit-learn`"]


def test_a_dependency_removed_from_pyproject_is_named(tmp_path):
    problems = _problems(tmp_path, '"accelerate>=1.0", "torch>=2.4"')
    assert problems == ["the lock pins peft as a dependency of pyproject.toml, which no longer lists it"]


def test_a_bound_the_lock_breaks_is_named(tmp_path):
    problems = _problems(tmp_path, '"accelerate>=2.0", "peft", "torch>=2.4"')
    assert problems == ["pyproject.toml asks `accelerate>=2.0`, the lock pins accelerate==1.15.0"]


def test_environment_drift_is_listed():
    pins = {"torch": Version("2.13.0+cpu"), "peft": Version("0.21.0"), "wheel": Version("0.48.0")}
    installed = {"torch": Version("2.13.0+cpu"), "peft": Version("0.22.0"), "matplotlib": Version("3.11.2")}
    assert check_lock.compare_with_environment(pins, installed) == [
        "wheel: locked 0.48.0, not installed",
        "peft: locked 0.21.0, installed 0.22.0",
        "matplotlib==3.11.2: installed, not in the lock",
    ]
