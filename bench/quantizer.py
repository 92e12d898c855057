"""LaPQ's lookup-free binary quantizer vs vector_quantize_pytorch.LFQ at 2^16 codes, same inputs, one run.

    .venv/bin/python bench/quantizer.py [--tokens 1024,4096,16384,65536] [--repeats 20] [--budget-s 60] [--threads 2]
    .venv/bin/python bench/quantizer.py --device cuda          # a GPU box (peak = torch.cuda.max_memory_allocated)

Both sides quantize the same (tokens, 16) input and do the same training work per step, forward
and backward to the input: GroupNorm (no affine) -> sign with a straight-through gradient -> token
ids; aux loss = 0.1 x (mean per-token entropy - codebook entropy) + 0.25 x commitment
||z - sg(b)||^2, over the posterior softmax_c(-tau ||z - c||^2) with tau = 1 (per-bit logits 4z on
both sides); plus a fixed linear read-out of the quantized vector so the straight-through path
carries a gradient.

* pyratok: ``model/lfq.py`` (``BinaryQuantizer``, ``entropy_aux``, ``commitment``): per-token
  entropy per bit (exact), codebook entropy exact over all 65,536 codes (the batch average as one
  256 x 256 matrix, Q_A^T Q_B / N, from two tokens x 256 halves): the same quantity as the library's;
* library: ``vector_quantize_pytorch.LFQ(codebook_size=65536)``: softmax over all 65,536 codes,
  i.e. several (tokens x 65,536) fp32 tensors per step.

Each (side, size) runs in a fresh subprocess: inputs and module are built, one step on 64 tokens
pays the one-time lazy initialisation, the peak-RSS mark is reset (``/proc/self/clear_refs``), then
warm-up + timed steps (up to ``--repeats``, fewer once ``--budget-s`` is spent; the best counts).
Peak memory = VmHWM - RSS at the reset (on CUDA: max_memory_allocated - allocated at the reset).
A library size whose predicted peak (bytes per token of the largest library size measured so far,
else 7 x 65,536 x 4 B) exceeds ``--memory-fraction`` of the available memory is skipped with the
reason printed; its figures are then extrapolated linearly (the library's work is exactly
proportional to tokens x 65,536) and marked as such.

Targets at 16K tokens: >= 50x faster, >= 10x less peak memory; pyratok linear in tokens.
Writes ``bench/results/quantizer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

CODE_BITS = 16
CODES = 2**CODE_BITS
ENTROPY_WEIGHT = 0.1
COMMIT_WEIGHT = 0.25
LIBRARY_TENSORS_GUESS = 7  # (tokens x 65,536) fp32 tensors alive at the library's peak (measured: ~7.0)
SIDES = ("pyratok", "library")
MiB = 2**20


# -- worker: one side at one size, in its own process ---------------------------------------------
def _proc_status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+) kB", fh.read()).group(1)) * 1024


class PeakMeter:
    """Peak memory above the moment of ``reset`` (CPU: resident set high-water mark; CUDA: allocator peak)."""

    def __init__(self, device: str):
        self.device = device

    def reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        # Writing 5 resets VmHWM to the current RSS, so import/input-creation transients do not hide ours.
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        self.base = _proc_status("VmRSS")

    def peak(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _proc_status("VmHWM") - self.base


def make_step(side: str, x, readout):
    """One forward + backward of ``side`` on ``x`` -> (per-token entropy, codebook entropy, commitment)."""
    import torch.nn.functional as F

    if side == "pyratok":
        from pyratok.model.lfq import BinaryQuantizer, commitment, entropy_aux

        quantizer = BinaryQuantizer(code_bits=CODE_BITS, norm_groups=1, inv_temperature=1.0)

        def step():
            q = quantizer(x)  # GroupNorm inside, as in LaPQ
            aux, token_h, book_h = entropy_aux(q, gamma=1.0, exact=True)
            commit = commitment(q)
            loss = ENTROPY_WEIGHT * aux + COMMIT_WEIGHT * commit + (q.bits * readout).mean()
            loss.backward()
            _ = q.ids
            return token_h, book_h, commit

        return step

    from vector_quantize_pytorch import LFQ

    lfq = LFQ(dim=CODE_BITS, codebook_size=CODES, entropy_loss_weight=ENTROPY_WEIGHT,
              commitment_loss_weight=COMMIT_WEIGHT, diversity_gamma=1.0).to(x.device).train()

    def step():
        z = F.group_norm(x, 1, eps=1e-5)  # the same normalisation pyratok's quantizer applies
        # inv_temperature=1: softmax(2 <z, c>) over codes = per-bit logits 4z, pyratok's tau = 1.
        (quantized, _ids, aux), parts = lfq(z[None], inv_temperature=1.0, return_loss_breakdown=True)
        loss = aux + (quantized[0] * readout).mean()
        loss.backward()
        return parts.per_sample_entropy, parts.batch_entropy, parts.commitment

    return step


def worker(side: str, tokens: int, *, device: str, threads: int, warmup: int, repeats: int, budget_s: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)  # same inputs on both sides
    x = torch.randn(tokens, CODE_BITS, generator=generator).to(device).requires_grad_()
    readout = torch.randn(tokens, CODE_BITS, generator=generator).to(device)
    step = make_step(side, x, readout)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # One step on 64 tokens first: thread pools, kernels and autograd's lazy state are one-time costs,
    # not the quantizer's memory; the meter is reset after it.
    make_step(side, x[:64].detach().requires_grad_(), readout[:64])()
    sync()

    meter = PeakMeter(device)
    meter.reset()
    times = []
    started = time.perf_counter()
    for i in range(warmup + repeats):
        x.grad = None
        sync()
        t0 = time.perf_counter()
        token_h, book_h, commit = step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            if len(times) >= 3 and time.perf_counter() - started > budget_s:
                break  # slow side on a busy box: fewer repeats, same work
    return {
        "side": side, "tokens": tokens, "times_s": times, "best_s": min(times),
        "median_s": statistics.median(times), "peak_bytes": meter.peak(),
        "token_entropy": float(token_h), "codebook_entropy": float(book_h), "commitment": float(commit),
    }


# -- driver -----------------------------------------------------------------------------------------
def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as fh:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", fh.read()).group(1)) * 1024


def run_worker(args, side: str, tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--tokens", str(tokens), "--device", args.device,
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
           "--budget-s", str(args.budget_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{side} at {tokens} tokens failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return f"{model.group(1) if model else platform.processor()} ({os.cpu_count()} cores)"


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / MiB:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1024,4096,16384,65536", help="comma-separated token counts")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed steps at most (the best counts: a shared box is noisy)")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="stop repeating (after >= 3 timed steps) once a measurement has run this long")
    parser.add_argument("--memory-fraction", type=float, default=0.5,
                        help="skip a library size whose predicted peak exceeds this fraction of available memory")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(v) for v in args.tokens.split(",")]

    if args.worker:
        result = worker(args.worker, sizes[0], device=args.device, threads=args.threads, warmup=args.warmup,
                        repeats=args.repeats, budget_s=args.budget_s)
        print("RESULT " + json.dumps(result), flush=True)
        return

    print(f"device: {device_name(args.device)}; threads {args.threads}; codes {CODES:,}; dim {CODE_BITS}")
    rows = []
    library_bytes_per_token = LIBRARY_TENSORS_GUESS * CODES * 4  # refined by each measured library size
    library_last = None
    for tokens in sizes:
        ours = run_worker(args, "pyratok", tokens)
        predicted = library_bytes_per_token * tokens
        free = available_bytes(args.device)
        lib, skipped = None, None
        if predicted > args.memory_fraction * free:
            skipped = (f"library at {tokens:,} tokens skipped: predicted peak {predicted / 2**30:.1f} GiB "
                       f"(each tokens x 65,536 fp32 tensor is {tokens * CODES * 4 / 2**30:.1f} GiB) > "
                       f"{args.memory_fraction:.0%} of {free / 2**30:.1f} GiB available")
            print(skipped)
        else:
            lib = run_worker(args, "library", tokens)
            library_bytes_per_token = lib["peak_bytes"] / tokens
            library_last = lib
        row = {"tokens": tokens, "pyratok": ours, "library": lib, "library_skipped": skipped}
        if lib is None and library_last is not None:
            # The library's work and memory are proportional to tokens x 65,536: scale its largest measured size.
            scale = tokens / library_last["tokens"]
            row["library_extrapolated"] = {"from_tokens": library_last["tokens"],
                                           "best_s": library_last["best_s"] * scale,
                                           "median_s": library_last["median_s"] * scale,
                                           "peak_bytes": library_last["peak_bytes"] * scale}
        lib_fig = lib or row.get("library_extrapolated")
        if lib_fig:
            row["time_ratio"] = lib_fig["best_s"] / ours["best_s"]
            row["time_ratio_median"] = lib_fig["median_s"] / ours["median_s"]
            row["memory_ratio"] = lib_fig["peak_bytes"] / max(ours["peak_bytes"], 4096)  # >= one page
        rows.append(row)
        ours_s = f"pyratok {ours['best_s'] * 1e3:9.1f} ms {fmt_mib(ours['peak_bytes']):>9} MiB"
        if lib:
            lib_s = f"library {lib['best_s'] * 1e3:9.1f} ms {fmt_mib(lib['peak_bytes']):>9} MiB"
        elif lib_fig:
            lib_s = (f"library ~{lib_fig['best_s'] * 1e3:8.1f} ms ~{fmt_mib(lib_fig['peak_bytes']):>8} MiB "
                     "(extrapolated)")
        else:
            lib_s = "library not measured"
        ratio_s = (f"{row['time_ratio']:.0f}x faster (medians: {row['time_ratio_median']:.0f}x), "
                   f"{row['memory_ratio']:.0f}x less memory") if lib_fig else ""
        print(f"{tokens:>7,} tokens: {ours_s} | {lib_s} | {ratio_s}", flush=True)

    # Same posterior and the same three quantities on both sides (equal work): per-token entropy,
    # commitment and the codebook entropy over all 65,536 codes agree, up to the library's clamping of
    # probabilities at 1e-5 inside its logs.
    first = next((r for r in rows if r["library"]), None)
    if first:
        o, lib = first["pyratok"], first["library"]
        print(f"check at {first['tokens']:,} tokens: per-token entropy {o['token_entropy']:.4f} vs "
              f"{lib['token_entropy']:.4f}; commitment {o['commitment']:.4f} vs {lib['commitment']:.4f}; "
              f"codebook entropy {o['codebook_entropy']:.3f} vs {lib['codebook_entropy']:.3f} "
              "(both over all 65,536 codes; ln 65,536 = 11.090)")
    # Linear growth: per-token time and memory stay flat (up to cache effects and a busy box's noise).
    per_token = ", ".join(f"{r['tokens']:,}: {r['pyratok']['best_s'] / r['tokens'] * 1e6:.1f} us "
                          f"{r['pyratok']['peak_bytes'] / r['tokens'] / 1024:.1f} KiB" for r in rows)
    print(f"pyratok per token (time, peak memory): {per_token}")
    target = next((r for r in rows if r["tokens"] == 16384 and "time_ratio" in r), None)
    if target:
        how = "measured" if target["library"] else "library extrapolated"
        ok = target["time_ratio"] >= 50 and target["memory_ratio"] >= 10
        print(f"target at 16K tokens ({how}): >= 50x faster and >= 10x less peak memory: "
              f"{target['time_ratio']:.0f}x, {target['memory_ratio']:.0f}x -> {'met' if ok else 'NOT met'}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"device": device_name(args.device), "threads": args.threads, "codes": CODES, "rows": rows,
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    (RESULTS / "quantizer.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'quantizer.json'}")


if __name__ == "__main__":
    main()
