"""Captioner backends: the transformers backend on the tiny checkpoint, backend selection, vLLM settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyratok.pipelines.caption.backends import VideoClip, resolve_backend
from pyratok.pipelines.caption.backends.hf import TransformersBackend
from pyratok.pipelines.caption.backends.vllm import VllmBackend, engine_args, sampling_args
from pyratok.pipelines.caption.config import CaptionConfig
from pyratok.pipelines.caption.models import COMPLETE_MARKER, local_model_dir
from pyratok.pipelines.caption.prompts import VIDEO_PAD


def caption_cfg(**sampling) -> CaptionConfig:
    return CaptionConfig.model_validate({"model": "tiny", "sampling": {"max_new_tokens": 8, **sampling}})


@pytest.fixture(scope="module")
def greedy(tiny_model):
    return TransformersBackend(model_dir=tiny_model, cfg=caption_cfg(do_sample=False, repetition_penalty=1.0))


def clips() -> list[VideoClip]:
    rng = np.random.default_rng(0)
    shapes = [(4, 56, 84), (2, 28, 56), (6, 84, 112)]  # different lengths and sizes in one batch
    return [
        VideoClip(key=f"k{i}", frames=rng.integers(0, 256, size=(*s, 3), dtype=np.uint8), sample_fps=2.0)
        for i, s in enumerate(shapes)
    ]


def test_inputs_are_what_the_qwen_processor_would_build(greedy):
    batch = clips()
    inputs = greedy.build_inputs(batch)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    video_id = greedy.model.config.video_token_id
    for row, clip in enumerate(batch):
        t = -(-clip.frames.shape[0] // 2)
        grid = (t, clip.frames.shape[1] // 14, clip.frames.shape[2] // 14)
        assert tuple(inputs["video_grid_thw"][row].tolist()) == grid
        assert int((ids[row] == video_id).sum()) == grid[0] * grid[1] * grid[2] // 4
    assert inputs["pixel_values_videos"].shape[0] == int(inputs["video_grid_thw"].prod(-1).sum())
    # Left padding: every row ends with the assistant header, padding (mask 0) only at the start.
    assert torch.all(mask[:, -1] == 1)
    for row in mask:
        first = int(row.argmax())
        assert torch.all(row[:first] == 0) and torch.all(row[first:] == 1)
    assert torch.equal(inputs["mm_token_type_ids"], (ids == video_id).int() * 2)
    assert torch.allclose(inputs["second_per_grid_ts"], torch.tensor([1.0, 1.0, 1.0]))  # 2 frames per grid at 2 fps
    assert VIDEO_PAD in greedy.prompt and "<|im_start|>assistant\n" in greedy.prompt


def test_batched_generation_matches_one_at_a_time(greedy):
    batch = clips()
    together = greedy.generate(batch)
    alone = [greedy.generate([clip])[0] for clip in batch]
    assert len(together) == 3
    for a, b in zip(together, alone):
        assert 1 <= a.num_tokens <= 8
        assert a.text == b.text and a.num_tokens == b.num_tokens


def test_sampling_is_seeded_per_batch(tiny_model):
    backend = TransformersBackend(model_dir=tiny_model, cfg=caption_cfg(do_sample=True, temperature=1.0, top_k=0, top_p=1.0))
    batch = clips()
    first, second = backend.generate(batch), backend.generate(batch)
    assert [g.text for g in first] == [g.text for g in second]
    assert backend.dtype == torch.float32 and backend.device == "cpu"


def test_s3_checkpoint_is_mirrored_once_and_loads(tiny_model, s3_storage, s3_bucket, tmp_path):
    uri = f"{s3_bucket}/models/tiny-qwen2.5-vl"
    s3_storage.upload_dir(tiny_model, uri)
    local = local_model_dir(s3_storage, uri, tmp_path / "cache")
    assert (local / "config.json").is_file() and (local / COMPLETE_MARKER).exists()
    assert local_model_dir(s3_storage, uri, tmp_path / "cache") == local  # cached, not downloaded again
    backend = TransformersBackend(model_dir=local, cfg=caption_cfg())
    assert len(backend.generate(clips()[:1])) == 1
    with pytest.raises(FileNotFoundError, match="no config.json"):
        local_model_dir(s3_storage, f"{s3_bucket}/models/missing", tmp_path / "cache")


def test_backend_selection(caplog):
    import logging

    assert resolve_backend("transformers") == "transformers"
    assert not VllmBackend.available()  # this CPU box has no vLLM
    with caplog.at_level(logging.WARNING, logger="pyratok.pipelines.caption.backends"):
        assert resolve_backend("auto") == "transformers"
        assert not caplog.records  # CPU actors: transformers is the right backend, nothing to say
        assert resolve_backend("auto", num_gpus_per_actor=1) == "transformers"
    [warned] = caplog.records
    assert "vllm is not installed" in warned.getMessage() and "pyratok[vllm]" in warned.getMessage()
    with pytest.raises(ValueError, match="'vllm' is not installed"):
        resolve_backend("vllm")
    with pytest.raises(ValueError, match="unknown caption backend"):
        resolve_backend("onnx")


def test_vllm_settings_mirror_the_config(tmp_path):
    cfg = CaptionConfig.model_validate(
        {"model": "s3://m/qwen", "dtype": "auto", "vllm": {"max_model_len": 8192, "engine_kwargs": {"enable_prefix_caching": True}},
         "sampling": {"max_new_tokens": 200, "do_sample": True, "temperature": 0.3, "top_k": 0, "seed": 7}}
    )  # fmt: skip
    args = engine_args(tmp_path, cfg)
    assert args["model"] == str(tmp_path) and args["dtype"] == "bfloat16" and args["max_model_len"] == 8192
    assert args["limit_mm_per_prompt"] == {"image": 0, "video": 1} and args["enable_prefix_caching"] is True
    params = sampling_args(cfg, [2, 5])
    assert params == {"max_tokens": 200, "repetition_penalty": 1.05, "stop_token_ids": [2, 5], "skip_special_tokens": True,
                      "temperature": 0.3, "top_p": 0.9, "top_k": -1, "seed": 7}  # fmt: skip
    greedy = sampling_args(CaptionConfig(), [2])
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy
