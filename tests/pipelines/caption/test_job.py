"""The caption job end to end: real local Ray Data, shards made by the real ingest job, MLflow, S3 (moto)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyratok.config import load
from pyratok.core.dataset import captions_dir, list_shards, manifest_uri, shard_uri
from pyratok.core.storage import TMP_PREFIX, Storage, StorageConfig
from pyratok.pipelines.caption import job as caption_job
from pyratok.pipelines.caption.job import run_caption
from pyratok.pipelines.caption.sidecars import (
    list_versions,
    load_captions,
    read_failures,
    read_version_record,
    resolve_version,
)

pytestmark = pytest.mark.integration


def make_cfg(work_dir: Path, *overrides: str, tracking_uri: str | None = None):
    sets = [f"work_dir={work_dir}", "caption.samples_to_log=5"]
    sets += [f"tracking.tracking_uri={tracking_uri}"] if tracking_uri else ["tracking.enabled=false"]
    return load("local.yaml", [*sets, *overrides])


def copy_dataset(src: str, dst: Path) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def manifest_keys(storage: Storage, root: str) -> set[str]:
    return set(storage.read_parquet(manifest_uri(root))["key"])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_caption_job_writes_versioned_sidecars_and_tracks_the_run(
    ingested_dataset, ray_local, tiny_model, tmp_path, mlflow_server
):
    import mlflow

    root = copy_dataset(ingested_dataset, tmp_path / "ds")
    storage = Storage()
    shards_before = {p.name: digest(p) for p in Path(root, "shards").glob("*.tar")}
    cfg = make_cfg(tmp_path / "work", "caption.version_name=tiny-test", tracking_uri=mlflow_server)

    result = run_caption(cfg, shards_root=root, model=str(tiny_model))

    keys = manifest_keys(storage, root)
    assert result.shards_total == result.shards_committed == len(list_shards(storage, root))
    assert result.clips == len(keys) and result.captioned + result.failed == result.clips
    assert result.captioned == len(keys)  # the local preset keeps the tiny model's nonsense
    assert result.generated_tokens > 0 and result.clips_per_s > 0 and result.tokens_per_s > 0

    # Sidecars join to the shards by key; the shards themselves are untouched.
    captions = load_captions(storage, root, result.version)
    assert set(captions) == keys and all(c.strip() for c in captions.values())
    assert {p.name: digest(p) for p in Path(root, "shards").glob("*.tar")} == shards_before
    assert resolve_version(storage, root, "tiny-test") == resolve_version(storage, root, result.version[:6]) == result.version
    record = read_version_record(storage, root, result.version)
    assert record["model"] == str(tiny_model) and record["spec"]["prompt"]["template"] == "detailed"
    [listed] = list_versions(storage, root)
    assert (listed["captions"], listed["failures"], listed["shards_done"]) == (len(keys), 0, result.shards_total)

    # One MLflow run: resolved config as params, caption version, counts, throughput, sample captions.
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    assert run.data.tags["pyratok.caption_version"] == result.version
    assert run.data.params["caption.sampling.max_new_tokens"] == "16"
    for metric in ("clips", "captioned", "failed", "clips_per_s", "generated_tokens_per_s"):
        assert metric in run.data.metrics
    assert run.data.metrics["captioned"] == len(keys)
    local = client.download_artifacts(result.run_id, "caption/sample_captions.json", str(tmp_path))
    table = json.loads(Path(local).read_text())  # MLflow's table format (log_table), which its UI renders
    assert table["columns"] == ["shard", "key", "caption"] and len(table["data"]) == 5
    assert all(captions[key] == caption for _, key, caption in table["data"])
    assert "caption/sample_captions.json" in run.data.tags["mlflow.loggedArtifacts"]

    # A rerun with the same settings resumes: nothing left to do.
    again = run_caption(make_cfg(tmp_path / "work", "caption.version_name=tiny-test"), shards_root=root, model=str(tiny_model))
    assert (again.version, again.shards_skipped, again.shards_committed, again.clips) == (result.version, result.shards_total, 0, 0)

    # `pyratok caption list` shows it.
    out = CliRunner().invoke(
        __import__("pyratok.cli.main", fromlist=["app"]).app,
        ["caption", "list", "--shards", root, "-s", f"work_dir={tmp_path / 'work'}"],
    )
    assert out.exit_code == 0, out.output
    assert result.version in out.output and "tiny-test" in out.output


def test_interrupted_run_resumes_without_partial_sidecars(ingested_dataset, ray_local, tiny_model, tmp_path, monkeypatch):
    root = copy_dataset(ingested_dataset, tmp_path / "ds")
    storage = Storage()
    cfg = make_cfg(tmp_path / "work")
    real_commit = caption_job.ShardCommitter.commit

    def commit_then_die(self, shard):
        real_commit(self, shard)
        # The driver dies right after its first commit, mid-way through writing the next sidecar.
        partial = Path(captions_dir(root, self.version)) / f"{TMP_PREFIX}dead-next-shard.parquet"
        partial.write_bytes(b"PAR1 half a parquet file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(caption_job.ShardCommitter, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_caption(cfg, shards_root=root, model=str(tiny_model))
    monkeypatch.setattr(caption_job.ShardCommitter, "commit", real_commit)

    [version] = [v["version"] for v in list_versions(storage, root)]
    [listed] = list_versions(storage, root)
    assert listed["shards_done"] == 1  # the half-written file is invisible to readers
    first = load_captions(storage, root, version)
    assert 0 < len(first) < len(manifest_keys(storage, root))

    resumed = run_caption(cfg, shards_root=root, model=str(tiny_model))
    assert resumed.version == version
    assert resumed.shards_skipped == 1 and resumed.shards_committed == resumed.shards_total - 1
    captions = load_captions(storage, root, version)
    assert set(captions) == manifest_keys(storage, root)
    assert all(captions[k] == v for k, v in first.items())  # committed shards were not redone
    assert not list(Path(captions_dir(root, version)).rglob(f"{TMP_PREFIX}*"))


def rewrite_member(tar_path: Path, key: str, ext: str, data: bytes) -> bytes:
    """Replace one file of one sample inside a shard; returns the original bytes."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    original = b""
    with tarfile.open(tar_path, "w") as out:
        for member, payload in members:
            if member.name == f"{key}.{ext}":
                original, payload = payload, data
                member.size = len(payload)
            out.addfile(member, io.BytesIO(payload))
    return original


@pytest.mark.slow
def test_failure_ledger_and_retry_failed(ingested_dataset, ray_local, tiny_model, tmp_path):
    root = copy_dataset(ingested_dataset, tmp_path / "ds")
    storage = Storage()
    manifest = storage.read_parquet(manifest_uri(root))
    shards = sorted(manifest["shard"].unique())
    bad_key = manifest[manifest["shard"] == shards[0]]["key"].iloc[0]
    good_mp4 = rewrite_member(Path(shard_uri(root, shards[0])), bad_key, "mp4", b"\x00\x00\x00\x18ftypmp42 corrupt" * 64)
    broken_shard = Path(shard_uri(root, shards[1]))
    intact_shard = broken_shard.read_bytes()
    broken_shard.write_bytes(intact_shard[:700])  # a truncated tar: the whole shard is unreadable
    cfg = make_cfg(tmp_path / "work")

    result = run_caption(cfg, shards_root=root, model=str(tiny_model))

    assert result.shards_committed == result.shards_total  # one bad clip, one bad shard: the job goes on
    assert result.failure_reasons == {"undecodable": 1, "shard_unreadable": 1}
    ledger = read_failures(storage, root, result.version)
    rows = {(r.shard, r.key): r for r in ledger.itertuples()}
    assert rows[(shards[0], bad_key)].stage == "decode" and rows[(shards[0], bad_key)].reason == "undecodable"
    assert rows[(shards[1], "*")].reason == "shard_unreadable" and shards[1] in rows[(shards[1], "*")].detail
    captions = load_captions(storage, root, result.version)
    lost = {bad_key} | set(manifest[manifest["shard"] == shards[1]]["key"])
    assert set(captions) == set(manifest["key"]) - lost  # every other clip is captioned

    # The inputs get fixed; --retry-failed reprocesses exactly the ledger, nothing else.
    rewrite_member(Path(shard_uri(root, shards[0])), bad_key, "mp4", good_mp4)
    broken_shard.write_bytes(intact_shard)
    plain = run_caption(cfg, shards_root=root, model=str(tiny_model))
    assert plain.clips == 0  # without --retry-failed, committed shards stay as they are
    retried = run_caption(cfg, shards_root=root, model=str(tiny_model), retry_failed=True)
    assert retried.clips == len(lost) and retried.failed == 0
    assert len(read_failures(storage, root, result.version)) == 0
    after = load_captions(storage, root, result.version)
    assert set(after) == set(manifest["key"])
    assert all(after[k] == v for k, v in captions.items())


def test_caption_job_on_s3(ingested_dataset, ray_local, tiny_model, tmp_path, s3_server, s3_bucket):
    storage = Storage(StorageConfig(endpoint_url=s3_server))
    root = f"{s3_bucket}/datasets/sample"
    storage.upload_dir(ingested_dataset, root)
    model_uri = f"{s3_bucket}/models/tiny-qwen2.5-vl"
    storage.upload_dir(tiny_model, model_uri)
    cfg = make_cfg(tmp_path / "work", f"storage.endpoint_url={s3_server}")

    result = run_caption(cfg, shards_root=f"{root}/shards", model=model_uri)

    assert result.dataset_root == root and result.shards_committed == result.shards_total
    captions = load_captions(storage, root, result.version)
    assert set(captions) == manifest_keys(storage, root)
    assert storage.exists(f"{root}/captions/{result.version}/version.json")
    assert (tmp_path / "work" / "model-cache").is_dir()  # the S3 checkpoint was mirrored for from_pretrained
    [listed] = list_versions(storage, root)
    assert listed["captions"] == len(captions) and listed["model"] == model_uri


def test_cli_errors_are_one_line(tmp_path):
    from pyratok.cli.main import app

    out = CliRunner().invoke(app, ["caption", "--shards", str(tmp_path / "nowhere"), "--model", "tiny", "-s", f"work_dir={tmp_path}"])
    assert out.exit_code == 2
    assert "no WebDataset shards found" in out.output
    out = CliRunner().invoke(app, ["caption", "init-tiny", "--out", str(tmp_path / "tiny")])
    assert out.exit_code == 0, out.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "chat_template.json"} <= {
        p.name for p in (tmp_path / "tiny").iterdir()
    }
