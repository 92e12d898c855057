"""Caption throughput: the batched actor-pool Ray Data job vs a naive one-clip-at-a-time loop, in one run.

    .venv/bin/python bench/caption.py [--clips 96] [--max-new-tokens 48] [--batch-size 16]
    .venv/bin/python bench/caption.py --model qwen2.5-vl-3b --device cuda   # on a GPU box

Both sides caption the same clips (real shards: ``sample-data`` bulk clips ingested by the real
``pyratok ingest`` job, cached under ``bench/results/caption-work``) with the same model and the
same prompt, frame plan, frame sizes and sampling settings:

* naive: what a straightforward script does. One process; for each clip, decode the sampled
  frames at full resolution with PyAV, resize them in torch (bicubic, antialiased) to the model's
  size (qwen-vl-utils' approach), then ``generate`` on that single clip. The model is loaded
  before timing starts.
* job: ``run_caption`` (the real stage): decode tasks that scale frames while decoding, a
  stateful actor pool (one model load per actor) running batched, left-padded ``generate``, and
  per-shard sidecar commits. Its time includes starting the actor and loading the model there
  (Ray itself is started before timing).

Prints clips/s and generated tokens/s of each and the ratio; writes ``bench/results/caption.json``.
Target: job clips/s >= 3x the naive loop on 2 CPU cores with the tiny model.

``--model qwen2.5-vl-3b`` builds a randomly initialised Qwen2.5-VL-3B-sized checkpoint (real 3B
text + vision config, bf16, with the tiny tokenizer) for a GPU run; ``--model DIR`` takes any
checkpoint dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))


def make_dataset(work: Path, clips: int, cores: int) -> str:
    """``clips`` sample-data bulk clips ingested into real shards (cached per clip count)."""
    import csv

    from pyratok.config import load
    from pyratok.core.ray_runtime import RayConfig, init_ray
    from pyratok.pipelines.ingest.config import InputSpec
    from pyratok.pipelines.ingest.job import run_ingest
    from pyratok.pipelines.ingest.sample_data import write_sample_data

    out = work / f"dataset-{clips}"
    if (out / ".bench-complete").exists():
        return str(out)
    corpus = work / f"corpus-{clips}"
    shutil.rmtree(corpus, ignore_errors=True)
    started = time.perf_counter()
    write_sample_data(str(corpus), clips=clips)
    source = corpus / "openvid" / "OpenVid-1M.csv"
    with open(source, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["video"].startswith("ov_bulk_")]
        columns = reader.fieldnames
    table = work / f"bench-openvid-{clips}.csv"
    with open(table, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    init_ray(RayConfig(num_cpus=cores, object_store_memory_mb=1024))
    cfg = load(overrides=[f"work_dir={work / 'pyratok-work'}", "tracking.enabled=false", "ingest.shards.max_samples=16"])
    spec = [InputSpec(source="openvid", metadata=str(table), videos=str(corpus / "openvid" / "videos"))]
    result = run_ingest(cfg, inputs=spec, output=str(out), overwrite=True)
    assert result.accepted == len(rows), (result.accepted, len(rows))
    (out / ".bench-complete").write_text("")
    print(f"ingested {result.accepted} clips into {len(result.shards)} shards in {time.perf_counter() - started:.0f} s")
    return str(out)


def qwen25_vl_3b(out: Path, tiny_tokenizer_from: Path) -> Path:
    """A randomly initialised checkpoint with Qwen2.5-VL-3B-Instruct's sizes (bf16), tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_from)
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
            out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31],
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=[ids("<|im_end|>")], pad_token_id=ids("<|endoftext|>"))
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json"):
        if (tiny_tokenizer_from / name).exists():
            shutil.copyfile(tiny_tokenizer_from / name, out / name)
    del model
    return out


def naive_decode(data: bytes, frames_cfg, spec):
    """Full-resolution decode of the sampled frames, then a torch resize (the common script approach)."""
    import io

    import av
    import numpy as np
    import torch

    from pyratok.pipelines.caption.frames import plan_indices, plan_num_frames
    from pyratok.pipelines.caption.vision import target_size

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        total = int(stream.frames)
        num = plan_num_frames(total, fps, frames_cfg, spec)
        wanted = set(plan_indices(total, num).tolist())
        height, width = stream.codec_context.height, stream.codec_context.width
        full = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream)) if i in wanted]
    h, w = target_size(height, width, num, spec, frames_cfg)
    video = torch.from_numpy(np.stack(full)).permute(0, 3, 1, 2).float()
    video = torch.nn.functional.interpolate(video, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    frames = video.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return frames, len(wanted) / max(total, 1) * fps


def run_naive(root: str, model_dir: Path, cfg) -> dict:
    import webdataset as wds

    from pyratok.core.dataset import list_shards
    from pyratok.core.storage import Storage
    from pyratok.pipelines.caption.backends import VideoClip, backend_class
    from pyratok.pipelines.caption.postprocess import Cleaned, Postprocessor

    started = time.perf_counter()
    backend = backend_class("transformers")(model_dir=model_dir, cfg=cfg.caption)
    load_s = time.perf_counter() - started
    post = Postprocessor(cfg.caption.postprocess, cfg.caption.prompt)
    clips = tokens = captioned = 0
    decode_s = generate_s = 0.0
    started = time.perf_counter()
    for sample in wds.WebDataset(list_shards(Storage(), root), shardshuffle=False):
        t0 = time.perf_counter()
        frames, sample_fps = naive_decode(sample["mp4"], cfg.caption.frames, backend.spec)
        t1 = time.perf_counter()
        [gen] = backend.generate([VideoClip(key=sample["__key__"], frames=frames, sample_fps=sample_fps)])
        decode_s += t1 - t0
        generate_s += time.perf_counter() - t1
        clips += 1
        tokens += gen.num_tokens
        captioned += isinstance(post(gen.text), Cleaned)
    wall = time.perf_counter() - started
    return {"clips": clips, "captioned": captioned, "generated_tokens": tokens, "wall_s": wall, "model_load_s": load_s,
            "decode_s": decode_s, "generate_s": generate_s, "clips_per_s": clips / wall, "tokens_per_s": tokens / wall}  # fmt: skip


def run_job(root: str, model_dir: Path, cfg) -> dict:
    from pyratok.core.dataset import captions_dir
    from pyratok.pipelines.caption.job import run_caption

    shutil.rmtree(captions_dir(root), ignore_errors=True)
    result = run_caption(cfg, shards_root=root, model=str(model_dir))
    return {"clips": result.clips, "captioned": result.captioned, "generated_tokens": result.generated_tokens,
            "wall_s": result.wall_s, "clips_per_s": result.clips_per_s, "tokens_per_s": result.tokens_per_s,
            "version": result.version}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cores", type=int, default=2, help="CPUs for the local Ray (the job side).")
    parser.add_argument("--model", default="tiny", help="tiny | qwen2.5-vl-3b | a checkpoint dir")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--work", type=Path, default=RESULTS / "caption-work")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from pyratok.config import load
    from pyratok.core.logging import setup_logging
    from pyratok.core.ray_runtime import RayConfig, init_ray
    from pyratok.pipelines.caption.tiny import init_tiny

    setup_logging("WARNING")
    args.work.mkdir(parents=True, exist_ok=True)
    root = make_dataset(args.work, args.clips, args.cores)
    tiny = args.work / "tiny-qwen2.5-vl"
    if not (tiny / "config.json").exists():
        init_tiny(tiny)
    if args.model == "tiny":
        model_dir = tiny
    elif args.model == "qwen2.5-vl-3b":
        model_dir = qwen25_vl_3b(args.work / "qwen2.5-vl-3b-random", tiny)
    else:
        model_dir = Path(args.model)
    gpu = args.device == "cuda"
    cfg = load(overrides=[
        f"work_dir={args.work / 'pyratok-work'}", "tracking.enabled=false",
        f"caption.batch_size={args.batch_size}", f"caption.sampling.max_new_tokens={args.max_new_tokens}",
        f"caption.num_gpus_per_actor={1 if gpu else 0}", f"caption.decode_concurrency={max(1, args.cores - 1) if not gpu else 'null'}",
        "caption.postprocess.min_words=1",
    ])  # fmt: skip
    # The naive loop may use every core (torch threads, PyAV threads); the job gets the same cores via Ray.
    init_ray(RayConfig(num_cpus=args.cores, object_store_memory_mb=1024))
    print(f"{args.clips} clips, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, model={args.model}, device={args.device}")
    naive = run_naive(root, model_dir, cfg)
    print(f"naive loop : {naive['clips_per_s']:.2f} clips/s, {naive['tokens_per_s']:.1f} tokens/s "
          f"(decode {naive['decode_s']:.1f} s + generate {naive['generate_s']:.1f} s = {naive['wall_s']:.1f} s)")  # fmt: skip
    job = run_job(root, model_dir, cfg)
    print(f"actor pool : {job['clips_per_s']:.2f} clips/s, {job['tokens_per_s']:.1f} tokens/s ({job['wall_s']:.1f} s, actor start included)")
    ratio = {"clips_per_s": job["clips_per_s"] / naive["clips_per_s"], "tokens_per_s": job["tokens_per_s"] / naive["tokens_per_s"]}
    print(f"ratio      : {ratio['clips_per_s']:.2f}x clips/s, {ratio['tokens_per_s']:.2f}x tokens/s (target >= 3x)")
    device = torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else f"{platform.processor() or platform.machine()} CPU"
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device, "naive": naive, "job": job, "ratio": ratio}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "caption.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'caption.json'}")


if __name__ == "__main__":
    main()
