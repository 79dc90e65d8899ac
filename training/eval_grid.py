"""The evaluation grid behind `koc eval`: every target on one simulated world, next to its ceiling.

For one world (`BrandData` with the simulator's `truth`) the snapshots are built once and
shared by every target; each target's components are fitted once and composed into every
method. Each scorer is judged on the test cutoff by
- yield@K / oracle: mean true `p_productive_if_invited` of its top K over the oracle's;
- P@K: precision of the observed label in its top K;
- uplift@K / oracle (when `truth` has `p_productive_if_not_invited`): mean true
  `p_if_invited - p_if_not_invited` of its top K over the oracle's.
The *ceiling* is the same learner (LightGBM, same parameters and features) trained on the
truth itself (cross-entropy on `p_productive_if_invited`), so a gap to the ceiling is the
target's, and the ceiling's gap to the oracle is the features'. Nothing here tunes on the
test cutoff: early stopping and calibration use the validation cutoff only.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd

from features.contract import BrandData
from features.labels import LabelConfig
from training.baselines import all_baselines
from training.config import KSpec, TrainConfig
from training.dataset import SnapshotDataset, build_snapshots
from training.evaluate import k_label, rank_order, resolve_k, truth_for
from training.targets import IF_INVITED_METHODS, TargetUnavailable, components_for, fit_components
from training.train import fit_target, model_factory

logger = logging.getLogger(__name__)

CEILING = "ceiling"
NOT_INVITED = "p_productive_if_not_invited"
DEFAULT_SCORERS = (
    "observed",
    *(f"if_invited:{m}" for m in IF_INVITED_METHODS),
    "uplift:two_stage",
)


def truth_column(truth: pd.DataFrame, rows: pd.DataFrame, column: str) -> np.ndarray:
    """`column` of `truth` aligned with `rows` (member_id, as_of), NaN where the simulator has none."""
    keys = rows[["member_id", "as_of"]].assign(member_id=rows["member_id"].astype(str))
    table = truth[["member_id", "as_of", column]].assign(member_id=truth["member_id"].astype(str))
    table["as_of"] = table["as_of"].astype(keys["as_of"].dtype)
    return keys.merge(table, on=["member_id", "as_of"], how="left")[column].to_numpy(dtype=float)


def top_k_ratio(scores: np.ndarray, value: np.ndarray, member_ids: pd.Series, k: int) -> float:
    """Mean `value` of the top `k` by score over the mean of the top `k` by value (NaN values ignored)."""
    known = ~np.isnan(value)
    if not known.any():
        return float("nan")
    order = rank_order(scores, member_ids)
    top = value[order][:k]
    top = top[~np.isnan(top)]
    oracle = np.sort(value[known])[::-1][: max(len(top), 1)].mean()
    return float(top.mean() / oracle) if oracle > 0 and len(top) else float("nan")


def fit_ceiling(dataset: SnapshotDataset, truth: pd.DataFrame, train_cfg: TrainConfig, column: str) -> np.ndarray:
    """Test-cutoff scores of LightGBM trained on `truth[column]` (same params, features, early stopping)."""
    names = dataset.feature_names
    parts = {}
    for part in ("train", "validation", "test"):
        rows = dataset.part(part)
        target = truth_column(truth, rows, column)
        parts[part] = (rows.loc[~np.isnan(target)] if part != "test" else rows, target[~np.isnan(target)])
    model = model_factory(train_cfg, LabelConfig())()
    model._remember_columns(parts["train"][0][names])
    params, rounds, stopping = model._lgb_params()
    regression = column != "p_productive_if_invited"
    params.update({"objective": "regression" if regression else "cross_entropy", "metric": ["l2"]})
    layout = {"feature_name": model.feature_names_, "categorical_feature": model._categorical_positions()}
    train_set = lgb.Dataset(model._model_input(parts["train"][0][names]), label=parts["train"][1], **layout)
    valid_set = lgb.Dataset(
        model._model_input(parts["validation"][0][names]), label=parts["validation"][1], reference=train_set, **layout
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(stopping, verbose=False)],
    )
    return np.asarray(
        booster.predict(model._model_input(parts["test"][0][names]), num_iteration=booster.best_iteration)
    )


@dataclass(frozen=True)
class WorldResult:
    """Per-scorer figures on one world's test cutoff, plus timings."""

    table: pd.DataFrame
    seconds: dict[str, float]


def evaluate_world(
    data: BrandData,
    train_cfg: TrainConfig,
    label_cfg: LabelConfig,
    *,
    scorers: Sequence[str] = DEFAULT_SCORERS,
    k: KSpec = "1%",
) -> WorldResult:
    """Every scorer (`observed`, `if_invited:<method>`, `uplift:<method>`), the ceiling and the baselines."""
    if "truth" in data.absent:
        raise ValueError("evaluate_world needs the simulator's truth table (simulate a world with `koc simulate`)")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    # one split: the grid compares targets on the latest test cutoff, so no backtest folds are built
    dataset = build_snapshots(data, label_cfg, train_cfg.model_copy(update={"backtest_cutoffs": 1}))
    seconds["snapshots"] = time.perf_counter() - clock
    train, valid, test = dataset.part("train"), dataset.part("validation"), dataset.part("test")
    names = dataset.feature_names
    scores: dict[str, np.ndarray] = {}

    clock = time.perf_counter()
    needed: list[str] = []
    for scorer in scorers:
        target, _, method = scorer.partition(":")
        needed += [c for c in components_for(target, method or "two_stage") if c not in needed]
    if "observed" in needed:
        observed, _, _ = fit_target(train, valid, names, train_cfg.model_copy(update={"target": "observed"}), label_cfg)
        scores["observed"] = observed.predict_proba(test[names])
        needed.remove("observed")
    try:
        fitted = fit_components(
            train, valid, names, needed, model_factory(train_cfg, label_cfg), propensity_clip=train_cfg.propensity_clip
        )
    except TargetUnavailable as err:
        logger.warning("treatment-aware targets skipped on this world: %s", err)
        fitted = None
    if fitted is not None:
        for scorer in scorers:
            target, _, method = scorer.partition(":")
            if target != "observed":
                scores[scorer] = fitted.model(target, method).predict_proba(test[names])
    seconds["fit_targets"] = time.perf_counter() - clock

    clock = time.perf_counter()
    truth = data.truth
    scores[CEILING] = fit_ceiling(dataset, truth, train_cfg, "p_productive_if_invited")
    has_uplift = NOT_INVITED in truth.columns
    if has_uplift:
        uplift_truth = truth.assign(true_uplift=truth["p_productive_if_invited"] - truth[NOT_INVITED])
        scores[f"{CEILING}:uplift"] = fit_ceiling(dataset, uplift_truth, train_cfg, "true_uplift")
    seconds["ceiling"] = time.perf_counter() - clock
    clock = time.perf_counter()
    for baseline in all_baselines(train, test, names, seed=train_cfg.seed, value_weights=train_cfg.value_weights):
        scores[baseline.name] = baseline.scores
    seconds["baselines"] = time.perf_counter() - clock

    p_invited = truth_for(truth, test["member_id"], dataset.split.test)
    uplift_value = p_invited - truth_column(truth, test, NOT_INVITED) if has_uplift else np.full(len(test), np.nan)
    labels = test["label"].to_numpy()
    top = resolve_k(k, len(test))
    suffix = k_label(k)
    rows = []
    for name, values in scores.items():
        order = rank_order(values, test["member_id"])
        rows.append(
            {
                "scorer": name,
                f"yield_ratio_at_{suffix}": top_k_ratio(values, p_invited, test["member_id"], top),
                f"precision_at_{suffix}": float(labels[order][:top].mean()),
                f"uplift_ratio_at_{suffix}": top_k_ratio(values, uplift_value, test["member_id"], top)
                if has_uplift
                else float("nan"),
            }
        )
    table = pd.DataFrame(rows).set_index("scorer")
    table.attrs.update({"test_cutoff": str(dataset.split.test.date()), "k": top, "rows": len(test)})
    return WorldResult(table=table, seconds={k: round(v, 1) for k, v in seconds.items()})


def run_grid(
    worlds: Iterable[tuple[str, int, BrandData]],
    train_cfg: TrainConfig,
    label_cfg: LabelConfig,
    *,
    scorers: Sequence[str] = DEFAULT_SCORERS,
    k: KSpec = "1%",
    tracking_uri: str | None = None,
    experiment: str = "kocrank-eval",
    on_cell: Callable[[str, int, WorldResult], None] | None = None,
) -> pd.DataFrame:
    """Every (scenario, seed) world through `evaluate_world`; one long table, logged as one MLflow run.

    `worlds` yields `(scenario, seed, data)` lazily, so one world is in memory at a time.
    """
    from training import tracking

    frames = []
    uri = tracking.resolve_tracking_uri(tracking_uri)
    with tracking.tracking_context(uri) as client:
        experiment_id = tracking.ensure_experiment(client, experiment, uri)
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.log_params(
                {
                    "k": str(k),
                    "scorers": ",".join(scorers),
                    "lgbm": json.dumps(train_cfg.lgbm.model_dump()),
                    "horizon_days": str(label_cfg.horizon_days),
                }
            )
            for scenario, seed, data in worlds:
                result = evaluate_world(data, train_cfg, label_cfg, scorers=scorers, k=k)
                cell = result.table.reset_index().assign(scenario=scenario, seed=seed)
                frames.append(cell)
                mlflow.log_metrics(
                    {
                        f"{scenario}.seed{seed}.{row.scorer.replace(':', '.')}.{metric}": float(getattr(row, metric))
                        for row in cell.itertuples()
                        for metric in result.table.columns
                        if not np.isnan(getattr(row, metric))
                    }
                )
                if on_cell is not None:
                    on_cell(scenario, seed, result)
            table = pd.concat(frames, ignore_index=True)
            table = table[["scenario", "seed", "scorer", *[c for c in table.columns if c.endswith(k_label(k))]]]
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "eval_grid.csv"
                table.to_csv(path, index=False)
                mlflow.log_artifact(str(path))
    return table
