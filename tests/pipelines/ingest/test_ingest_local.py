"""The real ingest Ray Data job on the sample corpus, local storage."""

import io
import json
import shutil

import pytest

from pyratok.core import dataset as layout
from pyratok.core.storage import Storage
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.job import run_ingest
from tests.pipelines.ingest.conftest import corpus_inputs, ingest_config, snapshot

pytestmark = pytest.mark.integration


def test_every_input_is_accepted_or_rejected_with_the_expected_reason(ingested_dataset, expected_outcomes):
    storage = Storage()
    manifest = storage.read_parquet(layout.manifest_uri(ingested_dataset))
    rejects = storage.read_parquet(layout.rejects_uri(ingested_dataset))
    got = {(r.input, r.row): "accepted" for r in manifest.itertuples()}
    for r in rejects.itertuples():
        assert (r.input, r.row) not in got, f"row {r.row} of input {r.input} both accepted and rejected"
        got[(r.input, r.row)] = r.reason
    assert got == expected_outcomes
    assert set(rejects["reason"]) <= set(reasons.ALL)
    assert rejects["detail"].str.len().min() > 10  # every reject says what was wrong
    summary = storage.read_json(layout.ingest_summary_uri(ingested_dataset))
    assert summary["invariant_ok"] and summary["inputs"] == len(expected_outcomes) == len(manifest) + len(rejects)
    assert list(manifest.columns[: len(layout.MANIFEST_COLUMNS)]) == list(layout.MANIFEST_COLUMNS)
    assert {"source", "source_id", "path", "reason", "detail"} <= set(rejects.columns)


def test_shards_read_back_with_webdataset_and_every_clip_decodes(ingested_dataset):
    import av
    import webdataset as wds

    storage = Storage()
    manifest = storage.read_parquet(layout.manifest_uri(ingested_dataset)).set_index("key")
    shards = layout.list_shards(storage, ingested_dataset)
    seen = set()
    for sample in wds.WebDataset(shards, shardshuffle=False):
        key = sample["__key__"]
        meta = json.loads(sample["json"])
        row = manifest.loc[key]
        assert "." not in key and meta["key"] == key and key not in seen
        seen.add(key)
        assert sample["txt"].decode("utf-8") == meta["caption"]
        assert (meta["width"], meta["height"], meta["codec"]) == (row.width, row.height, row.codec)
        with av.open(io.BytesIO(sample["mp4"])) as container:
            stream = container.streams.video[0]
            frames = [f for f in container.decode(stream)]
        assert len(frames) == meta["num_frames"] == row.frames, key
        assert (frames[0].width, frames[0].height) == (meta["width"], meta["height"])
        assert meta["duration_s"] >= 1.0 and min(meta["width"], meta["height"]) >= 720
    assert seen == set(manifest.index)


def test_clip_metadata_follows_the_normalized_schema(ingested_dataset):
    import webdataset as wds

    from pyratok.core.dataset import ClipMetadata

    metas = {json.loads(s["json"])["source_id"]: json.loads(s["json"])
             for s in wds.WebDataset(layout.list_shards(Storage(), ingested_dataset), shardshuffle=False)}  # fmt: skip
    for meta in metas.values():
        ClipMetadata.model_validate(meta)
    uv = metas["uvsrcA0001_000"]
    assert uv["source"] == "ultravideo" and len(uv["captions"]) == 10 and uv["scores"]["vtss"] == 0.8
    assert (uv["clip_start_s"], uv["cut"]) == (0.5, "copy") and uv["clip_end_s"] == pytest.approx(2.0)
    assert metas["uvsrcA0001_001"]["cut"] == "reencode" and metas["uvsrcA0001_001"]["num_frames"] == 30
    assert metas["ov_beach_720p.mp4"]["caption_issues"] == ["invalid_utf8"] and "\ufffd" in metas["ov_beach_720p.mp4"]["caption"]
    assert len(metas["ov_forest_portrait.mp4"]["caption"]) == 4000
    assert metas["ov_city_1080p.mp4"]["caption"].startswith('A city street at night, with "neon" signs, rain,\nand')
    assert metas["ov_city_1080p.mp4"]["scores"] == {"aesthetic": 5.2, "motion": 3.4, "temporal_consistency": 0.97}
    assert (metas["dr0000000b2--000120_000168"]["clip_start_s"], metas["dr0000000b2--000120_000168"]["cut"]) == (5.0, "whole")
    assert metas["dr0000000c3--000024_000072"]["height"] == 720  # the 720p file over its 480p twin
    assert {metas["clips/vp9_720p.webm"]["cut"], metas["clips/mpeg4_720p.avi"]["codec"]} == {"remux", "h264"}


def test_stats_beside_each_shard(ingested_dataset):
    storage = Storage()
    for uri in layout.list_shards(storage, ingested_dataset):
        stats = storage.read_json(layout.shard_stats_uri(ingested_dataset, layout.shard_name(uri)))
        assert stats["samples"] == len(stats["clips"]) > 0
        assert stats["tar_bytes"] == storage.size(uri)
        assert stats["duration_s"]["total"] == pytest.approx(sum(c["duration"] for c in stats["clips"]))


def test_rerun_resumes_after_a_crash_between_shard_writes(ingested_dataset, clean_snapshot, sample_corpus, tmp_path):
    """Simulated crash: shards lost, one uncommitted (tar without stats), one torn, temp leftovers, a stale shard."""
    import mlflow

    storage = Storage()
    root = tmp_path / "dataset"
    shutil.copytree(ingested_dataset, root)
    shards = root / "shards"
    names = sorted(p.name[: -len(".tar")] for p in shards.glob("*.tar"))
    (shards / f"{names[0]}.tar").unlink()  # never written
    (shards / f"{names[0]}.stats.json").unlink()
    (shards / f"{names[1]}.stats.json").unlink()  # tar renamed, killed before its stats: not committed
    torn = shards / f"{names[2]}.tar"
    torn.write_bytes(torn.read_bytes()[:1000])  # not what the stats describe
    (shards / f".tmp-1a2b3c4d-{names[3]}.tar").write_bytes(b"half a shard")
    (shards / "openvid-000099.tar").write_bytes(b"stale")  # from a bigger, older input set
    (shards / "openvid-000099.stats.json").write_text("{}")
    (root / "manifest.parquet").unlink()

    cfg = ingest_config(tmp_path / "work", tracking=True)
    result = run_ingest(cfg, inputs=corpus_inputs(sample_corpus), output=str(root))

    assert (result.shards_written, result.shards_skipped, result.shards_deleted) == (3, len(names) - 3, 1)
    assert snapshot(storage, str(root)) == clean_snapshot
    assert not list(shards.glob(".tmp-*"))
    # The MLflow run of the rerun: resolved config, counts, throughput, artifacts.
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["ingest.filters.min_short_side"] == "720"
    assert run.data.params["ingest.inputs"].count("metadata") == 4
    assert run.data.metrics["accepted"] == result.accepted and run.data.metrics["shards_skipped"] == len(names) - 3
    assert run.data.metrics["rejected.missing_file"] == 2 and run.data.metrics["videos_per_s"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "dataset")}
    assert artifacts == {f"dataset/{n}" for n in ("manifest.parquet", "rejects.parquet", "ingest.json", "shard_stats.json")}

    # A second rerun touches nothing; --overwrite rewrites everything to the same bytes.
    again = run_ingest(ingest_config(tmp_path / "work"), inputs=corpus_inputs(sample_corpus), output=str(root))
    assert (again.shards_written, again.shards_skipped) == (0, len(names))
    redone = run_ingest(ingest_config(tmp_path / "work"), inputs=corpus_inputs(sample_corpus), output=str(root), overwrite=True)
    assert redone.shards_written == len(names)
    assert snapshot(storage, str(root)) == clean_snapshot


def test_ffmpeg_hangs_become_rejects_and_the_job_goes_on(sample_corpus, ray_local, tmp_path):
    import os

    from pyratok.pipelines.ingest.config import InputSpec

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("hevc_720p.mp4", "mpeg4_720p.avi"):
        shutil.copy(sample_corpus / "manifest/videos/clips" / name, videos / name)
    os.mkfifo(videos / "stalled.mp4")  # ffprobe blocks on it forever
    (tmp_path / "m.csv").write_text("path,caption\nhevc_720p.mp4,a\nmpeg4_720p.avi,b\nstalled.mp4,c\n")
    cfg = ingest_config(tmp_path / "work", "ingest.execution.probe_timeout_s=3", "ingest.execution.cut_timeout_s=0.05")
    result = run_ingest(cfg, inputs=[InputSpec(source="manifest", metadata=str(tmp_path / "m.csv"), videos=str(videos))],
                        output=str(tmp_path / "out"))  # fmt: skip
    assert result.invariant_ok and result.accepted == 1
    assert result.rejected_by_reason == {reasons.PROBE_TIMEOUT: 1, reasons.CUT_TIMEOUT: 1}
    rejects = Storage().read_parquet(layout.rejects_uri(str(tmp_path / "out"))).set_index("source_id")
    assert "did not finish within 3s" in rejects.loc["stalled.mp4", "detail"]
    assert rejects.loc["mpeg4_720p.avi", "reason"] == reasons.CUT_TIMEOUT


def test_a_storage_failure_in_a_worker_fails_the_job_naming_it(ray_local, tmp_path):
    """Not a bad video but unreachable storage: the job stops with a StorageError (CLI: exit 2)."""
    from pyratok.core.storage import StorageError
    from pyratok.pipelines.ingest.config import InputSpec

    (tmp_path / "m.csv").write_text("path,caption\ns3://not a bucket/clip.mp4,x\n")
    spec = InputSpec(source="manifest", metadata=str(tmp_path / "m.csv"), videos="s3://unused")
    with pytest.raises(StorageError, match=r"1 input\(s\) could not be read; first: s3://not a bucket/clip.mp4"):
        run_ingest(ingest_config(tmp_path / "work", "ingest.allow_paths_outside_root=true"), inputs=[spec],
                   output=str(tmp_path / "out"))


def test_held_out_split_is_recorded_in_json_and_manifest_and_rewrites_only_shards_it_touches(
        ingested_dataset, sample_corpus, tmp_path):
    import hashlib

    import webdataset as wds

    storage = Storage()
    root = tmp_path / "dataset"
    shutil.copytree(ingested_dataset, root)
    before = storage.read_parquet(layout.manifest_uri(str(root)))
    assert set(before["split"]) == {"train"}  # the shared fixture holds nothing out

    fraction = 0.4
    result = run_ingest(ingest_config(tmp_path / "work", f"ingest.split.val_fraction={fraction}"),
                        inputs=corpus_inputs(sample_corpus), output=str(root))
    manifest = storage.read_parquet(layout.manifest_uri(str(root))).set_index("key")

    def by_hand(key: str) -> str:
        return "val" if int(hashlib.sha256(f"split|{key}".encode()).hexdigest()[:16], 16) / 2**64 < fraction else "train"

    assert {k: by_hand(k) for k in manifest.index} == manifest["split"].to_dict()
    assert 0 < (manifest["split"] == "val").sum() < len(manifest)
    seen = {}
    for sample in wds.WebDataset(layout.list_shards(storage, str(root)), shardshuffle=False):
        seen[sample["__key__"]] = json.loads(sample["json"])["split"]
    assert seen == manifest["split"].to_dict()
    # shards holding no val clip kept their digests: not rewritten
    touched = set(manifest.loc[manifest["split"] == "val", "shard"])
    assert (result.shards_written, result.shards_skipped) == (len(touched), manifest["shard"].nunique() - len(touched))
    again = run_ingest(ingest_config(tmp_path / "work", f"ingest.split.val_fraction={fraction}"),
                       inputs=corpus_inputs(sample_corpus), output=str(root))
    assert again.shards_written == 0
