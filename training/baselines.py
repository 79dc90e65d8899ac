"""Baselines the model must beat on the same test cutoff.

(a) `rfm`: RFM quintile score (`features.scores.rfm_scores`);
(b) `value`: weighted value score (`features.scores.value_scores`, weights from config);
(c) `logistic`: logistic regression on the same features (impute + scale numerics,
    one-hot categoricals), fitted on the training cutoffs;
(d) `random`: a seeded uniform score;
(e) `source_rule`: the source material's own rule (the Miniso case's three criteria), the mean
    percentile of activity (campaign participation), loyalty (repeat purchase) and content
    ability (recent posts times their median interactions);
(f) `bgnbd`: BG/NBD expected purchases within the horizon (the registry feature
    `bgnbd_expected_purchases_h`), when the feature set has it.
Only the logistic regression outputs probabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from features.registry import coerce_features
from features.scores import rfm_scores, value_scores

logger = logging.getLogger(__name__)

MISSING_LEVEL = "missing"
LOGISTIC_MAX_ROWS = 200_000  # the logistic baseline fits on a seeded sample of at most this many rows
SCORE_CHUNK_ROWS = 100_000  # rows imputed, scaled and scored at a time


@dataclass(frozen=True)
class BaselineScores:
    """Scores of one baseline for the rows of the test frame, in row order."""

    name: str
    scores: np.ndarray
    is_probability: bool


def _score_column(result: pd.DataFrame, column: str, n_rows: int) -> np.ndarray:
    """One score column of a features.scores result as float64, checked against the row count."""
    values = result[column].to_numpy(dtype="float64")
    if len(values) != n_rows:
        raise ValueError(f"{column} has {len(values)} values for {n_rows} rows")
    return values


def rfm_baseline(test: pd.DataFrame) -> BaselineScores:
    """RFM quintile score R + F + M (3-15) of each test row; ties are common and broken by member_id."""
    return BaselineScores("rfm", _score_column(rfm_scores(test), "rfm_score", len(test)), is_probability=False)


def value_baseline(test: pd.DataFrame, weights: Mapping[str, float] | None) -> BaselineScores:
    """Weighted value score (0-100) of each test row; `None` uses the scores module's default weights."""
    result = value_scores(test) if weights is None else value_scores(test, weights)
    return BaselineScores("value", _score_column(result, "value_score", len(test)), is_probability=False)


def random_baseline(test: pd.DataFrame, seed: int) -> BaselineScores:
    """Seeded uniform scores: what ranking without information achieves."""
    rng = np.random.default_rng(seed)
    return BaselineScores("random", rng.random(len(test)), is_probability=False)


BGNBD_FEATURE = "bgnbd_expected_purchases_h"
SOURCE_RULE_TERMS: dict[str, tuple[str, ...]] = {
    "activity": ("events_campaign_join_90d", "campaign_join_months"),
    "loyalty": ("orders_365d", "active_months_12m"),
    "content": ("posts_180d", "post_interactions_median_180d"),
}


def _percentile(values: pd.Series) -> np.ndarray:
    return values.fillna(0).astype("float64").rank(pct=True, method="average").to_numpy()


def source_rule_baseline(test: pd.DataFrame) -> BaselineScores:
    """Mean percentile of activity, loyalty and content ability, each the sum of its two columns' percentiles.

    Content ability is posts x log(1 + median interactions), so posting often *and* being seen counts.
    """
    missing = [c for cols in SOURCE_RULE_TERMS.values() for c in cols if c not in test.columns]
    if missing:
        raise ValueError(f"source_rule baseline needs feature columns {missing}")
    activity = _percentile(test["events_campaign_join_90d"]) + _percentile(test["campaign_join_months"])
    loyalty = _percentile(test["orders_365d"]) + _percentile(test["active_months_12m"])
    content_value = test["posts_180d"].fillna(0).astype("float64") * np.log1p(
        test["post_interactions_median_180d"].fillna(0).astype("float64")
    )
    content = 2 * _percentile(content_value)
    return BaselineScores("source_rule", (activity + loyalty + content) / 6.0, is_probability=False)


def bgnbd_baseline(test: pd.DataFrame) -> BaselineScores:
    """Expected purchases within the horizon from the BG/NBD feature (missing = 0)."""
    values = test[BGNBD_FEATURE].astype("float64").fillna(0.0).to_numpy()
    return BaselineScores("bgnbd", values, is_probability=False)


def _categoricals_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as plain object strings with an explicit 'missing' level."""
    return frame.astype("object").where(frame.notna(), MISSING_LEVEL)


def logistic_pipeline(numeric: Sequence[str], categorical: Sequence[str], seed: int) -> Pipeline:
    """Impute (median + missing indicators) and scale numerics, one-hot categoricals, then logistic."""
    transformers = [
        (
            "numeric",
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                    ("scale", StandardScaler()),
                ]
            ),
            list(numeric),
        )
    ]
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("as_text", FunctionTransformer(_categoricals_as_text, feature_names_out="one-to-one")),
                        ("one_hot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                list(categorical),
            )
        )
    return Pipeline(
        [
            ("prepare", ColumnTransformer(transformers, remainder="drop")),
            ("logistic", LogisticRegression(C=1.0, max_iter=2000, random_state=seed)),
        ]
    )


def _logistic_input(rows: pd.DataFrame, feature_names: Sequence[str]) -> pd.DataFrame:
    categorical = [c for c in feature_names if isinstance(rows[c].dtype, pd.CategoricalDtype)]
    X = coerce_features(rows, feature_names, {c: list(rows[c].cat.categories) for c in categorical})
    numeric = [c for c in feature_names if c not in categorical]
    return X.astype(dict.fromkeys(numeric, "float32"))


def fit_logistic(
    train: pd.DataFrame,
    feature_names: Sequence[str],
    seed: int,
    sample_weight: np.ndarray | None = None,
    *,
    max_rows: int = LOGISTIC_MAX_ROWS,
) -> Pipeline:
    """Logistic regression on the training rows' features and labels (a seeded sample of `max_rows` at most).

    A baseline needs no more: a uniform sample keeps the weighted label mix in expectation, and
    the imputed, scaled and one-hot copies then stay ~100 MB at any brand size.
    """
    if len(train) > max_rows:
        picked = np.sort(np.random.default_rng(seed).choice(len(train), size=max_rows, replace=False))
        train = train.iloc[picked]
        sample_weight = None if sample_weight is None else np.asarray(sample_weight)[picked]
    categorical = [c for c in feature_names if isinstance(train[c].dtype, pd.CategoricalDtype)]
    numeric = [c for c in feature_names if c not in categorical]
    pipeline = logistic_pipeline(numeric, categorical, seed)
    pipeline.fit(
        _logistic_input(train, feature_names), train["label"].to_numpy(dtype="int64"), logistic__sample_weight=sample_weight
    )
    return pipeline


def logistic_baseline(pipeline: Pipeline, test: pd.DataFrame, feature_names: Sequence[str]) -> BaselineScores:
    """Probabilities of the fitted logistic regression on the test rows (scored in chunks)."""
    parts = [
        pipeline.predict_proba(_logistic_input(test.iloc[start : start + SCORE_CHUNK_ROWS], feature_names))[:, 1]
        for start in range(0, len(test), SCORE_CHUNK_ROWS)
    ]
    scores = np.concatenate(parts) if parts else np.empty(0)
    return BaselineScores("logistic", scores.astype("float64"), is_probability=True)


def all_baselines(
    train: pd.DataFrame,
    test: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    seed: int,
    value_weights: Mapping[str, float] | None = None,
) -> list[BaselineScores]:
    """Every baseline scored on `test`; the logistic one is fitted on `train` (weights honoured)."""
    weights = train["weight"].to_numpy(dtype="float64") if "weight" in train.columns else None
    logistic = fit_logistic(train, feature_names, seed, sample_weight=weights)
    baselines = [
        rfm_baseline(test),
        value_baseline(test, value_weights),
        logistic_baseline(logistic, test, feature_names),
        random_baseline(test, seed),
    ]
    if all(c in test.columns for cols in SOURCE_RULE_TERMS.values() for c in cols):
        baselines.append(source_rule_baseline(test))
    if BGNBD_FEATURE in test.columns:
        baselines.append(bgnbd_baseline(test))
    return baselines
