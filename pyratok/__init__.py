"""PyraTok: a distributed pipeline for ingesting, captioning and training a video tokenizer."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a plain source tree (a Ray Jobs working_dir, a checkout on PYTHONPATH) the
# repo's top-level pipelines/ and model/ folders are this package's subpackages,
# as the installed distribution maps them (setup.py). Installed copies have them
# inside pyratok/ already, so this only ever adds the checkout root.
_checkout_root = _Path(__file__).resolve().parent.parent
if (_checkout_root / "pipelines" / "__init__.py").is_file() and (_checkout_root / "setup.py").is_file():
    __path__.append(str(_checkout_root))  # noqa: F821 - __path__ is the package's own search path
