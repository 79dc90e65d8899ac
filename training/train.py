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
import os
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
from sklearn.metrics import average_precision_score, roc_auc_score

from features.build import EngineConfig
from features.contract import DEFAULT_TIMEZONE, BrandData, load_data
from features.labels import LabelConfig
from features.registry import FEATURE_SET_VERSION
from training import baselines as baseline_module
from training import faults, plots, promotion, tracking
from training.backtest import BacktestResult, refit, run_backtest
from training.config import TrainConfig
from training.dataset import SnapshotDataset, build_snapshots
from training.evaluate import (
    ScorerResult,
    evaluate_scores,
    flat_metrics,
    gains_curve,
    metrics_table,
    truth_for,
)
from training.fingerprint import cached_fingerprint
from training.model import KocModel
from training.pyfunc import CODE_PATHS, MODEL_ARTIFACT_KEY, KocPyfunc, signature_for, to_pyfunc_input
from training.targets import (
    METHOD_FALLBACK,
    FittedTarget,
    SoftLabelUnavailable,
    TargetUnavailable,
    components_for,
    fit_components,
    target_params,
)

logger = logging.getLogger(__name__)

STAGES = (
    "load data",
    "build snapshots",
    "backtest and fit",
    "evaluate",
    "log artifacts",
    "register model",
    "promotion",
)
SLICE_COLUMNS = ("city_tier", "channel")
SLICE_METRICS = ("rows", "base_rate", "roc_auc", "pr_auc", "mean_score")
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
    backtest: BacktestResult | None = None


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


def model_factory(train_cfg: TrainConfig, label_cfg: LabelConfig) -> Callable[[], KocModel]:
    """A function returning a fresh, unfitted KocModel with the run's parameters (LightGBM overrides allowed)."""

    def make(**overrides: Any) -> KocModel:
        return KocModel(
            train_cfg.lgbm.model_dump() | overrides,
            seed=train_cfg.seed,
            objective=train_cfg.objective,
            calibration=train_cfg.calibration,
            num_threads=train_cfg.num_threads or os.cpu_count() or 1,
            # a treatment-aware target is part of the label definition: never auto-compared with another
            label_config=label_cfg.model_dump() | ({"target": train_cfg.target} if train_cfg.target != "observed" else {}),
        )

    return make


def _fit_observed(
    train: pd.DataFrame, valid: pd.DataFrame, names: list[str], train_cfg: TrainConfig, label_cfg: LabelConfig
) -> FittedTarget:
    ranking: dict[str, Any] = {}
    if train_cfg.objective == "lambdarank":
        ranking = {
            "relevance": train["relevance"].to_numpy(),
            "relevance_val": valid["relevance"].to_numpy(),
            "group": _query_groups(train),
            "group_val": _query_groups(valid),
        }
    model = model_factory(train_cfg, label_cfg)().fit(
        train[names],
        train["label"].to_numpy(),
        valid[names],
        valid["label"].to_numpy(),
        sample_weight=train["weight"].to_numpy(),
        # lambdarank keeps its validation cutoffs complete (training.dataset.build_snapshots): no weights
        sample_weight_val=None if ranking else valid["weight"].to_numpy(dtype=float),
        **ranking,
    )
    counts = {
        "train_rows": len(train),
        "train_positives": int(train["label"].sum()),
        "validation_rows": len(valid),
        "validation_positives": int(valid["label"].sum()),
    }
    return FittedTarget(components={"observed": model}, rows={"observed": counts})


def fit_target(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    names: list[str],
    train_cfg: TrainConfig,
    label_cfg: LabelConfig,
    *,
    issued: pd.DataFrame | None = None,
    rows_for: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]] | None = None,
) -> tuple[KocModel, FittedTarget, str | None]:
    """The configured target's model fitted on `train`, early-stopped and calibrated on `valid`
    (components named in `rows_for` on their own rows: `training.targets.fit_components`).

    Returns (model, its components, why it fell back or None). A treatment-aware target needs
    logged invitations and enrolments; without enough of them the run learns the observed label
    instead and says why. A soft method without the default label's window posts first falls
    back to its plain method (`training.targets.METHOD_FALLBACK`).
    """
    fallback = None
    method: str | None = train_cfg.target_method if train_cfg.target != "observed" else None
    while method is not None:
        try:
            fitted = fit_components(
                train,
                valid,
                names,
                components_for(train_cfg.target, method),
                model_factory(train_cfg, label_cfg),
                propensity_clip=train_cfg.propensity_clip,
                issued=issued,
                rows_for=rows_for,
            )
            return fitted.model(train_cfg.target, method), fitted, fallback
        except TargetUnavailable as err:
            instead = METHOD_FALLBACK.get(method) if isinstance(err, SoftLabelUnavailable) else None
            then = f"trying method {instead!r} instead" if instead else "learnt 'observed' instead"
            why = f"target {train_cfg.target!r} with method {method!r} unavailable, {then}: {err}"
            fallback = why if fallback is None else f"{fallback}; {why}"
            logger.warning(why)
            method = instead
    fitted = _fit_observed(train, valid, names, train_cfg.model_copy(update={"target": "observed"}), label_cfg)
    return fitted.model("observed", "single"), fitted, fallback


def fit_model(dataset: SnapshotDataset, train_cfg: TrainConfig, label_cfg: LabelConfig) -> KocModel:
    """Fit the configured target on the train cutoffs, early-stopping and calibrating on the validation cutoff."""
    model, _, _ = fit_target(
        dataset.part("train"), dataset.part("validation"), dataset.feature_names, train_cfg, label_cfg
    )
    return model


def evaluate_all(
    model: KocModel,
    dataset: SnapshotDataset,
    data: BrandData,
    train_cfg: TrainConfig,
    model_scores: np.ndarray | None = None,
) -> tuple[list[ScorerResult], dict[str, np.ndarray]]:
    """Metrics of the model and every baseline on the full test cutoff, plus each scorer's scores.

    `model_scores`: the model's scores of the test rows when the backtest already computed them."""
    train = dataset.part("train")
    test = dataset.part("test")
    names = dataset.feature_names
    if model_scores is None or len(model_scores) != len(test):
        model_scores = model.predict_proba(test[names])
    scores: dict[str, np.ndarray] = {MODEL_ROW: model_scores}
    probabilistic = {MODEL_ROW} if getattr(model, "target_", "observed") != "uplift" else set()
    for baseline in baseline_module.all_baselines(
        train, test, names, seed=train_cfg.seed, value_weights=train_cfg.value_weights
    ):
        scores[baseline.name] = baseline.scores
        if baseline.is_probability:
            probabilistic.add(baseline.name)
    cutoff = dataset.split.test
    truth = None if "truth" in data.absent else truth_for(data.rows_at("truth", cutoff), test["member_id"], cutoff)
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


def slice_metrics(scores: np.ndarray, test: pd.DataFrame, train_cfg: TrainConfig) -> pd.DataFrame:
    """The model's metrics on the test cutoff per city tier and per acquisition channel (missing = "unknown")."""
    rows = []
    labels = test["label"].to_numpy()
    for column in SLICE_COLUMNS:
        if column not in test.columns:
            continue
        values = test[column].astype("object").where(test[column].notna(), "unknown").astype(str).to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            y, score = labels[mask], scores[mask]
            both = 0 < y.sum() < len(y)
            rows.append(
                {
                    "slice": column,
                    "value": value,
                    "rows": float(mask.sum()),
                    "base_rate": float(y.mean()),
                    "roc_auc": float(roc_auc_score(y, score)) if both else float("nan"),
                    "pr_auc": float(average_precision_score(y, score)) if both else float("nan"),
                    "mean_score": float(score.mean()),
                }
            )
    return pd.DataFrame(rows, columns=["slice", "value", *SLICE_METRICS])


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


@dataclass
class _Run:
    """State shared by the named steps of one training run."""

    train_cfg: TrainConfig
    label_cfg: LabelConfig
    timezone: str
    uri: str
    model_name: str
    brand: BrandData | None = None
    dataset: SnapshotDataset | None = None
    backtest: BacktestResult | None = None
    model: KocModel | None = None
    results: list[ScorerResult] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    table: pd.DataFrame | None = None
    slices: pd.DataFrame | None = None
    version: str | None = None
    decision: tracking.PromotionDecision | None = None
    promotion_before: dict[str, str] | None = None  # aliases when the promotion step began
    recorded: tracking.PromotionDecision | None = None  # decision written to the registry
    fingerprint_cache: Path | None = None  # training.fingerprint's cache folder (None: hash every table)
    engine: EngineConfig = field(default_factory=EngineConfig)  # [engine]: DuckDB settings and the refund rule


def step_snapshot(run: _Run, config_record: Mapping[str, Any] | None) -> None:
    """Build the snapshot rows of every backtest fold and log the split, config and data fingerprint."""
    brand, train_cfg, label_cfg = run.brand, run.train_cfg, run.label_cfg
    run.dataset = dataset = build_snapshots(brand, label_cfg, train_cfg, run.engine)
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
    mlflow.log_params(
        {
            **_flatten("training", train_cfg.model_dump(mode="json")),
            **_flatten("labels", label_cfg.model_dump(mode="json")),
            "timezone": run.timezone,
            "feature_set_version": FEATURE_SET_VERSION,
            "n_features": str(len(dataset.feature_names)),
            "split.train": ",".join(split["train"]),
            "split.validation": split["validation"],
            "split.test": split["test"],
            "backtest.test_cutoffs": ",".join(str(f.test.date()) for f in dataset.folds),
        }
    )
    mlflow.log_dict(
        {
            "training": train_cfg.model_dump(mode="json"),
            "labels": label_cfg.model_dump(mode="json"),
            "timezone": run.timezone,
            **({"full_config": dict(config_record)} if config_record else {}),
        },
        "config.json",
    )
    fingerprint = cached_fingerprint(brand, run.fingerprint_cache)
    mlflow.log_dict(fingerprint, "data_fingerprint.json")
    mlflow.set_tags(
        {
            "koc.data_sha256": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
            **{f"koc.data_rows.{table}": str(info["rows"]) for table, info in fingerprint.items()},
        }
    )
    mlflow.log_dict(split, "split.json")
    tracking.describe_run(
        mlflow.active_run().info.run_id,
        target=train_cfg.target,
        data_source=str(brand.source or "in-memory"),
        split=split,
        fingerprint=fingerprint,
        label_config=label_cfg.model_dump(mode="json"),
    )
    mlflow.log_dict({"feature_set_version": FEATURE_SET_VERSION, "features": dataset.feature_names}, "feature_set.json")
    mlflow.log_dict(dataset.downsampling, "downsampling.json")
    mlflow.log_param("sampling.negative_sample_rate", f"{dataset.negative_sample_rate:.6g}")
    mlflow.log_metrics({f"sampling.{key}": float(value) for key, value in dataset.downsampling.items()})


def step_fit(run: _Run, issued: pd.DataFrame | None) -> None:
    """Rolling-origin backtest of the configured target, then the served model refit on every cutoff."""
    dataset, train_cfg = run.dataset, run.train_cfg
    run.backtest = backtest = run_backtest(dataset, run.brand, train_cfg, run.label_cfg, fit_target, issued=issued)
    run.model = refit(dataset, backtest, model_factory(train_cfg, run.label_cfg), train_cfg, issued=issued)
    latest = backtest.latest
    # the refund rule changes feature values: scoring must use the one training used (serving.rank.model_engine)
    run.model.refunds_without_time_ = run.engine.refunds_without_time
    mlflow.log_params(
        {
            **target_params(backtest.target, backtest.method, latest.fitted),
            "model.best_iteration": str(run.model.best_iteration_),
            "model.refit": str(run.model is not latest.model).lower(),
            "model.refit_cutoffs": str(len(dataset.refit_cutoffs)) if run.model is not latest.model else "0",
            "engine.refunds_without_time": run.engine.refunds_without_time,
            **{f"model.iterations.{name}": str(n) for name, n in backtest.iterations().items()},
        }
    )
    mlflow.set_tag("koc.trained_at", run.model.trained_at_)  # a time, not a setting: a tag (issue 11)
    mlflow.set_tags(
        {"koc.target": run.model.target_, "koc.target_method": run.model.target_method_}
        | ({"koc.target_fallback": backtest.fallback[:500]} if backtest.fallback else {})
    )
    if latest.fitted.propensity is not None:
        mlflow.log_metrics(latest.fitted.propensity.as_metrics())
        mlflow.set_tag("koc.propensity_source", latest.fitted.propensity.source)
    mlflow.log_metrics(backtest.metrics())


def step_evaluate(run: _Run) -> None:
    """The latest fold's model (never fitted on the test cutoff) against every baseline, overall and per slice."""
    latest = run.backtest.latest
    run.results, run.scores = evaluate_all(latest.model, run.dataset, run.brand, run.train_cfg, latest.scores)
    run.table = metrics_table(run.results)
    mlflow.log_metrics(flat_metrics(run.results))
    test = run.dataset.part("test")
    slices = slice_metrics(run.scores[MODEL_ROW], test, run.train_cfg)
    mlflow.log_metrics(
        {
            f"slice.{row.slice}.{str(row.value).replace(' ', '_')}.{metric}": float(getattr(row, metric))
            for row in slices.itertuples()
            for metric in SLICE_METRICS
            if not pd.isna(getattr(row, metric))
        }
    )
    run.slices = slices


def step_log(run: _Run, workdir: Path) -> None:
    """Reports, charts, the backtest table and per-slice metrics as run artifacts."""
    _log_artifacts(run.model, run.dataset, run.results, run.scores, run.table, run.train_cfg, workdir)
    reports = workdir / "backtest"
    reports.mkdir()
    run.backtest.table().to_csv(reports / "backtest.csv", index=False)
    run.slices.to_csv(reports / "slices.csv", index=False)
    mlflow.log_dict(run.backtest.summary() | {"skipped": run.backtest.skipped}, "backtest/summary.json")
    mlflow.log_artifacts(str(reports), artifact_path="backtest")


def step_register(run: _Run, workdir: Path) -> None:
    """Log the served model as a pyfunc and register a new version."""
    faults.checkpoint("before_register")
    run.version = _log_model(run.model, run.dataset.part("test"), run.model_name, workdir)
    faults.checkpoint("after_register")
    mlflow.set_tag("koc.model_version", run.version)


def step_promote(run: _Run, client: MlflowClient, run_id: str) -> None:
    """Champion/challenger on the backtest means (`training.promotion.promote_if_better`), recorded in the run."""
    run.promotion_before = tracking.current_aliases(client, run.model_name)
    decision = promotion.promote_if_better(
        client,
        run.uri,
        run.model_name,
        run.version,
        run_id,
        run.backtest.summary(),
        margin=run.train_cfg.promotion_margin,
        label_definition=run.model.label_config_,
    )
    run.recorded = run.decision = decision
    if not decision.promoted:
        logger.info("v%s stays challenger: %s", run.version, decision.reason)
    # the run's own record only once the registry says the same
    mlflow.log_dict(decision.to_record(), "promotion.json")
    mlflow.set_tag("koc.promoted", str(decision.promoted).lower())


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
    issued: pd.DataFrame | None = None,
    fingerprint_cache: str | Path | None = None,
    engine: EngineConfig | None = None,
) -> TrainResult:
    """Load, snapshot, backtest and fit, evaluate, log, register and maybe promote: one MLflow run.

    `data` is a data directory (read with `features.contract.load_data`) or loaded
    `BrandData`. `config_record` (e.g. the full `Config.model_dump()`) is logged as-is.
    `issued` (optional: `member_id, as_of, selection_probability` of kocrank's own past
    lists) gives inverse-propensity weights their logged propensities. `fingerprint_cache`: a
    folder where each data file's fingerprint is kept (`training.fingerprint`), so unchanged
    files are not hashed again. `engine`: the config's `[engine]` (DuckDB threads, memory limit and
    spill folder for the feature build; its refund rule is recorded on the model for scoring).
    """
    # re-validated: `model_copy(update=...)` skips validation (e.g. a primary_k missing from k_list)
    train_cfg = TrainConfig.model_validate((train_config or TrainConfig()).model_dump())
    label_cfg = label_config or LabelConfig()
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment_name = experiment or train_cfg.experiment_name
    state = _Run(train_cfg, label_cfg, timezone, uri, train_cfg.registered_model_name)
    state.fingerprint_cache = Path(fingerprint_cache) if fingerprint_cache is not None else None
    state.engine = engine or EngineConfig()
    announce = progress or (lambda stage: logger.info("%s ...", stage))
    timings: dict[str, float] = {}

    def step(stage: str, action: Callable[[], None]) -> None:
        announce(stage)
        started = time.perf_counter()
        action()
        timings[stage.replace(" ", "_")] = round(time.perf_counter() - started, 3)

    def load() -> None:
        state.brand = data if isinstance(data, BrandData) else load_data(data, timezone=timezone)

    step("load data", load)
    with tracking.tracking_context(uri) as client:
        experiment_id = tracking.ensure_experiment(client, experiment_name, uri)
        with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            try:
                step("build snapshots", lambda: step_snapshot(state, config_record))
                step("backtest and fit", lambda: step_fit(state, issued))
                step("evaluate", lambda: step_evaluate(state))
                step("log artifacts", lambda: step_log(state, workdir))
                step("register model", lambda: step_register(state, workdir))
                step("promotion", lambda: step_promote(state, client, run.info.run_id))
                mlflow.set_tags({f"koc.seconds.{k}": f"{v:.3f}" for k, v in timings.items()})
                faults.checkpoint("after_promotion")
            except BaseException as err:
                if state.promotion_before is not None:
                    _roll_back_run_promotion(client, uri, state.model_name, state.promotion_before, err, state.recorded)
                if state.version is not None:
                    try:
                        client.set_model_version_tag(
                            state.model_name,
                            state.version,
                            tracking.RUN_FAILED_TAG,
                            f"{type(err).__name__}: {err}"[:500],
                        )
                    except Exception:  # pragma: no cover - best effort while failing
                        logger.exception("could not tag failed version %s", state.version)
                raise
    decision = state.decision
    logger.info(
        "run %s: %s v%s %s",
        run.info.run_id,
        state.model_name,
        state.version,
        "promoted to champion" if decision.promoted else "stays challenger",
    )
    return TrainResult(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        model_name=state.model_name,
        model_version=state.version,
        decision=decision,
        metrics=state.table,
        split=state.dataset.split.to_dict(),
        model=state.model,
        dataset=state.dataset,
        timings=timings,
        backtest=state.backtest,
    )
