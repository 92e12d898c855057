"""The top-level CLI: ``pyratok --version``."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_version_names_pyratok_its_commit_and_the_libraries():
    out = subprocess.run([sys.executable, "-m", "pyratok.cli.main", "--version"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"pyratok {md.version('pyratok')}")
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO).stdout.strip()
        assert f"(git {head[:7]}{', modified' if dirty else ''})" in lines[0]
    assert f"  torch {md.version('torch')}" in lines and f"  ray {md.version('ray')}" in lines


def test_verbose_turns_on_debug_logging_and_the_libraries_output():
    """``pyratok -v`` = PYRATOK_LOG_LEVEL=DEBUG, which library noise (pyratok.core.logging.verbose) follows."""
    script = ("import os; from typer.testing import CliRunner; from pyratok.cli.main import app; "
              "from pyratok.core.logging import verbose; "
              "r = CliRunner().invoke(app, ['-v', 'config']); "
              "print(r.exit_code, os.environ.get('PYRATOK_LOG_LEVEL'), verbose())")  # fmt: skip
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYRATOK_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.stdout.split()[-3:] == ["0", "DEBUG", "True"], out.stdout + out.stderr
