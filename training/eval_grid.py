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

With `served`, each fold also judges what `koc train` would serve at its test cutoff: every
component refit on every complete cutoff whose labels are known there (those up to the fold's
validation cutoff, the embargoed ones included) with the fold's best iteration count, and
calibrated on the fold model's raw scores of the validation cutoff (`koc train` takes the median
iteration count of its own backtest and calibrates on its folds' out-of-time scores; one
fold stands in for that backtest here). Its rows are named `<scorer>@served`, and its ceiling,
`ceiling@served`, is the truth-trained learner refit on the same rows with its own iteration count.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd

from features.contract import BrandData
from features.labels import LabelConfig
from training.backtest import refit_component
from training.baselines import all_baselines
from training.config import KSpec, TrainConfig
from training.dataset import build_snapshots
from training.evaluate import k_label, rank_order, resolve_k, truth_for
from training.model import ACCEPT_COMPONENT, CompositeModel, KocModel
from training.targets import (
    COMPONENTS,
    IF_INVITED_METHODS,
    METHOD_DECLINED_PATH,
    FittedTarget,
    TargetUnavailable,
    components_for,
    fit_components,
    rows_of,
)
from training.train import fit_target, model_factory

logger = logging.getLogger(__name__)

CEILING = "ceiling"
SERVED = "@served"  # suffix of the served-model rows (`evaluate_world(served=True)`)
NOT_INVITED = "p_productive_if_not_invited"
UPLIFT_TRUTH = "true_uplift"  # p_productive_if_invited - NOT_INVITED, the uplift ceiling's label
# The invitation's paths in the simulator's truth (`kocrank.simulation.truth.PathProbabilities`), by the
# part of a two-path score that estimates each: `koc eval --decompose` swaps one part at a time for the
# same learner trained on its true value (rows `<scorer>/<part>_from_truth`).
PATH_TRUTH = {
    "accept": "p_accept_if_invited",
    "productive": "p_productive_if_accepted",
    "declined": "p_productive_after_decline",
}
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


def fit_ceiling(
    parts: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    names: list[str],
    truth: pd.DataFrame,
    train_cfg: TrainConfig,
    column: str,
    *,
    served_rows: pd.DataFrame | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Test scores of LightGBM trained on `truth[column]` (same params, features, early stopping).

    `parts` are one fold's (train, validation, test) rows; training and early stopping see only
    the rows the simulator has a truth value for. With `served_rows`, also the test scores of the
    same learner refit on those rows with the early-stopped iteration count: (fold, served).
    """
    fitted = {}
    named = zip(("train", "validation", "test", "served"), [*parts, served_rows], strict=True)
    for part, rows in ((part, rows) for part, rows in named if rows is not None):
        target = truth_column(truth, rows, column)
        fitted[part] = (rows.loc[~np.isnan(target)] if part != "test" else rows, target[~np.isnan(target)])
    model = model_factory(train_cfg, LabelConfig())()
    model._remember_columns(fitted["train"][0][names])
    params, rounds, stopping = model._lgb_params()
    regression = column == UPLIFT_TRUTH  # a difference of probabilities; every other truth column is one
    params.update({"objective": "regression" if regression else "cross_entropy", "metric": ["l2"]})
    layout = {"feature_name": model.feature_names_, "categorical_feature": model._categorical_positions()}
    train_set = lgb.Dataset(model._model_input(fitted["train"][0][names]), label=fitted["train"][1], **layout)
    valid_set = lgb.Dataset(
        model._model_input(fitted["validation"][0][names]), label=fitted["validation"][1], reference=train_set, **layout
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(stopping, verbose=False)],
    )
    test_input = model._model_input(fitted["test"][0][names])
    scores = np.asarray(booster.predict(test_input, num_iteration=booster.best_iteration))
    if served_rows is None:
        return scores
    served_set = lgb.Dataset(model._model_input(fitted["served"][0][names]), label=fitted["served"][1], **layout)
    refit = lgb.train(params, served_set, num_boost_round=max(booster.best_iteration, 1))
    return scores, np.asarray(refit.predict(test_input))


def refit_served(
    fitted: FittedTarget,
    rows: pd.DataFrame,
    valid: pd.DataFrame,
    names: list[str],
    make_model: Callable[..., KocModel],
    *,
    propensity_clip: float,
    rows_for: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]] | None = None,
) -> FittedTarget:
    """Each of a fold's components refit on `rows` (every complete cutoff known at the fold's test
    cutoff) with the component's best iteration count, calibrated on the fold model's raw scores
    of its validation rows, as `training.backtest.refit` calibrates on out-of-time scores.
    A component in `rows_for` (training, validation) refits on both and calibrates on the second."""
    served = FittedTarget(components={})
    rows_for = rows_for or {}
    for component, fold_model in fitted.components.items():
        own = rows_for.get(component)
        model = refit_component(
            served, component, fold_model, rows if own is None else pd.concat(own, ignore_index=True), names,
            make_model, fold_model.best_iteration_, propensity_clip=propensity_clip,
        )
        calibration = rows_of(valid if own is None else own[1], component)
        label = COMPONENTS[component].label
        model.calibrate(
            fold_model.raw_score(calibration[names]),
            calibration[label].to_numpy(),
            calibration["weight"].to_numpy(dtype=float),
        )
    return served


def path_swaps(model: KocModel, X: pd.DataFrame, truth_scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A two-path score with one part at a time (then all three) replaced by `truth_scores[part]`.

    The parts (`PATH_TRUTH`): `accept` is P(accept | invited); `productive` the product's other
    factor, P(productive | enrolled); `declined` the declined path. Where swapping a part lifts the
    yield most is where the target gap sits. Empty for a score without a declined path.
    """
    if (
        not isinstance(model, CompositeModel)
        or model.declined_ is None
        or model.control_ is not None  # an uplift: not a probability of the two paths
        or len(model.exponents_) != 2
    ):
        return {}
    (productive,) = [name for name in model.exponents_ if name != ACCEPT_COMPONENT]
    names = {"accept": ACCEPT_COMPONENT, "productive": productive, "declined": model.declined_}
    probas = model._component_probas(X, model._treated_names())

    def score(swapped: Iterable[str]) -> np.ndarray:
        parts = dict(probas) | {names[part]: np.clip(truth_scores[part], 0.0, 1.0) for part in swapped}
        return model._treated_from(parts)

    return {f"{part}_from_truth": score([part]) for part in names} | {"all_from_truth": score(names)}


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
    test_cutoffs: int = 1,
    served: bool = False,
    decompose: bool = False,
) -> WorldResult:
    """Every scorer (`observed`, `if_invited:<method>`, `uplift:<method>`), the ceiling and the baselines.

    Judged on the latest `test_cutoffs` test cutoffs (the rolling-origin folds of
    `training.dataset.backtest_splits`, oldest first): each fold fits everything on its own
    train cutoffs, early-stops and calibrates on its own validation cutoff and is scored on
    its test cutoff. The snapshots are built once and shared by every fold and target.
    With `served`, every scorer and the ceiling are also refit as `koc train` serves them
    (`refit_served`; rows `<scorer>@served`, `ceiling@served`). With `decompose`, each two-path
    scorer's fold model is also scored with each of its parts swapped for a ceiling of that part
    (`path_swaps`; rows `<scorer>/<part>_from_truth`), where the truth carries the invitation's paths.
    The table has one row per (test cutoff, scorer).
    """
    if "truth" in data.absent:
        raise ValueError("evaluate_world needs the simulator's truth table (simulate a world with `koc simulate`)")
    seconds: dict[str, float] = {"snapshots": 0.0, "fit_targets": 0.0, "ceiling": 0.0, "baselines": 0.0}
    if served:
        seconds["served"] = 0.0
    decomposed = [s for s in scorers if s.partition(":")[0] == "if_invited" and s.partition(":")[2] in METHOD_DECLINED_PATH]
    if decompose:
        missing_paths = [c for c in PATH_TRUTH.values() if c not in data.truth.columns or data.truth[c].isna().all()]
        if missing_paths:
            raise ValueError(f"decompose needs the invitation's paths in the truth table; it lacks {missing_paths}")
        seconds["decompose"] = 0.0
    clock = time.perf_counter()
    dataset = build_snapshots(data, label_cfg, train_cfg.model_copy(update={"backtest_cutoffs": test_cutoffs}))
    seconds["snapshots"] = time.perf_counter() - clock
    names = dataset.feature_names
    needed_all: list[str] = []
    for scorer in scorers:
        target, _, method = scorer.partition(":")
        needed_all += [c for c in components_for(target, method or "two_stage") if c not in needed_all]
    truth = data.truth
    has_uplift = NOT_INVITED in truth.columns
    rows = []
    for fold in dataset.folds:
        train, valid, test = dataset.fold_parts(fold)
        rows_for = dataset.component_rows(fold.test)  # every answer known at the test cutoff
        scores: dict[str, np.ndarray] = {}
        clock = time.perf_counter()
        needed = list(needed_all)
        observed = None
        if "observed" in needed:
            observed, _, _ = fit_target(
                train, valid, names, train_cfg.model_copy(update={"target": "observed"}), label_cfg
            )
            scores["observed"] = observed.predict_proba(test[names])
            needed.remove("observed")
        try:
            fitted = fit_components(
                train,
                valid,
                names,
                needed,
                model_factory(train_cfg, label_cfg),
                propensity_clip=train_cfg.propensity_clip,
                rows_for=rows_for,
            )
        except TargetUnavailable as err:
            logger.warning("treatment-aware targets skipped at test cutoff %s: %s", fold.test.date(), err)
            fitted = None
        if fitted is not None:
            for scorer in scorers:
                target, _, method = scorer.partition(":")
                if target != "observed":
                    scores[scorer] = fitted.model(target, method).predict_proba(test[names])
        seconds["fit_targets"] += time.perf_counter() - clock

        served_rows = dataset.known_rows(fold) if served else None
        if served_rows is not None:
            clock = time.perf_counter()
            make = model_factory(train_cfg, label_cfg)
            if observed is not None:
                alone = refit_served(
                    FittedTarget(components={"observed": observed}), served_rows, valid, names, make,
                    propensity_clip=train_cfg.propensity_clip,
                )
                scores["observed" + SERVED] = alone.model("observed", "single").predict_proba(test[names])
            if fitted is not None:
                own = {c: rows for c, rows in (rows_for or {}).items() if c in fitted.own_rows}  # not fallen back
                refit = refit_served(
                    fitted, served_rows, valid, names, make, propensity_clip=train_cfg.propensity_clip, rows_for=own
                )
                for scorer in scorers:
                    target, _, method = scorer.partition(":")
                    if target != "observed":
                        scores[scorer + SERVED] = refit.model(target, method).predict_proba(test[names])
            seconds["served"] += time.perf_counter() - clock

        clock = time.perf_counter()
        parts = (train, valid, test)
        if served_rows is None:
            scores[CEILING] = fit_ceiling(parts, names, truth, train_cfg, "p_productive_if_invited")
        else:
            scores[CEILING], scores[CEILING + SERVED] = fit_ceiling(
                parts, names, truth, train_cfg, "p_productive_if_invited", served_rows=served_rows
            )
        if has_uplift and any(scorer.startswith("uplift") for scorer in scorers):
            # the uplift ceiling is what an uplift scorer is judged against; without one it is not fitted
            uplift_truth = truth.assign(**{UPLIFT_TRUTH: truth["p_productive_if_invited"] - truth[NOT_INVITED]})
            scores[f"{CEILING}:uplift"] = fit_ceiling(parts, names, uplift_truth, train_cfg, UPLIFT_TRUTH)
        seconds["ceiling"] += time.perf_counter() - clock
        if decompose and decomposed and fitted is not None:
            clock = time.perf_counter()
            part_scores = {part: fit_ceiling(parts, names, truth, train_cfg, column) for part, column in PATH_TRUTH.items()}
            for scorer in decomposed:
                target, _, method = scorer.partition(":")
                swaps = path_swaps(fitted.model(target, method), test[names], part_scores)
                scores |= {f"{scorer}/{name}": values for name, values in swaps.items()}
            seconds["decompose"] += time.perf_counter() - clock
        clock = time.perf_counter()
        for baseline in all_baselines(train, test, names, seed=train_cfg.seed, value_weights=train_cfg.value_weights):
            scores[baseline.name] = baseline.scores
        seconds["baselines"] += time.perf_counter() - clock

        p_invited = truth_for(truth, test["member_id"], fold.test)
        uplift_value = p_invited - truth_column(truth, test, NOT_INVITED) if has_uplift else np.full(len(test), np.nan)
        labels = test["label"].to_numpy()
        top = resolve_k(k, len(test))
        suffix = k_label(k)
        for name, values in scores.items():
            order = rank_order(values, test["member_id"])
            rows.append(
                {
                    "test_cutoff": str(fold.test.date()),
                    "scorer": name,
                    f"yield_ratio_at_{suffix}": top_k_ratio(values, p_invited, test["member_id"], top),
                    f"precision_at_{suffix}": float(labels[order][:top].mean()),
                    f"uplift_ratio_at_{suffix}": top_k_ratio(values, uplift_value, test["member_id"], top)
                    if has_uplift
                    else float("nan"),
                }
            )
    table = pd.DataFrame(rows).set_index("scorer")
    table.attrs.update(
        {
            "test_cutoffs": [str(f.test.date()) for f in dataset.folds],
            "test_cutoff": str(dataset.split.test.date()),
            "k": top,
            "rows": len(test),
        }
    )
    return WorldResult(table=table, seconds={k: round(v, 1) for k, v in seconds.items()})


def summarise(grid: pd.DataFrame, k: KSpec = "1%") -> pd.DataFrame:
    """Per (scenario, scorer): mean over seeds and test cutoffs of each metric, the seed-to-seed
    spread of the yield ratio (max - min of the per-seed means) and the yield as a share of the
    ceiling's (mean of the per-(seed, cutoff) ratios)."""
    suffix = k_label(k)
    yield_col = f"yield_ratio_at_{suffix}"
    # a served row (`<scorer>@served`) is judged against the served ceiling, every other row against the ceiling
    ceilings = grid.loc[grid["scorer"].isin([CEILING, CEILING + SERVED]), ["scenario", "seed", "test_cutoff", "scorer", yield_col]]
    ceiling = ceilings.rename(columns={"scorer": "ceiling_of", yield_col: "ceiling_yield"})
    judged = grid.assign(ceiling_of=np.where(grid["scorer"].str.endswith(SERVED), CEILING + SERVED, CEILING))
    cells = judged.merge(ceiling, on=["scenario", "seed", "test_cutoff", "ceiling_of"], how="left")
    cells["of_ceiling"] = cells[yield_col] / cells["ceiling_yield"]
    metrics = [c for c in grid.columns if c.endswith(suffix)]
    per_seed = cells.groupby(["scenario", "scorer", "seed"], sort=False)[yield_col].mean()
    spread = per_seed.groupby(level=["scenario", "scorer"], sort=False).agg(lambda v: v.max() - v.min())
    summary = cells.groupby(["scenario", "scorer"], sort=False)[[*metrics, "of_ceiling"]].mean()
    summary[f"{yield_col}_seed_spread"] = spread
    return summary


def _metric_scorer(scorer: str) -> str:
    """A scorer's name as MLflow allows it in metric keys (`if_invited:two_path@served` -> `if_invited.two_path.served`)."""
    return scorer.replace(":", ".").replace(SERVED, "." + SERVED.lstrip("@"))


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
    test_cutoffs: int = 1,
    served: bool = False,
    decompose: bool = False,
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
                    "test_cutoffs": str(test_cutoffs),
                    "served": str(served).lower(),
                    "decompose": str(decompose).lower(),
                }
            )
            for scenario, seed, data in worlds:
                result = evaluate_world(
                    data, train_cfg, label_cfg, scorers=scorers, k=k, test_cutoffs=test_cutoffs, served=served,
                    decompose=decompose,
                )
                cell = result.table.reset_index().assign(scenario=scenario, seed=seed)
                frames.append(cell)
                metric_columns = [c for c in result.table.columns if c != "test_cutoff"]
                mlflow.log_metrics(
                    {
                        f"{scenario}.seed{seed}.{row.test_cutoff}.{_metric_scorer(row.scorer)}.{metric}": float(
                            getattr(row, metric)
                        )
                        for row in cell.itertuples()
                        for metric in metric_columns
                        if not np.isnan(getattr(row, metric))
                    }
                )
                if on_cell is not None:
                    on_cell(scenario, seed, result)
            table = pd.concat(frames, ignore_index=True)
            table = table[
                ["scenario", "seed", "test_cutoff", "scorer", *[c for c in table.columns if c.endswith(k_label(k))]]
            ]
            summary = summarise(table, k)
            mlflow.log_metrics(
                {
                    f"mean.{scenario}.{_metric_scorer(scorer)}.{metric}": float(value)
                    for (scenario, scorer), row in summary.iterrows()
                    for metric, value in row.items()
                    if not np.isnan(value)
                }
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "eval_grid.csv"
                table.to_csv(path, index=False)
                mlflow.log_artifact(str(path))
                summary_path = Path(tmp) / "eval_summary.csv"
                summary.reset_index().to_csv(summary_path, index=False)
                mlflow.log_artifact(str(summary_path))
    return table
