"""Rolling-origin backtest, and the served model refit on every cutoff with what the backtest chose.

Each fold (`training.dataset.backtest_splits`, oldest first) fits the configured target on its
own training cutoffs, early-stops and calibrates on its own validation cutoff, and is scored
on its own test cutoff. The summary (mean and spread of the primary metric and of PR AUC
over the folds) is what promotion compares (`bt_*` metrics, see TEAM/architecture docs).

The served model then uses the freshest labels known at training time: every component is
refit on every complete cutoff (`SnapshotDataset.refit_cutoffs`: the latest fold's train,
validation and test cutoffs and the ones its embargo left out) with the median of the folds'
best iteration counts, and calibrated on the folds' out-of-time raw scores (each
fold's booster scoring its own test cutoff, which it was not fitted on).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.contract import BrandData
from features.labels import LabelConfig
from training.config import TrainConfig
from training.dataset import CutoffSplit, SnapshotDataset
from training.evaluate import ScorerResult, evaluate_scores, k_label, truth_for
from training.model import ACCEPT_COMPONENT, CompositeModel, KocModel, raw_scores
from training.targets import (
    COMPONENTS,
    FittedTarget,
    TargetUnavailable,
    fit_inputs,
    fit_rows,
    fixed_inputs,
    inverse_propensity_weights,
    rows_mask,
    soft_training_rows,
)

logger = logging.getLogger(__name__)

FitTarget = Callable[..., tuple[KocModel, FittedTarget, "str | None"]]


@dataclass
class FoldResult:
    """One fold: its split, the fitted target and its metrics on the fold's test cutoff."""

    split: CutoffSplit
    model: KocModel
    fitted: FittedTarget
    result: ScorerResult
    # component -> (raw scores, labels) on the fold's own test rows, for the refit's out-of-time
    # calibration; kept instead of the test rows themselves (3 x 750k rows x 131 features at 1M)
    out_of_time: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    scores: np.ndarray | None = None  # the model's scores on the test rows (`step_evaluate` reuses the latest's)


@dataclass
class BacktestResult:
    """Every fold, oldest first, plus the target actually learnt (after any fallback)."""

    folds: list[FoldResult]
    primary: str
    target: str
    method: str
    fallback: str | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def latest(self) -> FoldResult:
        return self.folds[-1]

    def _values(self, metric: str) -> np.ndarray:
        return np.array([f.result.metrics.get(metric, float("nan")) for f in self.folds], dtype=float)

    def summary(self) -> dict[str, Any]:
        """`{"primary", "mean", "std", "pr_auc_mean", "n_cutoffs"}` as `promote_if_better` takes it."""
        primary = self._values(self.primary)
        return {
            "primary": self.primary,
            "mean": float(np.nanmean(primary)) if not np.isnan(primary).all() else float("nan"),
            "std": float(np.nanstd(primary)) if not np.isnan(primary).all() else float("nan"),
            "pr_auc_mean": float(np.nanmean(self._values("pr_auc"))),
            "n_cutoffs": len(self.folds),
            "test_cutoff": self.latest.split.test.date().isoformat(),
        }

    def metrics(self) -> dict[str, float]:
        """MLflow metrics `bt_mean_<primary>`, `bt_std_<primary>`, `bt_mean_pr_auc`, `bt_n_cutoffs`."""
        s = self.summary()
        values = {
            f"bt_mean_{self.primary}": s["mean"],
            f"bt_std_{self.primary}": s["std"],
            "bt_mean_pr_auc": s["pr_auc_mean"],
            "bt_n_cutoffs": float(s["n_cutoffs"]),
        }
        return {k: v for k, v in values.items() if not math.isnan(v)}

    def iterations(self) -> dict[str, int]:
        """Median best iteration of each component over the folds."""
        names = self.latest.fitted.components
        return {
            name: int(
                np.median(
                    [f.fitted.components[name].best_iteration_ for f in self.folds if name in f.fitted.components]
                )
            )
            for name in names
        }

    def table(self) -> pd.DataFrame:
        """One row per fold: cutoffs, rows, every metric and each component's best iteration."""
        rows = []
        for fold in self.folds:
            row: dict[str, Any] = {
                "test_cutoff": fold.split.test.date().isoformat(),
                "validation_cutoff": fold.split.validation.date().isoformat(),
                "train_cutoffs": len(fold.split.train),
                "first_train_cutoff": fold.split.train[0].date().isoformat(),
            }
            row.update(fold.result.metrics)
            row.update({f"best_iteration.{n}": m.best_iteration_ for n, m in fold.fitted.components.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def fold_scores(
    model: KocModel,
    fitted: FittedTarget,
    test: pd.DataFrame,
    names: list[str],
    answered: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(the model's scores on a fold's test rows, each component's out-of-time (raw, labels)).

    Each component's booster runs once over the test rows: its raw scores give both its
    out-of-time calibration rows and, through the calibrator, the composite's probability
    (exactly `model.predict_proba`). Before, the test cutoff was predicted twice per component.
    `answered` (a mask of the test rows): the rows whose invitation's answer is known when the
    refit is made; P(accept | invited) is calibrated on those only, so an invitation too recent
    to be answered never reads as a decline.
    """
    components = fitted.components
    raws = raw_scores(components, test[names])
    out_of_time = {}
    for component, raw in raws.items():
        mask = rows_mask(test, component)
        if component == ACCEPT_COMPONENT and answered is not None:
            mask = answered if mask is None else mask & answered
        labels = test[COMPONENTS[component].label].to_numpy()
        out_of_time[component] = (raw, labels) if mask is None else (raw[mask], labels[mask])
    by_identity = {id(m): c for c, m in components.items()}
    if isinstance(model, CompositeModel) and all(id(m) in by_identity for m in model.components_.values()):
        probas = {name: m._proba_from_raw(raws[by_identity[id(m)]]) for name, m in model.components_.items()}
        return model.combine(probas), out_of_time
    if id(model) in by_identity:
        return model._proba_from_raw(raws[by_identity[id(model)]]), out_of_time
    return model.predict_proba(test[names]), out_of_time


def _score_fold(
    name: str,
    model: KocModel,
    test: pd.DataFrame,
    scores: np.ndarray,
    data: BrandData,
    fold: CutoffSplit,
    cfg: TrainConfig,
) -> ScorerResult:
    at = fold.test
    truth = None if "truth" in data.absent else truth_for(data.rows_at("truth", at), test["member_id"], at)
    return evaluate_scores(
        name,
        scores,
        test["label"].to_numpy(),
        test["member_id"],
        cfg.k_list,
        is_probability=model.target_ != "uplift",
        truth=truth,
        reliability_bins=cfg.reliability_bins,
    )


def run_backtest(
    dataset: SnapshotDataset,
    data: BrandData,
    train_cfg: TrainConfig,
    label_cfg: LabelConfig,
    fit_target: FitTarget,
    *,
    issued: pd.DataFrame | None = None,
) -> BacktestResult:
    """Fit and score every fold; the latest fold first decides the target actually learnt."""
    names = dataset.feature_names
    primary = f"precision_at_{k_label(train_cfg.primary_k)}"
    folds: dict[int, FoldResult] = {}
    effective = train_cfg
    fallback: str | None = None
    skipped: list[str] = []
    order = list(range(len(dataset.folds)))[::-1]  # latest first: it has the most data
    for position in order:
        fold = dataset.folds[position]
        train, valid, test = dataset.fold_parts(fold)
        answers = dataset.component_rows(fold.test)  # every answer known at the fold's test cutoff
        try:
            model, fitted, why = fit_target(train, valid, names, effective, label_cfg, issued=issued, rows_for=answers)
        except (TargetUnavailable, ValueError) as err:
            if position == order[0]:
                raise
            logger.warning("backtest fold with test cutoff %s left out: %s", fold.test.date(), err)
            skipped.append(f"{fold.test.date()}: {err}")
            continue
        if position == order[0] and why is not None:
            fallback = why
            learnt = {"target": "observed"} if model.target_ == "observed" else {"target_method": model.target_method_}
            effective = train_cfg.model_copy(update=learnt)
        expected = (effective.target, "single" if effective.target == "observed" else effective.target_method)
        if (model.target_, model.target_method_) != expected and position != order[0]:
            skipped.append(f"{fold.test.date()}: fell back to {model.target_} ({model.target_method_})")
            continue
        scores, out_of_time = fold_scores(model, fitted, test, names, dataset.answered_mask(test))
        result = _score_fold("model", model, test, scores, data, fold, train_cfg)
        folds[position] = FoldResult(
            split=fold, model=model, fitted=fitted, result=result, out_of_time=out_of_time, scores=scores
        )
        del train, valid, test, answers
    ordered = [folds[p] for p in sorted(folds)]
    latest = ordered[-1].model
    return BacktestResult(
        folds=ordered,
        primary=primary,
        target=latest.target_,
        method=latest.target_method_,
        fallback=fallback,
        skipped=skipped,
    )


def _out_of_time(backtest: BacktestResult, component: str) -> tuple[np.ndarray, np.ndarray]:
    """Each fold's raw scores of `component` on its own test cutoff (rows the fold never fitted on)."""
    parts = [fold.out_of_time[component] for fold in backtest.folds if component in fold.out_of_time]
    return np.concatenate([raw for raw, _ in parts]), np.concatenate([labels for _, labels in parts])


def refit(
    dataset: SnapshotDataset,
    backtest: BacktestResult,
    make_model: Callable[..., KocModel],
    train_cfg: TrainConfig,
    *,
    issued: pd.DataFrame | None = None,
) -> KocModel:
    """The served model: every component refit on every complete cutoff, calibrated out of time.

    Falls back to the latest fold's model for lambdarank (no fixed-round refit) or when
    `training.refit` is off, or when a component's out-of-time rows hold a single class.
    """
    latest = backtest.latest
    if not train_cfg.refit or train_cfg.objective != "binary":
        return latest.model
    names = dataset.feature_names
    rows = dataset.all_rows()
    # P(accept | invited) from every answer known when the programme log ends (`SnapshotDataset.answered_rows`)
    end = dataset.answers_end
    answered = dataset.answered_rows(end) if dataset.answers_known and end is not None else None
    iterations = backtest.iterations()
    fitted = FittedTarget(components={}, rows={})
    for component, fold_model in latest.fitted.components.items():
        raw, y = _out_of_time(backtest, component)
        if y.min(initial=0) == y.max(initial=0):
            logger.warning("refit skipped: %s's out-of-time rows hold one class; serving the latest fold", component)
            return latest.model
        own = answered if component == ACCEPT_COMPONENT and answered is not None else rows
        model = refit_component(
            fitted, component, fold_model, own, names, make_model, iterations[component],
            propensity_clip=train_cfg.propensity_clip, issued=issued,
        )
        model.calibrate(raw, y)
    return fitted.model(backtest.target, backtest.method)


def refit_component(
    fitted: FittedTarget,
    component: str,
    fold_model: KocModel,
    rows: pd.DataFrame,
    names: list[str],
    make_model: Callable[..., KocModel],
    iterations: int,
    *,
    propensity_clip: float,
    issued: pd.DataFrame | None = None,
) -> KocModel:
    """`component` refit on its share of `rows` with `iterations` trees, added to `fitted`; not calibrated.

    The leaf size, an S-learner's fixed input and a linear part's weight and C are the fold model's; IPW weights come from the
    propensity component `fitted` already holds. The caller calibrates on scores of rows the
    refit never saw (`refit`: the folds' out-of-time scores).
    """
    label = COMPONENTS[component].label
    part = fit_rows(rows, component)
    counts = {"train_rows": len(part), "train_positives": int(part[label].sum())}  # 0/1 outcomes
    if COMPONENTS[component].soft:  # the denoised label, learnt by cross-entropy
        part = soft_training_rows(rows, component, fold_model.label_config)
    weight = part["weight"].to_numpy(dtype=float)
    if component == "invited_outcome":
        weight, fitted.propensity = inverse_propensity_weights(
            part, names, fitted.components.get("propensity"), clip=propensity_clip, issued=issued
        )
    linear = {}
    if fold_model.linear_ is not None:  # the same blend, with the regularisation its fold chose
        linear = {"linear": True, "linear_weight": fold_model.linear_weight(), "linear_C": fold_model.linear_.C}
    model = make_model(min_data_in_leaf=fold_model.params["min_data_in_leaf"], **linear)
    if COMPONENTS[component].given is not None:  # an S-learner scores with its given input fixed
        model.fixed_inputs_ = fixed_inputs(component)
    model.fit_fixed(fit_inputs(part, names, component), part[label].to_numpy(), iterations, sample_weight=weight)
    model.target_method_ = fold_model.target_method_
    fitted.components[component] = model
    fitted.rows[component] = counts
    return model
