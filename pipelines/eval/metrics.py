"""Per-clip and dataset-level evaluation metrics (torchmetrics where it has them).

Videos are (B, 3, T, H, W) in [-1, 1]; image metrics see them as frames in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _unit(video: torch.Tensor) -> torch.Tensor:
    return ((video.float() + 1) / 2).clamp(0, 1)


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B*T, 3, H, W)."""
    return video.transpose(1, 2).flatten(0, 1)


def psnr_per_clip(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of each clip (one MSE over all its frames), data range [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(_unit(recon), _unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3, 4))


def ssim_per_clip(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean over frames of each frame's SSIM (Gaussian 11-px window, or the largest odd one that fits)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    b, _, t, h, w = target.shape
    kernel = min(11, (min(h, w) - 1) // 2 * 2 + 1)
    per_frame = structural_similarity_index_measure(_frames(_unit(recon)), _frames(_unit(target)), data_range=1.0,
                                                    kernel_size=kernel, reduction="none")
    return per_frame.view(b, t).mean(1)


def lpips_per_clip(lpips, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean LPIPS over frames, with the model's own LPIPS (inputs in [-1, 1])."""
    b, _, t = target.shape[:3]
    return lpips(_frames(recon.float()), _frames(target.float())).view(b, t).mean(1)


def bits_per_pixel(tokens: int, code_bits: int, frames: int, height: int, width: int) -> float:
    """Token bits per pixel of the clip (per frame position, not per colour channel)."""
    return tokens * code_bits / (frames * height * width)


def compression_ratio(tokens: int, code_bits: int, frames: int, height: int, width: int) -> float:
    """Raw 8-bit RGB bits over token bits."""
    return frames * height * width * 3 * 8 / (tokens * code_bits)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D): FID/FVD's formula,
    |mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a S_b)^½), the trace term from the eigenvalues of S_a S_b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[1:] != b.shape[1:] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two (N>=2, D) feature sets of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
    eig = np.linalg.eigvals(s_a @ s_b)
    trace_sqrt = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt)


def retrieval_recall(video: torch.Tensor, text: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Cross-modal retrieval over N pairs (row i of each is one clip and its caption), by cosine similarity.

    ``t2v/R@k``: share of captions whose own clip is among the k most similar clips; ``v2t/R@k`` the
    converse. A tie counts against the true match (its rank is 1 + the number of others scoring >= it).
    """
    sim = F.normalize(video.double(), dim=-1) @ F.normalize(text.double(), dim=-1).T  # (clips, captions)
    n = sim.shape[0]
    diag = sim.diagonal()
    eye = torch.eye(n, dtype=torch.bool)
    v2t_rank = 1 + ((sim >= diag[:, None]) & ~eye).sum(1)  # per clip, over captions
    t2v_rank = 1 + ((sim >= diag[None, :]) & ~eye).sum(0)  # per caption, over clips
    out = {}
    for k in ks:
        out[f"t2v/R@{k}"] = float((t2v_rank <= k).double().mean())
        out[f"v2t/R@{k}"] = float((v2t_rank <= k).double().mean())
    out["t2v/median_rank"] = float(t2v_rank.double().median())
    out["v2t/median_rank"] = float(v2t_rank.double().median())
    return out


def summarize(values: list[float]) -> dict[str, float]:
    """mean / std / min / max of finite values (PSNR of an exact reconstruction is inf: counted apart)."""
    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())}
