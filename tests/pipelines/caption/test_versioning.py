"""Caption version hashing: content settings fork the version, execution settings do not."""

from __future__ import annotations

from pyratok.pipelines.caption.config import CaptionConfig
from pyratok.pipelines.caption.versioning import default_version_name, prompt_hash, version_id


def cfg(**over) -> CaptionConfig:
    data = {"model": "s3://models/Qwen2.5-VL-7B-Instruct"}
    for key, value in over.items():
        node = data
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return CaptionConfig.model_validate(data)


def test_same_settings_same_version():
    assert version_id(cfg()) == version_id(cfg())
    assert len(version_id(cfg())) == 16


def test_prompt_change_gives_a_new_version():
    base = version_id(cfg())
    assert version_id(cfg(prompt__text="Describe the camera motion only.")) != base
    assert version_id(cfg(prompt__template="structured")) != base
    assert version_id(cfg(prompt__system="You are a film critic.")) != base
    assert prompt_hash(cfg(prompt__text="Describe the camera motion only.")) != prompt_hash(cfg())


def test_model_sampling_frames_and_postprocess_fork_the_version():
    base = version_id(cfg())
    changed = [
        cfg(model="s3://models/Qwen2.5-VL-3B-Instruct"),
        cfg(model_id="Qwen/Qwen2.5-VL-7B-Instruct"),
        cfg(sampling__max_new_tokens=128),
        cfg(sampling__do_sample=True),
        cfg(frames__fps=1.0),
        cfg(frames__max_pixels=224 * 224),
        cfg(postprocess__min_words=8),
    ]
    ids = {version_id(c) for c in changed}
    assert base not in ids and len(ids) == len(changed)


def test_execution_settings_do_not_fork_the_version():
    base = version_id(cfg())
    same = [
        cfg(batch_size=32), cfg(backend="vllm"), cfg(concurrency=[1, 4]), cfg(num_gpus_per_actor=1),
        cfg(dtype="float16"), cfg(version_name="nice name"), cfg(samples_to_log=0),
        cfg(sampling__temperature=0.2),  # greedy decoding ignores temperature
    ]  # fmt: skip
    assert {version_id(c) for c in same} == {base}
    assert version_id(cfg(sampling__do_sample=True, sampling__temperature=0.2)) != version_id(
        cfg(sampling__do_sample=True, sampling__temperature=0.9)
    )


def test_local_model_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert version_id(cfg(model="models/qwen")) == version_id(cfg(model=str(tmp_path / "models" / "qwen")))


def test_default_name_is_model_and_template():
    assert default_version_name(cfg()) == "Qwen2.5-VL-7B-Instruct/detailed"
    assert default_version_name(cfg(version_name="v2-dense")) == "v2-dense"
