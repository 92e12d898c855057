"""A wheel of this repo works outside it: presets and DeepSpeed JSONs come from package data, not the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration]

CHECK = """
import json, pyratok, sys
from pathlib import Path
from pyratok.config import load
from pyratok.pipelines.train.strategy import load_deepspeed_config
site = Path(sys.argv[1]).resolve()
assert Path(pyratok.__file__).resolve().is_relative_to(site), pyratok.__file__
local, stage2, cluster = load("local"), load("stage2"), load("cluster")
ds = load_deepspeed_config(local.train)
print(json.dumps({"stage": stage2.train.stage, "zero": ds["zero_optimization"]["stage"],
                  "cluster_workers": cluster.train.scaling.num_workers, "work_dir": local.work_dir}))
"""


def test_a_wheel_installed_elsewhere_finds_its_presets_from_any_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(dist)], check=True, timeout=300, cwd=tmp_path)
    [wheel] = dist.glob("pyratok-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pyratok/presets/local.yaml", "pyratok/presets/stage3.yaml", "pyratok/deepspeed_configs/zero2-cpu.json",
            "pyratok/model/tokenizer.py", "pyratok/pipelines/train/runner.py"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PYRATOK_CONFIG_DIR", None)
    done = subprocess.run([sys.executable, "-c", CHECK, str(site)], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    got = json.loads(done.stdout.strip().splitlines()[-1])
    from pyratok.config import load

    assert got == {"stage": 2, "zero": 2, "cluster_workers": load("cluster").train.scaling.num_workers,
                   "work_dir": load("local").work_dir}
    version = subprocess.run([sys.executable, "-m", "pyratok.cli.main", "--version"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("pyratok 0.1.0"), version.stderr[-2000:]
