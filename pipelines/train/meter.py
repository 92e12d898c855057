"""Training metrics averaged over the ranks: per-term losses, throughput, codebook usage.

Every rank accumulates sums between log points; at a log point all ranks
all-reduce one flat tensor (a collective, so every rank calls ``reduce`` on the
same steps) and rank 0 gets global figures: losses averaged over micro-batches
of all ranks, clips/s and tokens/s summed over ranks.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch


class StepMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, float] = defaultdict(float)
        self.micro = 0
        self.clips = 0
        self.tokens = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add_micro(self, out, clips: int, data_wait: float) -> None:
        self.micro += 1
        self.clips += clips
        self.data_wait += data_wait
        self.sums["loss"] += float(out.loss.detach())
        for name, value in (out.losses or {}).items():
            self.sums[f"loss/{name}"] += float(value.detach() if torch.is_tensor(value) else value)
        for name, value in (getattr(out, "metrics", None) or {}).items():
            self.sums[name] += float(value.detach() if torch.is_tensor(value) else value)
        pyramid = getattr(out, "pyramid", None)
        if pyramid is not None:
            self.tokens += int(pyramid.num_tokens) * clips

    def reduce(self, world_size: int, steps: int) -> dict[str, float]:
        """Collective: global averages and rates since the last call; then reset."""
        import torch.distributed as dist

        names = sorted(self.sums)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        flat = torch.tensor(
            [self.sums[n] for n in names] + [self.micro, self.clips, self.tokens, self.data_wait / elapsed],
            dtype=torch.float64,
            device=self.device,
        )
        if world_size > 1 and dist.is_initialized():
            dist.all_reduce(flat)
        values = flat.tolist()
        micro, clips, tokens, wait = values[len(names) :]
        out = {n: v / max(micro, 1) for n, v in zip(names, values)}
        out["throughput/clips_per_s"] = clips / elapsed
        out["throughput/tokens_per_s"] = tokens / elapsed
        out["throughput/step_time_s"] = elapsed / max(steps, 1)
        out["data/wait_fraction"] = wait / max(world_size, 1)
        self.__init__(self.device)
        return out
