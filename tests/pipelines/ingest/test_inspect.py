"""The probe stage's UDF: file-level work once per source file, per-row outcomes unchanged."""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from pyratok.core.storage import Storage
from pyratok.pipelines.ingest import inspect as inspect_module
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.config import IngestConfig
from pyratok.pipelines.ingest.inspect import ACCEPTED, Inspector
from pyratok.pipelines.ingest.sample_data import VideoSpec, _encode


def test_windows_of_one_source_share_one_probe_and_hash(tmp_path, monkeypatch):
    _encode(VideoSpec("long.mp4", 1280, 720, seconds=8.0, gop=12), tmp_path)
    _encode(VideoSpec("other.mp4", 1280, 720, seconds=3.0, gop=12), tmp_path)
    long, other = str(tmp_path / "long.mp4"), str(tmp_path / "other.mp4")
    rows = pd.DataFrame([
        {"video": long, "window_start": 0.0, "window_end": 2.5},
        {"video": long, "window_start": 4.0, "window_end": 6.5},
        {"video": str(tmp_path / "gone.mp4"), "window_start": -1.0, "window_end": -1.0},
        {"video": other, "window_start": -1.0, "window_end": -1.0},
        {"video": long, "window_start": 2.0, "window_end": 4.5},
    ])  # fmt: skip
    probed: list[str] = []
    real_probe = inspect_module.probe

    def counting_probe(target, **kwargs):
        probed.append(target)
        return real_probe(target, **kwargs)

    monkeypatch.setattr(inspect_module, "probe", counting_probe)
    inspector = Inspector(Storage(), IngestConfig())
    out = inspector(rows)

    assert sorted(probed) == sorted([long, other])  # one probe per existing file, not per row
    assert list(out["status"]) == [ACCEPTED, ACCEPTED, "rejected", ACCEPTED, ACCEPTED]
    assert out.loc[2, "reason"] == reasons.MISSING_FILE
    expected_sha = {path: hashlib.sha256(open(path, "rb").read()).hexdigest() for path in (long, other)}
    assert list(out["sha256"]) == [expected_sha[long]] * 2 + [""] + [expected_sha[other], expected_sha[long]]
    # each window keeps its own plan: the same as inspecting that row alone
    alone = [inspector.inspect(row) for row in rows.to_dict(orient="records")]
    assert list(out["plan"]) == [a["plan"] for a in alone]
    long_starts = [json.loads(out.loc[i, "plan"])["clip_start_s"] for i in (0, 1, 4)]
    assert len(set(long_starts)) == 3
