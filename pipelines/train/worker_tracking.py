"""Rank 0's MLflow writer: metrics and sample reconstructions into the run the driver created.

Ray Train v2 rejects Tune's MLflow callback, and a run created inside a
worker would be invisible to the driver until training ends; so the driver
opens the run (``pyratok.core.tracking.stage_run``) and passes its id, and
rank 0 logs into it by id through the client API.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyratok.core.logging import get_logger
from pyratok.model.video_io import write_side_by_side

log = get_logger(__name__)


def frame_grid(video: torch.Tensor, recon: torch.Tensor | None, frames: int) -> np.ndarray:
    """Input (top row) and reconstruction (bottom row) of one clip: uint8 (rows*H, frames*W, 3).

    Tensors are (3, T, H, W), float in [-1, 1] or uint8; ``frames`` evenly spaced frames are shown.
    """
    rows = [video] + ([recon] if recon is not None else [])
    length = video.shape[1]
    picks = np.linspace(0, length - 1, num=min(frames, length)).round().astype(int)
    out = []
    for row in rows:
        if row.dtype != torch.uint8:  # the input may come as the loader's uint8 already
            row = row.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
        row = row.cpu()
        if row.shape[1] != length:  # a reconstruction may differ in length; sample it on its own grid
            idx = np.linspace(0, row.shape[1] - 1, num=len(picks)).round().astype(int)
        else:
            idx = picks
        out.append(np.concatenate([row[:, i].permute(1, 2, 0).numpy() for i in idx], axis=1))
    width = max(r.shape[1] for r in out)
    out = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in out]
    return np.concatenate(out, axis=0)


SAMPLES_KEY = "samples"
SAMPLE_FPS = 8.0
"""Playback rate of the sample mp4s (the training clips carry no fps of their own here)."""


class RankZeroTracker:
    """MLflow logging by run id; a no-op when tracking is off."""

    def __init__(self, tracking_uri: str | None, run_id: str | None):
        self.run_id = run_id
        self.client = None
        if tracking_uri and run_id:
            import mlflow

            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(values.items()) if np.isfinite(v)]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def sample(self, video: torch.Tensor, recon: torch.Tensor | None, step: int, frames: int,
               fps: float = SAMPLE_FPS) -> None:
        """A frame grid of the first clip of the batch (input over reconstruction) as the run's ``samples``
        image at ``step`` (the MLflow UI shows them as one series with a step slider), and the clip itself
        as ``samples/step<N>.mp4``, input | reconstruction, to watch it move."""
        if not self.enabled:
            return
        self.client.log_image(self.run_id, frame_grid(video, recon, frames), key=SAMPLES_KEY, step=step)
        if recon is None:
            return
        with tempfile.TemporaryDirectory(prefix="pyratok-sample-") as tmp:
            path = Path(tmp) / f"step{step:07d}.mp4"
            write_side_by_side(path, video, recon, fps)
            self.client.log_artifact(self.run_id, str(path), artifact_path=SAMPLES_KEY)

    def params(self, values: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)) for k, v in values.items() if k not in existing]
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)
