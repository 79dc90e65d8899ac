"""Load the scoring model from the MLflow registry, a run, or a local path, with its provenance.

Loading never writes into the artifact store: a registered or run model is copied once into
a local cache (`$KOC_MODEL_CACHE`, default `~/.cache/kocrank/models`, else a temporary
folder) and loaded from there; a model directory or joblib file given as a path is read in
place. So a read-only or full store still serves ranks. Before resolving a `models:/` URI
the store is checked for a promotion interrupted by a killed process (`training.promotion.recover`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.labels import LabelConfig
from features.registry import FEATURE_SET_VERSION

logger = logging.getLogger(__name__)

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")


class IncompatibleModelError(RuntimeError):
    """The model was trained on another feature set than the one this code computes."""


class DamagedModelError(IncompatibleModelError):
    """The model's files cannot be read (truncated, empty or corrupt). A subclass of
    `IncompatibleModelError`, so every caller that reports an unusable model reports this too."""


CACHE_ENV = "KOC_MODEL_CACHE"
_COMPLETE_MARK = ".koc_complete"


class RankingModel(Protocol):
    """What ranking needs from a fitted model (satisfied by `training.model.KocModel`)."""

    feature_names_: list[str]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame: ...


@dataclass(frozen=True)
class ModelInfo:
    """Where the model came from; reported by the sidecar and `GET /model`."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    trained_at: str | None = None
    feature_set_version: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModel:
    model: RankingModel
    info: ModelInfo


def parse_model_uri(uri: str) -> dict[str, str]:
    """Split a `models:/name@alias`, `models:/name/version` or `runs:/id/...` URI into its parts."""
    for pattern in (_ALIAS_URI, _VERSION_URI, _RUN_URI):
        match = pattern.match(uri)
        if match:
            return {key: value for key, value in match.groupdict().items() if value is not None}
    return {}


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri) if tracking_uri else MlflowClient()


def resolve_registered_version(uri: str, tracking_uri: str | None = None) -> tuple[str | None, str | None]:
    """(version, run_id) that a `models:/` URI points to now; (None, None) for other URIs.

    A cheap registry call, used to notice that an alias moved to a new version.
    """
    parts = parse_model_uri(uri)
    if "alias" in parts:
        mv = _client(tracking_uri).get_model_version_by_alias(parts["name"], parts["alias"])
    elif "version" in parts:
        mv = _client(tracking_uri).get_model_version(parts["name"], parts["version"])
    else:
        return None, None
    return str(mv.version), mv.run_id


def _test_metrics(run_id: str | None, tracking_uri: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        metrics = _client(tracking_uri).get_run(run_id).data.metrics
    except Exception as exc:  # the run may live in another store; provenance is best effort
        logger.warning("could not read metrics of run %s: %s", run_id, exc)
        return {}
    # training logs the model's test-cutoff metrics as "model.<metric>" (baselines under their own names)
    return {
        key.removeprefix("model."): float(value) for key, value in sorted(metrics.items()) if key.startswith("model.")
    }


def _unwrap(pyfunc_model: Any) -> RankingModel:
    python_model = pyfunc_model.unwrap_python_model()
    model = getattr(python_model, "model", None)
    if model is None:
        raise TypeError(
            f"the MLflow model is a {type(python_model).__name__}, not a kocrank KocPyfunc; "
            "register models with `koc train`"
        )
    return model


def check_feature_set(model: RankingModel, uri: str) -> None:
    """Refuse a model whose recorded feature set version is not the one `features/` computes now.

    Scoring such a model with today's feature code is training/serving skew: the columns may
    have the same names but different meanings.
    """
    trained_on = getattr(model, "feature_set_version_", None)
    if trained_on != FEATURE_SET_VERSION:
        recorded = f"feature set version {trained_on}" if trained_on else "no feature set version"
        raise IncompatibleModelError(
            f"model {uri} was trained on {recorded}, but this kocrank computes feature set version "
            f"{FEATURE_SET_VERSION}; retrain with `koc train` (and promote the new model) or serve a model "
            f"trained on feature set {FEATURE_SET_VERSION}"
        )


def label_config_warnings(model_label_config: Mapping[str, Any] | None, label_cfg: LabelConfig | None) -> list[str]:
    """Notes when the model's label horizon differs from the configured one (the score then
    estimates a different H than the list and README promise). Empty when they agree or the
    model recorded no label config."""
    if not model_label_config or label_cfg is None:
        return []
    trained = model_label_config.get("horizon_days")
    if trained is None or int(trained) == label_cfg.horizon_days:
        return []
    return [
        f"the model was trained with a {trained}-day label horizon but labels.horizon_days is "
        f"{label_cfg.horizon_days}; its scores estimate the {trained}-day probability "
        "(retrain with the configured horizon, or configure the model's)"
    ]


def _describe(model: RankingModel, info: ModelInfo) -> ModelInfo:
    trained_at = getattr(model, "trained_at_", None)
    return ModelInfo(
        uri=info.uri,
        name=info.name,
        version=info.version,
        alias=info.alias,
        run_id=info.run_id,
        trained_at=None if trained_at is None else str(trained_at),
        feature_set_version=getattr(model, "feature_set_version_", None),
        test_metrics=info.test_metrics,
    )


def load_model(uri: str, tracking_uri: str | None = None, label_cfg: LabelConfig | None = None) -> LoadedModel:
    """Load a KocModel from `models:/name@alias`, `models:/name/version`, `runs:/...`,
    an MLflow model directory, or a joblib file (`.joblib`/`.pkl`).

    Raises `IncompatibleModelError` when the model's feature set version is not the current
    one; logs a warning when its label horizon differs from `label_cfg`.
    """
    path = Path(uri)
    if path.suffix in (".joblib", ".pkl") and path.is_file():
        import joblib

        model = joblib.load(path)
        loaded = LoadedModel(model, _describe(model, ModelInfo(uri=uri, name=path.stem)))
    elif tracking_uri:
        from training.store import tracking_context

        with tracking_context(tracking_uri):
            loaded = _load_mlflow_model(uri, path, tracking_uri)
    else:
        loaded = _load_mlflow_model(uri, path, None)
    check_feature_set(loaded.model, uri)
    for note in label_config_warnings(getattr(loaded.model, "label_config_", None), label_cfg):
        logger.warning("model %s: %s", uri, note)
    return loaded


def model_cache_dir() -> Path:
    """Where registered models are copied to be loaded: `$KOC_MODEL_CACHE`, else `~/.cache/kocrank/models`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "kocrank" / "models"


def _local_copy(uri_to_load: str, key: str) -> Path:
    """A complete local copy of the model at `uri_to_load`, cached under `key` (copied once, atomically).

    Falls back to a fresh temporary folder when the cache cannot be written.
    """
    from mlflow.artifacts import download_artifacts

    cache = model_cache_dir()
    target = cache / key
    if (target / _COMPLETE_MARK).exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    except OSError as err:
        logger.warning("model cache %s is not writable (%s); copying the model to a temporary folder", cache, err)
        return Path(download_artifacts(artifact_uri=uri_to_load, dst_path=tempfile.mkdtemp(prefix="kocrank-model-")))
    try:
        copied = Path(download_artifacts(artifact_uri=uri_to_load, dst_path=str(staging)))
        (copied / _COMPLETE_MARK).write_text(uri_to_load)
        try:
            copied.rename(target)
        except OSError:  # another process cached it first
            if not (target / _COMPLETE_MARK).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _cache_key(uri_to_load: str, tracking_uri: str | None, run_id: str | None) -> str:
    digest = hashlib.sha256(f"{tracking_uri}|{uri_to_load}|{run_id}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", uri_to_load.split(":/", 1)[-1]).strip("_")[:60]
    return f"{readable}-{digest}"


def _damaged(uri: str, local: Path, source: str | None, err: BaseException) -> DamagedModelError:
    """A message naming the unreadable file, its size and where it lives in the store, and what to do."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != _COMPLETE_MARK)
    empty = [p for p in files if p.stat().st_size == 0]
    artifacts = [p for p in files if p.suffix in (".joblib", ".pkl")]
    suspect = empty[0] if empty else (artifacts[0] if artifacts else None)
    which = (
        f"{suspect.relative_to(local)} ({suspect.stat().st_size:,} bytes)" if suspect else f"the model folder {local}"
    )
    where = f" in the store at {source}" if source else ""
    return DamagedModelError(
        f"model {uri} cannot be loaded: {which}{where} is unreadable ({type(err).__name__}: {err}); the file is "
        "truncated or damaged. Serve another version (`koc promote --version N`, see `koc models`) or retrain "
        "with `koc train`"
    )


def _load_pyfunc(uri: str, uri_to_load: str, tracking_uri: str | None, run_id: str | None, source: str | None) -> Any:
    import mlflow

    if uri_to_load.startswith(("models:/", "runs:/")):
        local = _local_copy(uri_to_load, _cache_key(uri_to_load, tracking_uri, run_id))
    else:
        local = Path(uri_to_load)  # a model directory given as a path: read in place
    try:
        return mlflow.pyfunc.load_model(str(local))
    except Exception as err:  # EOFError, UnpicklingError, MlflowException on a broken MLmodel, ...
        damaged = _damaged(uri, local, source, err)
        if local.parent == model_cache_dir() and local.exists():
            shutil.rmtree(local, ignore_errors=True)  # refetch once the store is repaired
        raise damaged from err


def artifact_location(client: Any, name: str, version: str) -> str:
    """Where a registered version's files live in the artifact store (its logged model's folder)."""
    mv = client.get_model_version(name, version)
    model_id = getattr(mv, "model_id", None)
    if not model_id and str(mv.source).startswith("models:/m-"):  # MLflow 3: the source names the logged model
        model_id = str(mv.source).removeprefix("models:/").split("/")[0]
    if model_id:
        try:
            return str(client.get_logged_model(model_id).artifact_location)
        except Exception:  # older stores: the version's source is the location
            pass
    return str(mv.source)


def _load_mlflow_model(uri: str, path: Path, tracking_uri: str | None) -> LoadedModel:
    parts = parse_model_uri(uri)
    if "name" in parts and (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        from training.promotion import recover

        recover(tracking_uri, parts["name"])
    version, run_id = resolve_registered_version(uri, tracking_uri)
    run_id = run_id or parts.get("run_id")
    source = None
    if not parts and not path.exists():
        raise FileNotFoundError(f"model {uri!r} is neither a models:/ or runs:/ URI nor an existing path")
    if not parts:
        uri_to_load = str(path.resolve())
        try:
            from mlflow.models import Model

            run_id = Model.load(uri_to_load).run_id
        except Exception:  # a bare model directory need not record a run
            run_id = None
    elif version is not None:
        # load the version the alias resolved to, not the alias again: if the alias moves in
        # between, the loaded model and the reported version would disagree
        uri_to_load = f"models:/{parts['name']}/{version}"
        source = artifact_location(_client(tracking_uri), parts["name"], version)
    else:
        uri_to_load = uri
    logger.info("loading model %s (%s)", uri, uri_to_load)
    model = _unwrap(_load_pyfunc(uri, uri_to_load, tracking_uri, run_id, source))
    info = ModelInfo(
        uri=uri,
        name=parts.get("name"),
        version=version,
        alias=parts.get("alias"),
        run_id=run_id,
        test_metrics=_test_metrics(run_id, tracking_uri),
    )
    return LoadedModel(model, _describe(model, info))
