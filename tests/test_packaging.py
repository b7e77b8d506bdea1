"""pyproject.toml is the source of truth; environment.yml must describe the same environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*)$")


def _split(requirement: str) -> tuple[str, str]:
    name, _, spec = REQ.match(requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return dict(_split(r) for r in reqs)


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = {}
    for item in env["dependencies"]:
        if isinstance(item, str) and not item.startswith(("python", "pip")):
            name, spec = _split(item)
            deps[CONDA_NAMES.get(name, name)] = spec
        elif isinstance(item, dict):  # packages that only PyPI has, in the pip section
            deps.update(_split(r) for r in item["pip"] if not r.startswith("-"))
    return deps


def test_environment_matches_pyproject() -> None:
    assert _environment() == _pyproject()


def test_every_dependency_has_a_lower_bound() -> None:
    missing = [name for name, spec in _pyproject().items() if ">=" not in spec]
    assert not missing, f"dependencies without a lower bound: {missing}"


def test_environment_installs_the_package_with_its_extras() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert '-e ".[test,book]"' in pip
