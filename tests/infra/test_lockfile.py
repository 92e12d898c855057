"""requirements.lock is what this environment runs, and it satisfies every range pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[_norm(name)] = version
    return pins


def test_every_declared_range_admits_its_locked_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(spec)
        assert _norm(req.name) in pins, f"{req.name} is a dependency but not in requirements.lock"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), f"{spec} excludes the locked {pins[_norm(req.name)]}"
    runtime = [Requirement(s) for s in project["dependencies"]]
    assert all(any(s.operator == "<" for s in r.specifier) for r in runtime), "every runtime dependency has an upper bound"


def test_the_installed_environment_is_the_lock():
    drift = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install (e.g. the cluster's)
        if Version(installed).public != Version(version).public:  # torch's +cpu/+cu128 build tag aside
            drift[name] = (version, installed)
    assert not drift, f"installed versions differ from requirements.lock (locked, installed): {drift}"
