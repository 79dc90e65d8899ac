"""`KocModel`: a deterministic LightGBM ranker-classifier with calibrated probabilities.

Calibration: Platt scaling (a one-feature logistic regression on the booster's raw
score) fitted on the validation cutoff by default. Platt is strictly monotone, so the
calibrated probabilities rank members exactly like the booster does; isotonic
regression (`calibration="isotonic"`) is available but flattens scores into ties.
As the issue asks, the validation cutoff serves both early stopping and calibration.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from features.registry import coerce_features

logger = logging.getLogger(__name__)

Objective = Literal["binary", "lambdarank"]
Calibration = Literal["platt", "isotonic"]

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
}
_ROUND_KEYS = ("num_boost_round", "early_stopping_rounds")


class NotFittedError(RuntimeError):
    """Raised when a KocModel is used before `fit`."""


def _feature_set_version() -> str:
    from features.registry import FEATURE_SET_VERSION

    return FEATURE_SET_VERSION


class KocModel:
    """LightGBM on the registry's features; `predict_proba` returns calibrated P(label = 1).

    Parameters are LightGBM parameters plus `num_boost_round` and `early_stopping_rounds`;
    the seed, thread count and determinism flags are set here so that the same data and
    seed always give the same booster.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        seed: int = 7,
        *,
        objective: Objective = "binary",
        calibration: Calibration = "platt",
        num_threads: int = 1,
        label_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.params = dict(params) if params is not None else dict(DEFAULT_PARAMS)
        self.seed = seed
        self.objective = objective
        self.calibration = calibration
        self.num_threads = num_threads
        self.label_config = dict(label_config) if label_config is not None else None

    # ------------------------------------------------------------------ fitting
    def _lgb_params(self) -> tuple[dict[str, Any], int, int]:
        params = {k: v for k, v in self.params.items() if k not in _ROUND_KEYS}
        num_boost_round = int(self.params.get("num_boost_round", 1000))
        early_stopping_rounds = int(self.params.get("early_stopping_rounds", 50))
        params.update(
            {
                "objective": self.objective,
                "seed": self.seed,
                "deterministic": True,
                "force_row_wise": True,
                "num_threads": self.num_threads,
                "verbosity": -1,
            }
        )
        if self.objective == "binary":
            params["metric"] = ["binary_logloss", "average_precision"]
        else:
            params["metric"] = ["ndcg"]
            params.setdefault("eval_at", [100])
        params["first_metric_only"] = True
        return params, num_boost_round, early_stopping_rounds

    def fit(
        self,
        X: pd.DataFrame,
        y: Sequence[int] | np.ndarray | pd.Series,
        X_val: pd.DataFrame,
        y_val: Sequence[int] | np.ndarray | pd.Series,
        sample_weight: Sequence[float] | np.ndarray | pd.Series | None = None,
        *,
        relevance: np.ndarray | pd.Series | None = None,
        relevance_val: np.ndarray | pd.Series | None = None,
        group: Sequence[int] | None = None,
        group_val: Sequence[int] | None = None,
    ) -> KocModel:
        """Fit on (X, y), early-stop and calibrate on (X_val, y_val); returns self.

        With `objective="lambdarank"` the booster learns the graded `relevance` within query
        `group`s (row counts per cutoff, in row order); `y`/`y_val` stay the binary labels
        used for calibration.
        """
        self._check_training_frame(X, "X")
        self._check_training_frame(X_val, "X_val")
        if list(X_val.columns) != list(X.columns):
            raise ValueError("X_val must have exactly the columns of X, in the same order")
        y_train = np.asarray(y, dtype="int64")
        y_valid = np.asarray(y_val, dtype="int64")
        if len(y_train) != len(X) or len(y_valid) != len(X_val):
            raise ValueError("labels must have one value per feature row")
        if y_valid.min(initial=0) == y_valid.max(initial=0):
            raise ValueError(
                "the validation cutoff holds a single class, so the model can be neither early-stopped "
                "nor calibrated; use more history or a later validation cutoff"
            )

        self.feature_names_ = list(X.columns)
        self.categorical_features_ = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
        self.categories_ = {c: list(X[c].cat.categories) for c in self.categorical_features_}
        params, num_boost_round, early_stopping_rounds = self._lgb_params()

        if self.objective == "lambdarank":
            if relevance is None or relevance_val is None or group is None or group_val is None:
                raise ValueError("objective 'lambdarank' needs relevance, relevance_val, group and group_val")
            train_target, valid_target = np.asarray(relevance), np.asarray(relevance_val)
        else:
            train_target, valid_target = y_train, y_valid
            group = group_val = None

        train_set = lgb.Dataset(
            self._model_input(X),
            label=train_target,
            weight=None if sample_weight is None else np.asarray(sample_weight, dtype="float64"),
            group=group,
            categorical_feature=self.categorical_features_ or "auto",
            free_raw_data=True,
        )
        valid_set = lgb.Dataset(
            self._model_input(X_val), label=valid_target, group=group_val, reference=train_set, free_raw_data=True
        )
        evals: dict[str, Any] = {}
        self.booster_ = lgb.train(
            params,
            train_set,
            num_boost_round=num_boost_round,
            valid_sets=[valid_set],
            valid_names=["validation"],
            callbacks=[
                lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False),
                lgb.record_evaluation(evals),
            ],
        )
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        self.validation_curve_ = {name: list(values) for name, values in evals.get("validation", {}).items()}

        raw_val = self.raw_score(X_val)
        self.calibrator_ = self._fit_calibrator(raw_val, y_valid)
        self.feature_set_version_ = _feature_set_version()
        self.label_config_ = self.label_config
        self.trained_at_ = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        logger.info("trained LightGBM (%s) on %d rows, best iteration %d", self.objective, len(X), self.best_iteration_)
        return self

    def _fit_calibrator(self, raw: np.ndarray, y: np.ndarray) -> LogisticRegression | IsotonicRegression:
        if self.calibration == "isotonic":
            return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)

    @staticmethod
    def _check_training_frame(X: pd.DataFrame, name: str) -> None:
        bad = [
            c
            for c in X.columns
            if not (isinstance(X[c].dtype, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(X[c].dtype))
            or pd.api.types.is_bool_dtype(X[c].dtype)
        ]
        if bad:
            raise TypeError(f"{name} columns must be numeric or pandas category; convert these first: {bad}")

    # ---------------------------------------------------------------- predicting
    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError("this KocModel is not fitted yet; call fit(X, y, X_val, y_val) first")

    def _model_input(self, X: pd.DataFrame) -> pd.DataFrame:
        """Select the fitted feature columns in order with the fitted dtypes (category / float64)."""
        names = getattr(self, "feature_names_", list(X.columns))
        missing = [c for c in names if c not in X.columns]
        if missing:
            version = getattr(self, "feature_set_version_", "?")
            raise ValueError(
                f"missing feature columns {missing}: build the rows with features.build.build_features "
                f"(the model was trained on feature set version {version})"
            )
        return coerce_features(X, names, getattr(self, "categories_", {}))

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        """The booster's raw margin (log-odds for `binary`) at the best iteration."""
        self._check_fitted()
        return np.asarray(
            self.booster_.predict(self._model_input(X), raw_score=True, num_iteration=self.best_iteration_)
        )

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability that each row's member becomes a productive KOC (label 1)."""
        raw = self.raw_score(X)
        if isinstance(self.calibrator_, IsotonicRegression):
            return np.asarray(self.calibrator_.predict(raw), dtype="float64")
        return np.asarray(self.calibrator_.predict_proba(raw.reshape(-1, 1))[:, 1], dtype="float64")

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions (`pred_contrib`, raw-score space); same index as X, bias left out."""
        self._check_fitted()
        contrib = self.booster_.predict(self._model_input(X), pred_contrib=True, num_iteration=self.best_iteration_)
        contrib = np.asarray(contrib)
        return pd.DataFrame(contrib[:, :-1], index=X.index, columns=self.feature_names_)

    def feature_importance(self, importance_type: Literal["gain", "split"] = "gain") -> pd.Series:
        """Total gain (or split count) per feature at the best iteration, largest first."""
        self._check_fitted()
        values = self.booster_.feature_importance(importance_type=importance_type, iteration=self.best_iteration_)
        return pd.Series(values, index=self.feature_names_, name=importance_type).sort_values(
            ascending=False, kind="stable"
        )

    def describe(self) -> dict[str, Any]:
        """What this model was trained on (for logs, tags and the pyfunc metadata)."""
        self._check_fitted()
        return {
            "objective": self.objective,
            "calibration": self.calibration,
            "seed": self.seed,
            "best_iteration": self.best_iteration_,
            "feature_set_version": self.feature_set_version_,
            "n_features": len(self.feature_names_),
            "label_config": self.label_config_,
            "trained_at": self.trained_at_,
        }
