"""The MLflow Model Registry entry of a trained tokenizer.

Each finished training stage registers its exported tokenizer (the run's ``model/``
artifact) as a new version of one registered model, moves the alias ``stage<N>`` to it,
and tags it with its lineage. MLflow reserves the alias ``latest``; its own
``models:/<name>/latest`` is the newest version, i.e. the last stage trained. Eval adds
its metrics to the version it measured, so the registry shows how good each one is.
Load any of them with ``PyraTok.from_pretrained("models:/<name>@stage3")``.
"""

from __future__ import annotations

from typing import Any

from pyratok.core.logging import get_logger

log = get_logger(__name__)

MODEL_ARTIFACT = "model"
MODEL_URI_VERSION_TAG = "pyratok.model_uri"
"""Where the version's files came from (the checkpoint's ``model/``): how eval finds the version it measured."""
EVAL_TAG_PREFIX = "eval."


def register_tokenizer(name: str, run_id: str, *, alias: str, tags: dict[str, Any] | None = None,
                       artifact_path: str = MODEL_ARTIFACT):
    """A new version of ``name`` from ``runs:/<run_id>/<artifact_path>``, with ``alias`` moved to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description="PyraTok video tokenizers, one version per training stage")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
    )
    client.set_registered_model_alias(name, alias, version.version)
    log.info("registered the tokenizer as models:/%s/%s (alias @%s)", name, version.version, alias)
    return version


def version_of(name: str, model_uri: str):
    """The registered version whose files are ``model_uri`` (a ``models:/`` URI or the checkpoint's model folder), or None."""
    import mlflow

    from pyratok.model.sources import pinned_version

    client = mlflow.MlflowClient()
    try:
        if model_uri.startswith("models:/"):
            model, number = pinned_version(model_uri)
            return client.get_model_version(model, number) if model == name else None
        found = client.search_model_versions(
            f"name = '{name}' and tags.`{MODEL_URI_VERSION_TAG}` = '{model_uri}'",
            order_by=["version_number DESC"], max_results=1,
        )
    except Exception:  # noqa: BLE001 - no such registered model: nothing to tag
        return None
    return found[0] if found else None


def tag_eval(name: str, model_uri: str, metrics: dict[str, float]) -> str | None:
    """Eval's headline metrics as tags of the version it measured; returns that version's number."""
    import mlflow

    version = version_of(name, model_uri)
    if version is None:
        return None
    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        client.set_model_version_tag(name, version.version, EVAL_TAG_PREFIX + key.replace("@", "_at_"), f"{value:.6g}")
    return version.version
