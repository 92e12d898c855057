"""PyraTok: language-aligned pyramidal video tokenizer on the Wan VAE (see DESIGN.md section 4).

Import path ``pyratok.model``. Heavy submodules load on first use, so
``import pyratok.model`` (and the config) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyratok.model.config import ModelConfig

if TYPE_CHECKING:
    from pyratok.model.pyramid import TokenPyramid
    from pyratok.model.tokenizer import PyraTok, PyraTokOutput

__all__ = ["ModelConfig", "PyraTok", "PyraTokOutput", "TokenPyramid"]


def __getattr__(name: str):
    if name in ("PyraTok", "PyraTokOutput"):
        from pyratok.model import tokenizer

        return getattr(tokenizer, name)
    if name == "TokenPyramid":
        from pyratok.model.pyramid import TokenPyramid

        return TokenPyramid
    raise AttributeError(f"module 'pyratok.model' has no attribute {name!r}")
