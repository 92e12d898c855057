"""What code and environment produced a result: tagged on every MLflow run, printed by ``pyratok --version``."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout of an editable install (a wheel install has no ``.git`` there)."""
LOCKFILE = "requirements.lock"


def installed_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool] | None:
    """(full commit, whether the work tree has uncommitted changes) of the checkout, or None."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=10, cwd=CHECKOUT)
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit, dirty) if commit else None


@functools.lru_cache(maxsize=1)
def environment_digest() -> str:
    """A digest of every installed distribution and its version (equal environments, equal digests)."""
    names = sorted({f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in md.distributions()})
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def lockfile_digest() -> str | None:
    path = CHECKOUT / LOCKFILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def run_tags() -> dict[str, str]:
    """The provenance tags of an MLflow run."""
    tags = {"pyratok.version": installed_version("pyratok"), "pyratok.env_digest": environment_digest()}
    if (found := git_commit()) is not None:
        tags["pyratok.git_commit"] = found[0]
        tags["pyratok.git_dirty"] = str(found[1]).lower()
    if (lock := lockfile_digest()) is not None:
        tags["pyratok.lock_digest"] = lock
    return tags
