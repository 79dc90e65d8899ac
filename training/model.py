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
from types import MappingProxyType
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from features.registry import coerce_features
from training.config import LgbmParams
from training.linear import LinearPart

logger = logging.getLogger(__name__)

Objective = Literal["binary", "lambdarank"]
Calibration = Literal["platt", "isotonic"]

_ROUND_KEYS = ("num_boost_round", "early_stopping_rounds", "monotone_increasing")
# model parameters that are not LightGBM's: the blended linear part (`training.linear`). `linear` (bool) is
# set per model by `training.targets` for the components `linear_components` names; `linear_C` fixes a
# refit's regularisation to the one its fold model chose
_LINEAR_KEYS = ("linear", "linear_weight", "linear_components", "linear_C")


class NotFittedError(RuntimeError):
    """Raised when a KocModel is used before `fit`."""


def _feature_set_version() -> str:
    from features.registry import FEATURE_SET_VERSION

    return FEATURE_SET_VERSION


class KocModel:
    """LightGBM on the registry's features; `predict_proba` returns calibrated P(label = 1).

    Parameters are LightGBM parameters plus `num_boost_round` and `early_stopping_rounds`
    (default: `training.config.LgbmParams`, the one home of the defaults); the seed, thread
    count and determinism flags are set here so that the same data and seed always give the
    same booster. `target_` says what the probability means (`observed`: enrolled and
    productive under the past policy; see `training.targets` and `CompositeModel`).
    """

    target_: str = "observed"  # class defaults: models saved before target modes read as observed
    target_method_: str = "single"
    input_dtype_: str = "float64"  # models saved before float32 inputs keep scoring in float64
    # inputs set to a constant when scoring (an S-learner's "given" outcome); absent from the feature rows
    fixed_inputs_: Mapping[str, float] = MappingProxyType({})
    linear_: LinearPart | None = None  # a logistic regression blended in log-odds (models before it: none)

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
        self.params = dict(params) if params is not None else LgbmParams().model_dump()
        self.seed = seed
        self.objective = objective
        self.calibration = calibration
        self.num_threads = num_threads
        self.label_config = dict(label_config) if label_config is not None else None

    # ------------------------------------------------------------------ fitting
    def _lgb_params(self, soft: bool = False) -> tuple[dict[str, Any], int, int]:
        """LightGBM's parameters, round count and early-stopping patience. `soft`: the training label
        is a probability (a soft label), learnt by the `cross_entropy` objective; metrics, raw
        scores and probabilities are those of the binary objective."""
        params = {k: v for k, v in self.params.items() if k not in _ROUND_KEYS + _LINEAR_KEYS}
        num_boost_round = int(self.params.get("num_boost_round", 1000))
        early_stopping_rounds = int(self.params.get("early_stopping_rounds", 50))
        params.update(
            {
                "objective": "cross_entropy" if soft else self.objective,
                "seed": self.seed,
                "deterministic": True,
                "force_row_wise": True,
                "num_threads": self.num_threads,
                "verbosity": -1,
            }
        )
        prefixes = tuple(self.params.get("monotone_increasing", ()))
        names = getattr(self, "feature_names_", [])
        if prefixes and any(name.startswith(prefixes) for name in names):
            params["monotone_constraints"] = [int(name.startswith(prefixes)) for name in names]
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
        y: Sequence[float] | np.ndarray | pd.Series,
        X_val: pd.DataFrame,
        y_val: Sequence[int] | np.ndarray | pd.Series,
        sample_weight: Sequence[float] | np.ndarray | pd.Series | None = None,
        *,
        relevance: np.ndarray | pd.Series | None = None,
        relevance_val: np.ndarray | pd.Series | None = None,
        group: Sequence[int] | None = None,
        group_val: Sequence[int] | None = None,
        sample_weight_val: Sequence[float] | np.ndarray | pd.Series | None = None,
    ) -> KocModel:
        """Fit on (X, y), early-stop and calibrate on (X_val, y_val); returns self.

        `sample_weight_val`: weights of the validation rows (1/keep-probability when the
        validation cutoff was sampled), used by the early-stopping metric and the calibrator.
        `y` may be a soft label (a probability per row), learnt by cross-entropy; `y_val` is 0/1.

        With `objective="lambdarank"` the booster learns the graded `relevance` within query
        `group`s (row counts per cutoff, in row order); `y`/`y_val` stay the binary labels
        used for calibration.
        """
        self._check_training_frame(X, "X")
        self._check_training_frame(X_val, "X_val")
        if list(X_val.columns) != list(X.columns):
            raise ValueError("X_val must have exactly the columns of X, in the same order")
        y_train, soft = self._training_label(y)
        y_valid = np.asarray(y_val, dtype="int64")
        if len(y_train) != len(X) or len(y_valid) != len(X_val):
            raise ValueError("labels must have one value per feature row")
        if y_valid.min(initial=0) == y_valid.max(initial=0):
            raise ValueError(
                "the validation cutoff holds a single class, so the model can be neither early-stopped "
                "nor calibrated; use more history or a later validation cutoff"
            )

        self._remember_columns(X)
        params, num_boost_round, early_stopping_rounds = self._lgb_params(soft)

        if self.objective == "lambdarank":
            if relevance is None or relevance_val is None or group is None or group_val is None:
                raise ValueError("objective 'lambdarank' needs relevance, relevance_val, group and group_val")
            train_target, valid_target = np.asarray(relevance), np.asarray(relevance_val)
        else:
            train_target, valid_target = y_train, y_valid
            group = group_val = None

        matrix, matrix_val = self._model_input(X), self._model_input(X_val)
        train_set = self._dataset(matrix, train_target, sample_weight, group)
        valid_set = lgb.Dataset(
            matrix_val, label=valid_target, group=group_val, reference=train_set, free_raw_data=True,
            feature_name=self.feature_names_, categorical_feature=self._categorical_positions(),
            weight=None if sample_weight_val is None else np.asarray(sample_weight_val, dtype="float64"),
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
        self._fit_linear(matrix, y_train, soft, sample_weight, validation=(matrix_val, y_valid, sample_weight_val))
        del matrix
        self.calibrate(self._raw_from_input(matrix_val), y_valid, sample_weight_val)
        self._stamp()
        logger.info("trained LightGBM (%s) on %d rows, best iteration %d", self.objective, len(X), self.best_iteration_)
        return self

    def fit_fixed(
        self,
        X: pd.DataFrame,
        y: Sequence[float] | np.ndarray | pd.Series,
        num_boost_round: int,
        sample_weight: Sequence[float] | np.ndarray | pd.Series | None = None,
    ) -> KocModel:
        """Fit `num_boost_round` trees on (X, y) without a validation set (the refit on every cutoff).

        The round count comes from the rolling-origin backtest; the calibrator is not fitted here:
        call `calibrate` with raw scores of rows this booster was not fitted on.
        """
        if self.objective != "binary":
            raise ValueError("fit_fixed supports the binary objective only")
        self._check_training_frame(X, "X")
        y_train, soft = self._training_label(y)
        if len(y_train) != len(X):
            raise ValueError("labels must have one value per feature row")
        self._remember_columns(X)
        params, _, _ = self._lgb_params(soft)
        matrix = self._model_input(X)
        train_set = self._dataset(matrix, y_train, sample_weight, None)
        self.booster_ = lgb.train(params, train_set, num_boost_round=int(num_boost_round))
        self.best_iteration_ = int(num_boost_round)
        self.validation_curve_ = {}
        self._fit_linear(matrix, y_train, soft, sample_weight)
        self._stamp()
        return self

    def linear_weight(self) -> float:
        """The weight of the linear part in the raw score (0: the booster alone)."""
        return float(self.params.get("linear_weight", 0.0)) if self.params.get("linear") else 0.0

    def _fit_linear(
        self,
        matrix: np.ndarray,
        y: np.ndarray,
        soft: bool,
        sample_weight: Sequence[float] | np.ndarray | pd.Series | None,
        *,
        validation: tuple[np.ndarray, np.ndarray, Any] | None = None,
    ) -> None:
        """Fit the linear part when this model has one: C chosen on `validation`, or `params["linear_C"]` (a refit)."""
        self.linear_ = None
        if self.linear_weight() <= 0:
            return
        if soft:
            raise ValueError("a linear part learns a 0/1 label; this model's label is soft")
        C = self.params.get("linear_C")
        if C is None and validation is None:
            raise ValueError("a refit with a linear part needs params['linear_C'] (the C its fold model chose)")
        # numeric behaviour only: categoricals (demographics, channel) have no tails to extrapolate into, and a
        # feature the score must rise with (`monotone_increasing`) stays the booster's, whose constraint holds
        prefixes = tuple(self.params.get("monotone_increasing", ()))
        exclude = [
            i for i, name in enumerate(self.feature_names_)
            if name in self.categorical_features_ or (prefixes and name.startswith(prefixes))
        ]
        self.linear_ = LinearPart.fit(
            matrix, y, sample_weight, C=None if C is None else float(C), validation=None if C is not None else validation,
            exclude=exclude,
        )

    def _training_label(self, y: Sequence[float] | np.ndarray | pd.Series) -> tuple[np.ndarray, bool]:
        """The training label and whether it is soft: 0/1 as int64, or a probability per row (float64,
        in [0, 1]; the binary objective only), which LightGBM learns by cross-entropy."""
        values = np.asarray(y, dtype="float64")
        if np.isin(values, (0.0, 1.0)).all():
            return values.astype("int64"), False
        if self.objective != "binary":
            raise ValueError(f"a soft (fractional) label needs the binary objective, not {self.objective!r}")
        if np.isnan(values).any() or values.min() < 0.0 or values.max() > 1.0:
            raise ValueError("a soft label must be a probability in [0, 1] on every row")
        return values, True

    def calibrate(
        self,
        raw: np.ndarray,
        y: Sequence[int] | np.ndarray,
        sample_weight: Sequence[float] | np.ndarray | pd.Series | None = None,
    ) -> KocModel:
        """Fit the calibrator on raw scores and labels of rows the booster was not fitted on (optionally weighted)."""
        labels = np.asarray(y, dtype="int64")
        if labels.min(initial=0) == labels.max(initial=0):
            raise ValueError("calibration rows hold a single class; the calibrator needs both")
        weight = None if sample_weight is None else np.asarray(sample_weight, dtype="float64")
        self.calibrator_ = self._fit_calibrator(np.asarray(raw, dtype="float64"), labels, weight)
        return self

    def _remember_columns(self, X: pd.DataFrame) -> None:
        self.input_dtype_ = "float32"
        self.feature_names_ = list(X.columns)
        self.categorical_features_ = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
        self.categories_ = {c: list(X[c].cat.categories) for c in self.categorical_features_}

    def _dataset(
        self,
        matrix: np.ndarray,
        target: np.ndarray,
        sample_weight: Sequence[float] | np.ndarray | pd.Series | None,
        group: Sequence[int] | None,
    ) -> lgb.Dataset:
        return lgb.Dataset(
            matrix,
            label=target,
            weight=None if sample_weight is None else np.asarray(sample_weight, dtype="float64"),
            group=group,
            feature_name=self.feature_names_,
            categorical_feature=self._categorical_positions(),
            free_raw_data=True,
        )

    def _categorical_positions(self) -> list[int]:
        return [self.feature_names_.index(name) for name in self.categorical_features_]

    def _stamp(self) -> None:
        self.feature_set_version_ = _feature_set_version()
        self.label_config_ = self.label_config
        self.trained_at_ = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def _fit_calibrator(
        self, raw: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
    ) -> LogisticRegression | IsotonicRegression:
        if self.calibration == "isotonic":
            return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y, sample_weight=weight)
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y, sample_weight=weight)
        if platt.coef_[0, 0] <= 0:
            # a slope <= 0 would reverse (or flatten) the booster's ranking: on a handful of calibration
            # rows that is noise, so keep the booster's own probability (slope 1, intercept 0)
            logger.warning(
                "Platt calibration on %d rows found slope %.3g <= 0; keeping the booster's own probabilities",
                len(y), platt.coef_[0, 0],
            )
            platt.coef_, platt.intercept_ = np.ones((1, 1)), np.zeros(1)
        return platt

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

    def _model_input(self, X: pd.DataFrame) -> np.ndarray:
        """The fitted feature columns in order as one float32 matrix (float64 for older models).

        Categoricals become their codes in the fitted levels (missing: NaN), as LightGBM's own
        pandas conversion does; filling one matrix column by column avoids the float64 copies
        of a whole frame that `coerce_features` + LightGBM's conversion would make.
        """
        names = getattr(self, "feature_names_", list(X.columns))
        fixed = self.fixed_inputs_
        missing = [c for c in names if c not in X.columns and c not in fixed]
        if missing:
            version = getattr(self, "feature_set_version_", "?")
            raise ValueError(
                f"missing feature columns {missing}: build the rows with features.build.build_features "
                f"(the model was trained on feature set version {version})"
            )
        categories = getattr(self, "categories_", {})
        coded = coerce_features(X, [c for c in names if c in categories], categories) if categories else X
        matrix = np.empty((len(X), len(names)), dtype=self.input_dtype_)
        for position, name in enumerate(names):
            if name in categories:
                codes = coded[name].cat.codes.to_numpy()
                matrix[:, position] = np.where(codes < 0, np.nan, codes)
                continue
            if name not in X.columns:  # a fixed input: the rows never carry it
                matrix[:, position] = fixed[name]
                continue
            column = X[name]
            if not pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
                column = pd.to_numeric(column.astype("object"), errors="raise")
            matrix[:, position] = column.to_numpy(dtype="float64", na_value=np.nan)
        return matrix

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        """The booster's raw margin (log-odds for `binary`) at the best iteration."""
        self._check_fitted()
        return self._raw_from_input(self._model_input(X))

    def _raw_from_input(self, matrix: np.ndarray) -> np.ndarray:
        compiled = self.__dict__.get("compiled_")  # serving.compiled: the same raw scores from native code
        if compiled is not None:
            raw = np.asarray(compiled(matrix))
        else:
            raw = np.asarray(self.booster_.predict(matrix, raw_score=True, num_iteration=self.best_iteration_))
        if self.linear_ is None:
            return raw
        weight = self.linear_weight()
        return (1.0 - weight) * raw + weight * self.linear_.raw(matrix)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("compiled_", None)  # a handle to native code in this process: never pickled
        return state

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability that each row's member becomes a productive KOC (label 1)."""
        self._check_fitted()
        return self._proba_from_input(self._model_input(X))

    def _proba_from_input(self, matrix: np.ndarray) -> np.ndarray:
        """`predict_proba` of rows already converted by `_model_input`."""
        return self._proba_from_raw(self._raw_from_input(matrix))

    def _proba_from_raw(self, raw: np.ndarray) -> np.ndarray:
        """The calibrated probability of raw margins from this booster."""
        if isinstance(self.calibrator_, IsotonicRegression):
            return np.asarray(self.calibrator_.predict(raw), dtype="float64")
        return np.asarray(self.calibrator_.predict_proba(raw.reshape(-1, 1))[:, 1], dtype="float64")

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions (`pred_contrib`, raw-score space); same index as X, bias left out."""
        self._check_fitted()
        return pd.DataFrame(self._contributions_from_input(self._model_input(X)), index=X.index, columns=self.feature_names_)

    def _contributions_from_input(self, matrix: np.ndarray) -> np.ndarray:
        """`contributions` of rows already converted by `_model_input`, as an array."""
        contrib = np.asarray(self.booster_.predict(matrix, pred_contrib=True, num_iteration=self.best_iteration_))[:, :-1]
        if self.linear_ is None:
            return contrib
        weight = self.linear_weight()
        return (1.0 - weight) * contrib + weight * self.linear_.contributions(matrix)

    def feature_importance(self, importance_type: Literal["gain", "split"] = "gain") -> pd.Series:
        """Total gain (or split count) per feature at the best iteration, largest first."""
        self._check_fitted()
        values = self.booster_.feature_importance(importance_type=importance_type, iteration=self.best_iteration_)
        return pd.Series(values, index=self.feature_names_, name=importance_type).sort_values(
            ascending=False, kind="stable"
        )


def model_inputs(models: Mapping[str, KocModel], X: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each model's `_model_input(X)`: models fitted on the same inputs share one converted matrix,
    which would otherwise be built once per model (for one member, most of the time of a score or
    its reasons)."""

    def signature(model: KocModel) -> str:
        return repr((list(model.feature_names_), getattr(model, "categories_", {}), model.input_dtype_, dict(model.fixed_inputs_)))

    matrices: dict[str, np.ndarray] = {}
    inputs = {}
    for name, model in models.items():
        key = signature(model)
        if key not in matrices:
            matrices[key] = model._model_input(X)
        inputs[name] = matrices[key]
    return inputs


def raw_scores(models: Mapping[str, KocModel], X: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each model's `raw_score(X)`, from shared input matrices (`model_inputs`)."""
    for model in models.values():
        model._check_fitted()
    inputs = model_inputs(models, X)
    return {name: model._raw_from_input(inputs[name]) for name, model in models.items()}


ACCEPT_COMPONENT = "accept"  # the P(accept | invited) component a declined path multiplies by 1 - p


class CompositeModel(KocModel):
    """Fitted KocModels combined into one score: `log p = sum_c exponent_c * log p_c`.

    With a `declined` component the declined path is added: `p = prod + (1 - p_accept) * p_declined`
    (`two_path`: accept then produce as a KOC, or decline and take the path of the members nobody
    invited). With a `control` component the score is an uplift, `p - p_control` (it can be
    negative). Contributions and importances are the exponent-weighted sums of the components'
    (minus the control's): exact in log space for a product of probabilities; with a declined
    path each path's log-space contributions are weighted by its share of the row's probability,
    and for the uplift difference they are an approximation. Built by `training.targets` from
    components that are already fitted.
    """

    declined_: str | None = None  # models pickled before the declined path read as without one

    def __init__(
        self,
        components: Mapping[str, KocModel],
        exponents: Mapping[str, float],
        *,
        target: str,
        method: str,
        control: str | None = None,
        declined: str | None = None,
    ) -> None:
        first = next(iter(components.values()))
        super().__init__(
            first.params,
            first.seed,
            objective=first.objective,
            calibration=first.calibration,
            num_threads=first.num_threads,
            label_config=first.label_config,
        )
        named = [*exponents, *([control] if control else []), *([declined] if declined else [])]
        unknown = [name for name in named if name not in components]
        if unknown:
            raise ValueError(f"components {unknown} are named but not given (given: {sorted(components)})")
        if declined is not None and ACCEPT_COMPONENT not in exponents:
            raise ValueError(f"a declined path needs the {ACCEPT_COMPONENT!r} component among the product's")
        self.components_ = dict(components)
        self.exponents_ = dict(exponents)
        self.control_ = control
        self.declined_ = declined
        self.target_ = target
        self.target_method_ = method
        for attribute in ("feature_names_", "categorical_features_", "categories_", "feature_set_version_"):
            setattr(self, attribute, getattr(first, attribute))
        self.label_config_ = first.label_config_
        self.trained_at_ = max(c.trained_at_ for c in self.components_.values())
        self.best_iterations_ = {name: c.best_iteration_ for name, c in self.components_.items()}
        self.best_iteration_ = max(self.best_iterations_.values())
        self.booster_ = first.booster_  # marks the model fitted; scoring goes through the components

    def _weights(self) -> dict[str, float]:
        weights = dict(self.exponents_)
        if self.declined_ is not None:
            weights[self.declined_] = weights.get(self.declined_, 0.0) + 1.0
        if self.control_ is not None:
            weights[self.control_] = weights.get(self.control_, 0.0) - 1.0
        return weights

    def _component_probas(
        self, X: pd.DataFrame, names: Sequence[str], inputs: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Each named component's `predict_proba(X)`, from one shared input matrix (`model_inputs`,
        or `inputs` already built from X)."""
        chosen = {name: self.components_[name] for name in names}
        inputs = model_inputs(chosen, X) if inputs is None else inputs
        return {name: model._proba_from_input(inputs[name]) for name, model in chosen.items()}

    def _treated_names(self) -> list[str]:
        """The components P(productive | invited) is made of (the product's, then the declined path's)."""
        return [*self.exponents_, *([self.declined_] if self.declined_ else [])]

    def _product_from(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        log_p = 0.0
        for name, exponent in self.exponents_.items():
            log_p = log_p + exponent * np.log(np.clip(probas[name], 1e-12, 1.0))
        return np.exp(log_p)

    def _declined_from(self, probas: Mapping[str, np.ndarray]) -> np.ndarray | float:
        if self.declined_ is None:
            return 0.0
        return (1.0 - np.clip(probas[ACCEPT_COMPONENT], 0.0, 1.0)) * probas[self.declined_]

    def _treated_from(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._product_from(probas) + self._declined_from(probas)

    def combine(self, probas: Mapping[str, np.ndarray]) -> np.ndarray:
        """`predict_proba` from the components' own probabilities (each exponent's and the control's)."""
        treated = self._treated_from(probas)
        return treated if self.control_ is None else treated - probas[self.control_]

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        """log of the combined probability (the uplift itself with a control)."""
        if self.control_ is not None:
            return self.predict_proba(X)
        return np.log(np.clip(self._treated_from(self._component_probas(X, self._treated_names())), 1e-12, 1.0))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """The combined probability, or the uplift `p - p_control` when a control is set."""
        self._check_fitted()
        names = list(dict.fromkeys([*self._treated_names(), *([self.control_] if self.control_ else [])]))
        return self.combine(self._component_probas(X, names))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Exponent-weighted sum of the components' contributions (minus the control's).

        With a declined path, the product's contributions are weighted per row by its share of
        P(productive | invited) and the declined component's by the rest.
        """
        share = np.ones(len(X))
        inputs = model_inputs(self.components_, X)  # one converted matrix for every component
        if self.declined_ is not None:
            probas = self._component_probas(X, self._treated_names(), inputs)
            product = self._product_from(probas)
            share = product / np.maximum(product + self._declined_from(probas), 1e-12)
        row_weights = {name: exponent * share for name, exponent in self.exponents_.items()}
        if self.declined_ is not None:
            row_weights[self.declined_] = row_weights.get(self.declined_, 0.0) + (1.0 - share)
        if self.control_ is not None:
            row_weights[self.control_] = row_weights.get(self.control_, 0.0) - 1.0
        total = np.zeros((len(X), len(self.feature_names_)))
        for name, weight in row_weights.items():
            if np.any(weight != 0):
                component = self.components_[name]
                contrib = component._contributions_from_input(inputs[name])
                if component.feature_names_ != self.feature_names_:  # align by name (an S-learner's given input left out)
                    contrib = pd.DataFrame(contrib, columns=component.feature_names_)[self.feature_names_].to_numpy()
                total += contrib * np.reshape(weight, (-1, 1))
        return pd.DataFrame(total, index=X.index, columns=self.feature_names_)

    def feature_importance(self, importance_type: Literal["gain", "split"] = "gain") -> pd.Series:
        """Exponent-weighted sum of the components' importances (the control's counted positively)."""
        total = pd.Series(0.0, index=self.feature_names_, name=importance_type)
        for name, weight in self._weights().items():
            importance = self.components_[name].feature_importance(importance_type)
            total += abs(weight) * importance.reindex(self.feature_names_, fill_value=0.0)  # an S-learner's input left out
        return total.sort_values(ascending=False, kind="stable")
