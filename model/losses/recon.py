"""Pixel reconstruction terms on videos in [-1, 1]: L1 and 1 - SSIM (per frame, Gaussian window)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    return video.transpose(1, 2).flatten(0, 1)


def l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon.float() - target.float()).abs().mean()


def gaussian_window(size: int, sigma: float, device=None) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_window(height: int, width: int, window: int = 11) -> int:
    """The (odd) Gaussian window side used on frames of this size."""
    size = min(window, height, width)
    return size - (1 - size % 2)


def ssim_map(images_a: torch.Tensor, images_b: torch.Tensor, *, size: int, sigma: float = 1.5) -> torch.Tensor:
    """Per-position SSIM (N, C, H-size+1, W-size+1) of images in [-1, 1] (on [0, 1], valid Gaussian window)."""
    a = (images_a.float() + 1) / 2
    b = (images_b.float() + 1) / 2
    g = gaussian_window(size, sigma, a.device)
    channels = a.shape[1]
    kernel_h = g.view(1, 1, size, 1).repeat(channels, 1, 1, 1)
    kernel_w = g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_h, groups=channels), kernel_w, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(images_a: torch.Tensor, images_b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of (N, C, H, W) images in [-1, 1] (computed on [0, 1], valid-window Gaussian, per channel)."""
    size = ssim_window(images_a.shape[-2], images_a.shape[-1], window)
    return ssim_map(images_a, images_b, size=size, sigma=sigma).mean()


def ssim_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM over all frames of (B, 3, T, H, W) videos."""
    return 1 - ssim(frames_of(recon), frames_of(target))


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of videos in [-1, 1] measured on [0, 1]."""
    mse = ((recon.float() - target.float()) / 2).pow(2).mean()
    return -10 * torch.log10(mse.clamp_min(1e-10))


class ClipScores:
    """PSNR and SSIM of a reconstruction accumulated frame by frame (rows in bands), equal to the whole-clip values."""

    def __init__(self, height: int, width: int, *, band: int = 128):
        self.size = ssim_window(height, width)
        self.height, self.width, self.band = height, width, band
        self.sq = 0.0
        self.ssim_sum = 0.0
        self.pixels = 0
        self.positions = 0

    def add(self, recon: torch.Tensor, target: torch.Tensor) -> None:
        """One frame of each, (3, H, W) in [-1, 1]."""
        self.sq += float(((recon.float() - target.float()) / 2).pow(2).sum())
        self.pixels += recon.numel()
        rows = self.height - self.size + 1
        for y in range(0, rows, self.band):
            y1 = min(rows, y + self.band) + self.size - 1
            score = ssim_map(recon[None, :, y:y1], target[None, :, y:y1], size=self.size)
            self.ssim_sum += float(score.sum())
            self.positions += score.numel()

    @property
    def psnr(self) -> float:
        return float(-10 * torch.log10(torch.tensor(max(self.sq / self.pixels, 1e-10))))

    @property
    def ssim(self) -> float:
        return self.ssim_sum / self.positions
