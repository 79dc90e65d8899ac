"""`koc train` end to end: snapshots -> LightGBM + baselines -> evaluation -> MLflow run -> registry.

One call of `run_training` is one MLflow run. If anything fails (any BaseException, an
interrupt included) the run ends FAILED, the registry's aliases are exactly as they were
before the run, and a promotion that had already been recorded gets a compensating
`rolled_back` entry in the promotion log, the version's tags and the run's `promotion.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from features.contract import DEFAULT_TIMEZONE, BrandData, load_data
from features.labels import LabelConfig
from features.registry import FEATURE_SET_VERSION, categorical_features
from training import baselines as baseline_module
from training import faults, plots, tracking
from training.config import TrainConfig
from training.dataset import SnapshotDataset, build_snapshots
from training.evaluate import (
    ScorerResult,
    evaluate_scores,
    flat_metrics,
    gains_curve,
    k_label,
    metrics_table,
    truth_for,
)
from training.model import KocModel
from training.pyfunc import CODE_PATHS, MODEL_ARTIFACT_KEY, KocPyfunc, signature_for, to_pyfunc_input

logger = logging.getLogger(__name__)

STAGES = (
    "load data",
    "build snapshots",
    "fit model",
    "fit baselines",
    "evaluate",
    "log artifacts",
    "register model",
    "promotion",
)
MODEL_ROW = "model"
SHAP_SAMPLE_ROWS = 5_000
LAMBDARANK_QUERY_ROWS = 1_000
Progress = Callable[[str], None]


@dataclass
class TrainResult:
    """What one training run produced (the model and the dataset stay in memory for callers)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    model_version: str
    decision: tracking.PromotionDecision
    metrics: pd.DataFrame
    split: dict[str, object]
    model: KocModel
    dataset: SnapshotDataset
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        return self.decision.metric


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: ",".join(str(v) for v in value)}
    return {prefix: str(value)}


def _query_groups(frame: pd.DataFrame) -> list[int]:
    """Lambdarank queries: each cutoff's rows (already in row order) cut into chunks of ~1,000."""
    sizes: list[int] = []
    for count in frame.groupby("as_of", sort=True, observed=True).size().tolist():
        full, rest = divmod(count, LAMBDARANK_QUERY_ROWS)
        sizes.extend([LAMBDARANK_QUERY_ROWS] * full + ([rest] if rest else []))
    return sizes


def fit_model(dataset: SnapshotDataset, train_cfg: TrainConfig, label_cfg: LabelConfig) -> KocModel:
    """Fit KocModel on the train cutoffs, early-stopping and calibrating on the validation cutoff."""
    train = dataset.part("train")
    valid = dataset.part("validation")
    names = dataset.feature_names
    params = train_cfg.lgbm.model_dump()
    model = KocModel(
        params,
        seed=train_cfg.seed,
        objective=train_cfg.objective,
        calibration=train_cfg.calibration,
        num_threads=train_cfg.num_threads,
        label_config=label_cfg.model_dump(),
    )
    ranking: dict[str, Any] = {}
    if train_cfg.objective == "lambdarank":
        ranking = {
            "relevance": train["relevance"].to_numpy(),
            "relevance_val": valid["relevance"].to_numpy(),
            "group": _query_groups(train),
            "group_val": _query_groups(valid),
        }
    return model.fit(
        train[names],
        train["label"].to_numpy(),
        valid[names],
        valid["label"].to_numpy(),
        sample_weight=train["weight"].to_numpy(),
        **ranking,
    )


def evaluate_all(
    model: KocModel, dataset: SnapshotDataset, data: BrandData, train_cfg: TrainConfig
) -> tuple[list[ScorerResult], dict[str, np.ndarray]]:
    """Metrics of the model and every baseline on the full test cutoff, plus each scorer's scores."""
    train = dataset.part("train")
    test = dataset.part("test")
    names = dataset.feature_names
    scores: dict[str, np.ndarray] = {MODEL_ROW: model.predict_proba(test[names])}
    probabilistic = {MODEL_ROW}
    for baseline in baseline_module.all_baselines(
        train, test, names, seed=train_cfg.seed, value_weights=train_cfg.value_weights
    ):
        scores[baseline.name] = baseline.scores
        if baseline.is_probability:
            probabilistic.add(baseline.name)
    truth = None if "truth" in data.absent else truth_for(data.truth, test["member_id"], dataset.split.test)
    results = [
        evaluate_scores(
            name,
            values,
            test["label"].to_numpy(),
            test["member_id"],
            train_cfg.k_list,
            is_probability=name in probabilistic,
            truth=truth,
            reliability_bins=train_cfg.reliability_bins,
        )
        for name, values in scores.items()
    ]
    return results, scores


def _mean_abs_contributions(model: KocModel, test: pd.DataFrame, names: list[str], seed: int) -> pd.Series:
    rows = test
    if len(test) > SHAP_SAMPLE_ROWS:
        rows = test.sample(n=SHAP_SAMPLE_ROWS, random_state=seed)
    contributions = model.contributions(rows[names])
    return contributions.abs().mean().sort_values(ascending=False, kind="stable").rename("mean_abs_shap")


def _thinned_curves(curves: Mapping[str, pd.DataFrame], points: int = 200) -> pd.DataFrame:
    """Gains curves of every scorer at ~`points` evenly spaced depths (small enough to log as CSV)."""
    frames = []
    for name, curve in curves.items():
        keep = np.unique(np.linspace(0, len(curve) - 1, min(points, len(curve))).round().astype(int))
        frames.append(curve.iloc[keep].assign(scorer=name))
    return pd.concat(frames, ignore_index=True)[["scorer", "contacted_share", "captured_share", "lift"]]


def _log_artifacts(
    model: KocModel,
    dataset: SnapshotDataset,
    results: list[ScorerResult],
    scores: dict[str, np.ndarray],
    table: pd.DataFrame,
    train_cfg: TrainConfig,
    workdir: Path,
) -> None:
    test = dataset.part("test")
    names = dataset.feature_names
    reports = workdir / "reports"
    reports.mkdir()
    table.to_csv(reports / "metrics.csv")
    dataset.counts().to_csv(reports / "snapshot_counts.csv", index=False)
    curves = {name: gains_curve(values, test["label"].to_numpy(), test["member_id"]) for name, values in scores.items()}
    plots.gains_chart(curves, reports / "gains_lift.png", title=f"test cutoff {dataset.split.test.date()}")
    _thinned_curves(curves).to_csv(reports / "gains_curves.csv", index=False)
    reliability = {r.name: r.reliability for r in results if r.reliability is not None}
    for name, rel in reliability.items():
        rel.to_csv(reports / f"reliability_{name}.csv", index=False)
    plots.calibration_chart(reliability, reports / "calibration.png")
    importance = model.feature_importance("gain")
    importance.rename_axis("feature").to_csv(reports / "feature_importance_gain.csv")
    plots.bar_chart(
        importance, reports / "feature_importance_gain.png", title="Feature importance (gain)", xlabel="total gain"
    )
    shap = _mean_abs_contributions(model, test, names, train_cfg.seed)
    shap.rename_axis("feature").to_csv(reports / "mean_abs_shap.csv")
    plots.bar_chart(
        shap,
        reports / "mean_abs_shap.png",
        title="Mean |SHAP| on the test cutoff",
        xlabel="mean |contribution| (log-odds)",
    )
    mlflow.log_artifacts(str(reports), artifact_path="reports")


def _pip_requirements() -> list[str]:
    names = (
        "mlflow",
        "lightgbm",
        "scikit-learn",
        "pandas",
        "numpy",
        "joblib",
        "pyarrow",
        "duckdb",
        "pydantic",
        "pandera",
    )
    return [f"{name}=={package_version(name)}" for name in names]


def _log_model(model: KocModel, test: pd.DataFrame, model_name: str, workdir: Path) -> str:
    """Log the pyfunc (joblib KocModel + code) and register it; returns the new version."""
    artifact = workdir / "koc_model.joblib"
    joblib.dump(model, artifact)
    categorical = list(model.categories_)
    example = to_pyfunc_input(test.head(5), model.feature_names_, categorical)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=KocPyfunc(),
        artifacts={MODEL_ARTIFACT_KEY: str(artifact)},
        code_paths=CODE_PATHS,
        signature=signature_for(model.feature_names_, categorical),
        input_example=example,
        pip_requirements=_pip_requirements(),
        registered_model_name=model_name,
        metadata={"feature_set_version": model.feature_set_version_, "objective": model.objective},
    )
    if info.registered_model_version is None:
        raise RuntimeError(f"registering {model_name} returned no version")
    return str(info.registered_model_version)


def champion_label_config(model_name: str, champion_version: str) -> dict[str, Any] | None:
    """The current champion's `label_config_` (None when it cannot be loaded or recorded none)."""
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{model_name}@{tracking.CHAMPION}")
        config = getattr(champion.unwrap_python_model().model, "label_config_", None)
    except Exception as err:  # scoring will report why the champion is unusable
        logger.warning("could not read champion v%s's label config: %s", champion_version, err)
        return None
    return dict(config) if config else None


def score_champion(
    model_name: str, test: pd.DataFrame, feature_names: list[str], primary_k: Any, champion_version: str
) -> tuple[float | None, str | None]:
    """(precision@K of the current champion on this run's test rows, error text if it cannot score them)."""
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{model_name}@{tracking.CHAMPION}")
        rows = to_pyfunc_input(test, feature_names, categorical_features())
        predicted = champion.predict(rows)
        probability = np.asarray(
            predicted["probability"] if isinstance(predicted, pd.DataFrame) else predicted, dtype="float64"
        )
    except Exception as err:  # the champion may predate this feature set or code
        logger.warning("champion v%s could not score this test cutoff: %s", champion_version, err)
        return None, f"{type(err).__name__}: {err}"[:500]
    result = evaluate_scores(
        "champion", probability, test["label"].to_numpy(), test["member_id"], [primary_k], is_probability=True
    )
    return result.metrics[f"precision_at_{k_label(primary_k)}"], None


def _roll_back_run_promotion(
    client: MlflowClient,
    uri: str,
    model_name: str,
    before: dict[str, str],
    error: BaseException,
    recorded: tracking.PromotionDecision | None,
) -> None:
    """Restore the aliases seen when the promotion step began; compensate a recorded decision in the run too."""
    rolled = tracking.roll_back_promotion(client, uri, model_name, before, error, recorded)
    if recorded is None:
        return
    try:
        mlflow.set_tags({"koc.promoted": "false", "koc.promotion_rolled_back": "true"})
        if rolled is not None:
            mlflow.log_dict(rolled.to_record(), "promotion.json")
    except Exception:  # pragma: no cover - best effort while failing
        logger.exception("could not mark the run's promotion record as rolled back")


def run_training(
    data: str | Path | BrandData,
    train_config: TrainConfig | None = None,
    label_config: LabelConfig | None = None,
    *,
    timezone: str = DEFAULT_TIMEZONE,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    config_record: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, evaluate against the baselines, log one MLflow run, register and maybe promote.

    `data` is a data directory (read with `features.contract.load_data`) or loaded
    `BrandData`. `config_record` (e.g. the full `Config.model_dump()`) is logged as-is.
    """
    # re-validated: `model_copy(update=...)` skips validation (e.g. a primary_k missing from k_list)
    train_cfg = TrainConfig.model_validate((train_config or TrainConfig()).model_dump())
    label_cfg = label_config or LabelConfig()
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_name = experiment or train_cfg.experiment_name
    model_name = train_cfg.registered_model_name
    step = progress or (lambda stage: logger.info("%s ...", stage))
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    step("load data")
    brand = data if isinstance(data, BrandData) else load_data(data, timezone=timezone)
    lap("load_data")

    with tracking.tracking_context(uri) as client:
        experiment_id = tracking.ensure_experiment(client, experiment_name, uri)
        with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            version: str | None = None
            promotion_before: dict[str, str] | None = None  # aliases when the promotion step began
            recorded: tracking.PromotionDecision | None = None  # decision written to the registry
            try:
                step("build snapshots")
                dataset = build_snapshots(brand, label_cfg, train_cfg)
                lap("build_snapshots")
                split = dataset.split.to_dict()
                mlflow.set_tags(
                    {
                        "koc.feature_set_version": FEATURE_SET_VERSION,
                        "koc.test_cutoff": split["test"],
                        "koc.validation_cutoff": split["validation"],
                        "koc.label_source": split["label_source"],
                        "koc.absent_tables": ",".join(sorted(brand.absent)) or "none",
                        "koc.data_source": str(brand.source or "in-memory"),
                    }
                )
                params = {
                    **_flatten("training", train_cfg.model_dump(mode="json")),
                    **_flatten("labels", label_cfg.model_dump(mode="json")),
                    "timezone": timezone,
                    "feature_set_version": FEATURE_SET_VERSION,
                    "n_features": str(len(dataset.feature_names)),
                    "split.train": ",".join(split["train"]),
                    "split.validation": split["validation"],
                    "split.test": split["test"],
                }
                mlflow.log_params(params)
                mlflow.log_dict(
                    {
                        "training": train_cfg.model_dump(mode="json"),
                        "labels": label_cfg.model_dump(mode="json"),
                        "timezone": timezone,
                        **({"full_config": dict(config_record)} if config_record else {}),
                    },
                    "config.json",
                )
                fingerprint = brand.fingerprint()
                mlflow.log_dict(fingerprint, "data_fingerprint.json")
                mlflow.set_tags(
                    {
                        "koc.data_sha256": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
                        **{f"koc.data_rows.{table}": str(info["rows"]) for table, info in fingerprint.items()},
                    }
                )
                mlflow.log_dict(split, "split.json")
                tracking.describe_run(run.info.run_id, target=getattr(train_cfg, "target", "observed"), data_source=str(brand.source or "in-memory"), split=split, fingerprint=fingerprint, label_config=label_cfg.model_dump(mode="json"))  # noqa: E501
                mlflow.log_dict(
                    {"feature_set_version": FEATURE_SET_VERSION, "features": dataset.feature_names}, "feature_set.json"
                )
                mlflow.log_dict(dataset.downsampling, "downsampling.json")

                step("fit model")
                model = fit_model(dataset, train_cfg, label_cfg)
                lap("fit_model")
                mlflow.log_param("model.best_iteration", str(model.best_iteration_))
                mlflow.set_tag("koc.trained_at", model.trained_at_)  # a time, not a setting: a tag (issue 11)

                step("fit baselines")
                results, scores = evaluate_all(model, dataset, brand, train_cfg)
                lap("baselines_and_evaluation")
                step("evaluate")
                table = metrics_table(results)
                mlflow.log_metrics(flat_metrics(results))

                step("log artifacts")
                _log_artifacts(model, dataset, results, scores, table, train_cfg, workdir)
                lap("artifacts")

                step("register model")
                test = dataset.part("test")
                faults.checkpoint("before_register")
                version = _log_model(model, test, model_name, workdir)
                faults.checkpoint("after_register")
                mlflow.set_tag("koc.model_version", version)
                lap("register")

                step("promotion")
                metric = f"precision_at_{k_label(train_cfg.primary_k)}"
                promotion_before = tracking.current_aliases(client, model_name)
                champion_version = promotion_before.get(tracking.CHAMPION)
                champion_value, champion_error = (None, None)
                champion_labels, labels_differ = None, None
                if champion_version is not None:
                    champion_labels = champion_label_config(model_name, champion_version)
                    labels_differ = tracking.label_config_difference(champion_labels, model.label_config_)
                    if labels_differ is None:  # otherwise not comparable: leave the champion unscored
                        champion_value, champion_error = score_champion(
                            model_name, test, dataset.feature_names, train_cfg.primary_k, champion_version
                        )
                decision = tracking.decide_promotion(
                    model_name=model_name,
                    version=version,
                    metric=metric,
                    challenger_value=float(table.loc[MODEL_ROW, metric]),
                    champion_version=champion_version,
                    champion_value=champion_value,
                    champion_error=champion_error,
                    test_cutoff=str(split["test"]),
                    run_id=run.info.run_id,
                    champion_label_config=champion_labels,
                    challenger_label_config=model.label_config_,
                )
                if labels_differ is not None:
                    logger.warning("v%s not promoted: %s", version, decision.reason)
                # moves the aliases, then tags the version and appends the promotion log
                decision = tracking.apply_promotion(client, uri, decision)
                recorded = decision
                # the run's own record only once the registry says the same
                mlflow.log_dict(decision.to_record(), "promotion.json")
                mlflow.set_tag("koc.promoted", str(decision.promoted).lower())
                lap("promotion")
                mlflow.set_tags({f"koc.seconds.{k}": f"{v:.3f}" for k, v in timings.items()})
                faults.checkpoint("after_promotion")
            except BaseException as err:
                if promotion_before is not None:
                    _roll_back_run_promotion(client, uri, model_name, promotion_before, err, recorded)
                if version is not None:
                    try:
                        client.set_model_version_tag(
                            model_name, version, tracking.RUN_FAILED_TAG, f"{type(err).__name__}: {err}"[:500]
                        )
                    except Exception:  # pragma: no cover - best effort while failing
                        logger.exception("could not tag failed version %s", version)
                raise
    logger.info(
        "run %s: %s v%s %s",
        run.info.run_id,
        model_name,
        version,
        "promoted to champion" if decision.promoted else "stays challenger",
    )
    return TrainResult(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        model_name=model_name,
        model_version=version,
        decision=decision,
        metrics=table,
        split=split,
        model=model,
        dataset=dataset,
        timings=timings,
    )
