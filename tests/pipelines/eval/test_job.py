"""The eval Ray Data job on real ingested shards: metrics against the model run by hand, the CLI on a
model dir and on an MLflow run id, and the errors a user meets (no val split, a geometry the model cannot take)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from pyratok.config import load
from pyratok.model import PyraTok
from pyratok.pipelines.eval.job import EvalDataError, run_eval
from pyratok.pipelines.eval.metrics import psnr_per_clip
from pyratok.pipelines.eval.worker import EvalGeometryError
from pyratok.pipelines.train.buckets import Geometry
from pyratok.pipelines.train.decode import decode_clip

pytestmark = [pytest.mark.integration]

GEOMETRY = ["eval.frames=5", "eval.height=32", "eval.width=32", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def val_dataset(sample_corpus, ray_local, tmp_path_factory) -> str:
    """The sample corpus ingested with the local preset's 20 % val split: 4 of 15 clips."""
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest
    from pyratok.pipelines.ingest.sample_data import INPUTS_FILE, load_inputs_file

    work = tmp_path_factory.mktemp("eval-ingest")
    cfg = load(overrides=[f"work_dir={work}", "tracking.enabled=false", "ingest.split.val_fraction=0.2"])
    inputs = [InputSpec(**item) for item in load_inputs_file(str(sample_corpus / INPUTS_FILE))]
    return run_ingest(cfg, inputs=inputs, output=str(work / "dataset")).output


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    torch.manual_seed(5)
    model = PyraTok.from_config(load().model)
    out = tmp_path_factory.mktemp("eval-model") / "model"
    model.save_pretrained(str(out))
    return str(out)


def config(work: Path, *extra: str):
    return load(overrides=[f"work_dir={work}", *GEOMETRY, *extra])


def _val_videos(root: str) -> dict[str, bytes]:
    manifest = pd.read_parquet(Path(root) / "manifest.parquet")
    val = set(manifest[manifest["split"] == "val"]["key"])
    out = {}
    for shard in sorted((Path(root) / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if key in val and ext == "mp4":
                    out[key] = tar.extractfile(member).read()
    return out


def test_eval_scores_every_val_clip_as_the_model_does_by_hand(val_dataset, model_dir, tmp_path):
    result = run_eval(config(tmp_path, "eval.untrained_baseline=true"), model=model_dir, data=val_dataset)
    videos = _val_videos(val_dataset)
    assert result.clips == len(videos) == 4 and result.failed == {}
    # PSNR and codebook use of each clip, recomputed here from the model and the clip bytes
    model = PyraTok.from_pretrained(model_dir).eval()
    table = result.table.set_index("key")
    all_ids = []
    for key, data in videos.items():
        clip = torch.from_numpy(decode_clip(data, Geometry(5, 32, 32))).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        caption = table.loc[key, "caption"]
        with torch.no_grad():
            pyramid = model.encode(clip, [caption])
            recon = model.decode(pyramid).clamp(-1, 1)
        mse = (((recon + 1) / 2 - (clip + 1) / 2) ** 2).mean().item()
        assert table.loc[key, "psnr"] == pytest.approx(-10 * torch.log10(torch.tensor(mse)).item(), abs=1e-3)
        all_ids += [level.flatten() for level in pyramid.levels]
        assert table.loc[key, "tokens"] == sum(level.numel() for level in pyramid.levels)
    used = torch.unique(torch.cat(all_ids)).numel()
    assert result.metrics["codebook/all/used"] == used
    assert result.metrics["codebook/all/utilisation"] == pytest.approx(used / 2**model.lapq.code_bits)
    assert result.metrics["psnr"] == pytest.approx(table["psnr"].mean())
    for name in ("vae_psnr", "untrained_psnr", "psnr_gain_db", "retrieval/t2v/R@1", "retrieval/v2t/R@1",
                 "bits_per_pixel", "compression"):
        assert name in result.metrics, name
    assert result.metrics["psnr_gain_db"] == pytest.approx(result.metrics["psnr"] - result.metrics["untrained_psnr"])


def test_a_corrupt_val_clip_is_counted_and_skipped(val_dataset, model_dir, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(val_dataset, root)
    victim = sorted(_val_videos(str(root)))[0]
    for shard in (root / "shards").glob("*.tar"):  # rewrite the shard with that clip's mp4 cut to 300 bytes
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        if not any(m.name == f"{victim}.mp4" for m, _ in members):
            continue
        with tarfile.open(shard, "w") as tar:
            for member, data in members:
                data = data[:300] if member.name == f"{victim}.mp4" else data
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    result = run_eval(config(tmp_path), model=model_dir, data=str(root))
    assert result.clips == 3 and sum(result.failed.values()) == 1
    row = result.table.set_index("key").loc[victim]
    assert row["error"] and victim in row["detail"]


def test_no_val_split_is_a_clear_error(ingested_dataset, model_dir, tmp_path):
    with pytest.raises(EvalDataError, match="no val clips.*val_fraction"):
        run_eval(config(tmp_path), model=model_dir, data=ingested_dataset)


def test_a_geometry_the_model_cannot_take_names_it(val_dataset, model_dir, tmp_path):
    with pytest.raises(EvalGeometryError, match="eval.height=40 is not a multiple of 16"):
        run_eval(config(tmp_path, "eval.height=40", "tracking.enabled=false"), model=model_dir, data=val_dataset)


def test_cli_evaluates_an_mlflow_run_id_and_logs_the_results(val_dataset, model_dir, tmp_path, mlflow_server):
    from pyratok.pipelines.train.checkpoint import MODEL_URI_TAG

    mlflow.set_tracking_uri(mlflow_server)
    experiment = mlflow.set_experiment("eval-test")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:  # a training run that exported the model
        mlflow.set_tag(MODEL_URI_TAG, model_dir)
    sets = [f"work_dir={tmp_path}", f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=eval-test", *GEOMETRY]
    cmd = [sys.executable, "-m", "pyratok.cli.main", "eval", "--model", run.info.run_id, "--data", val_dataset, "--json"]
    for item in sets:
        cmd += ["--set", item]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout[done.stdout.index("{"):])
    assert out["model"] == model_dir and out["clips"] == 4
    logged = mlflow.MlflowClient().get_run(out["mlflow_run_id"])
    assert logged.data.tags["pyratok.eval.model_run"] == run.info.run_id
    assert logged.data.metrics["val/psnr"] == pytest.approx(out["metrics"]["psnr"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(out["mlflow_run_id"], "eval")}
    assert {"eval/clips.json", "eval/config.json", "eval/samples"} <= artifacts
    samples = mlflow.MlflowClient().list_artifacts(out["mlflow_run_id"], "eval/samples")
    assert len(samples) == 2 and all(a.path.endswith(".mp4") for a in samples)


def test_eval_of_a_registered_version_loads_it_from_mlflow_and_tags_its_metrics(val_dataset, model_dir, tmp_path,
                                                                                 mlflow_server):
    """A version registered from a run with no training checkpoint behind it (only MLflow has the files): the
    eval actors download it from the tracking server, and the registry shows the version's scores."""
    from pyratok.core.registry import register_tokenizer

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment("eval-registry-test")
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, model_dir, "model")
    client.set_terminated(run.info.run_id)
    name = f"eval-reg-{tmp_path.name}"[:60]
    version = register_tokenizer(name, run.info.run_id, alias="candidate")
    cfg = config(tmp_path, f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=eval-registry-test",
                 f"tracking.registered_model={name}")
    got = run_eval(cfg, model=f"models:/{name}@candidate", data=val_dataset)
    direct = run_eval(config(tmp_path / "direct", "tracking.enabled=false"), model=model_dir, data=val_dataset)
    assert got.model == f"models:/{name}/{version.version}" and got.clips == 4
    assert got.metrics["psnr"] == pytest.approx(direct.metrics["psnr"], rel=1e-6)
    tags = client.get_model_version(name, version.version).tags
    assert float(tags["eval.psnr"]) == pytest.approx(got.metrics["psnr"], rel=1e-5)
    assert float(tags["eval.ssim"]) == pytest.approx(got.metrics["ssim"], rel=1e-5)
