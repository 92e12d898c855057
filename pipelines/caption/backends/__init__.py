"""Captioner backends behind one interface: ``transformers`` (default) and ``vllm``."""

from __future__ import annotations

from pyratok.core.logging import get_logger
from pyratok.pipelines.caption.backends.base import CaptionBackend, Generation, VideoClip

log = get_logger(__name__)

BACKENDS = ("transformers", "vllm")


def backend_class(name: str) -> type[CaptionBackend]:
    if name == "transformers":
        from pyratok.pipelines.caption.backends.hf import TransformersBackend

        return TransformersBackend
    if name == "vllm":
        from pyratok.pipelines.caption.backends.vllm import VllmBackend

        return VllmBackend
    raise ValueError(f"unknown caption backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")


def _gpu_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA means no GPU
        return False


def resolve_backend(requested: str, *, num_gpus_per_actor: float = 0.0) -> str:
    """The backend a job will use: ``auto`` picks vllm when importable and GPUs are in play; an
    explicitly requested backend must be importable (clear error otherwise)."""
    if requested == "auto":
        from pyratok.pipelines.caption.backends.vllm import VllmBackend

        on_gpus = num_gpus_per_actor > 0 or _gpu_visible()
        if on_gpus and VllmBackend.available():
            return "vllm"
        if on_gpus:  # works, but several times slower than it could: say so once, with the fix
            log.warning("caption backend auto: vllm is not installed, so the GPU caption actors run the transformers "
                        "backend; pip install 'pyratok[vllm]' (or set caption.backend=transformers to silence this)")
        return "transformers"
    cls = backend_class(requested)
    if not cls.available():
        raise ValueError(
            f"caption backend {requested!r} is not installed here (pip install 'pyratok[vllm]' on the GPU image), "
            "or use --backend transformers"
        )
    return requested


__all__ = ["BACKENDS", "CaptionBackend", "Generation", "VideoClip", "backend_class", "resolve_backend"]
