"""The one ranking module the CLI and the API both call.

`rank_members` takes validated data, a cutoff and a loaded model and returns the ranked
invitation list plus every scored member: eligibility (from `features.labels`), features
(from `features.build`, the same code training used), calibrated scores, tiers, reasons,
value scores, RFM segment, suggested trial category, quotas and exploration. It reads no
files and no clock: the caller passes `generated_at` and writes the outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.build import (
    REFUNDS_WITHOUT_TIME,
    EngineConfig,
    RefundsWithoutTime,
    build_features,
    connect,
    read_feature_file,
    refund_rule,
    timestamp_literal,
)
from features.contract import BrandData
from features.labels import EXCLUSION_RULES, LabelConfig, eligibility, exclusion_counts
from features.registry import categorical_features
from features.scores import rfm_scores, value_scores
from features.store import StoredBrandData
from serving.compiled import COMPILED_DIR, attach_compiled
from serving.config import QUOTA_COLUMNS, RankConfig
from serving.model_store import LoadedModel, RankingModel, label_config_warnings, model_cache_dir
from serving.reasons import LazyPopulation, Population, explain
from serving.selection import assign_tiers, order_by_score, score_percentiles, segment_shares, select_candidates

logger = logging.getLogger(__name__)

VALUE_SCORE_COLUMNS = ("consumption_value", "interaction_value", "content_value", "social_value")
# segment columns shown in the list; quotas may also use the other QUOTA_COLUMNS (e.g. gender),
# which are joined for selection and counted in the metadata but not written to the list
SEGMENT_COLUMNS = ("city_tier", "channel")
STALE_AFTER_DAYS = 31  # as_of later than this after the last observed row: warn that the data is stale
PREDICT_CHUNK_ROWS = 100_000  # rows scored per model call: bounds the model's float copies of the inputs


@dataclass(frozen=True)
class RankResult:
    """A ranked list and everything needed to explain or re-query it.

    `scored`: every member who joined before as_of (eligibility, score, tier, value scores, ...;
    no reasons). `features`: their model inputs indexed by member_id, the population that
    `explain_members` judges high/low values against. `positions`: member_id -> row of
    `scored`, built once per ranking so `/score` finds members without scanning.
    """

    candidates: pd.DataFrame
    scored: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    features: pd.DataFrame | None = None
    population: Population | None = None
    positions: Mapping[str, int] | None = None

    @property
    def expected_productive(self) -> float:
        return float(self.meta["expected_productive"])


def explain_members(
    model: RankingModel,
    features: pd.DataFrame,
    member_ids: Sequence[str],
    n_reasons: int = 3,
    population: Population | None = None,
) -> pd.DataFrame:
    """Reasons for some members, indexed by member_id (`serving.reasons.explain`)."""
    if population is None:
        population = _population(features)
    return explain(model, features, member_ids, n_reasons, population)


def _population(inputs: pd.DataFrame) -> LazyPopulation:
    numeric = [name for name in inputs.columns if name not in set(categorical_features())]
    return LazyPopulation(inputs, numeric)


def predict_in_chunks(model: RankingModel, features: pd.DataFrame, chunk_rows: int = PREDICT_CHUNK_ROWS) -> np.ndarray:
    """`model.predict_proba` over `features` in row chunks (same values; bounded memory).

    The model selects and converts its own columns, so each call copies only one chunk.
    """
    if len(features) <= chunk_rows:
        return np.asarray(model.predict_proba(features), dtype="float64")
    parts = [
        np.asarray(model.predict_proba(features.iloc[start : start + chunk_rows]), dtype="float64")
        for start in range(0, len(features), chunk_rows)
    ]
    return np.concatenate(parts)


def top_in_score_order(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """The first `n` rows of `order_by_score(rows)`, found with a partial sort.

    Every row scoring at least the n-th highest score is kept (ties included), so sorting that
    head alone gives exactly the full sort's first `n` rows.
    """
    if n >= len(rows):
        return order_by_score(rows)
    scores = rows["score"].to_numpy(dtype="float64")
    if np.isnan(scores).any():  # np.partition ranks NaN highest, the full sort last: sort it all
        return order_by_score(rows).head(n)
    threshold = np.partition(scores, len(scores) - n)[len(scores) - n]
    return order_by_score(rows.loc[scores >= threshold]).head(n)


def choose_candidates(eligible: pd.DataFrame, k: int, cfg: RankConfig, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """`select_candidates` over the eligible members in score order, sorting only the head it reads.

    The policy walks the score order until its block and exploration band are full (quotas may
    skip rows); it starts with a head of a few times K and doubles it until the walk ends
    inside the head, so the list is exactly the one a full sort gives.
    """
    band = cfg.exploration_band_size or k
    n = 4 * (k + band) + 1_000
    while True:
        ordered = top_in_score_order(eligible, n)
        chosen = select_candidates(ordered, k, cfg, as_of=as_of)
        if len(ordered) == len(eligible) or chosen.attrs.get("rows_examined", len(ordered)) < len(ordered):
            return chosen
        n *= 4


def trial_categories(
    orders: pd.DataFrame | BrandData,
    as_of: pd.Timestamp,
    lookback_days: int = 365,
    refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME,
    engine: EngineConfig | None = None,
) -> pd.DataFrame:
    """Each member's strongest category: most counted spend in `[as_of - lookback, as_of)`.

    Only orders strictly before `as_of` count, and refunds follow the feature pipeline's rule
    (`features.build.refund_rule`): an order with `refunded_at` stops counting from that
    instant; a `refunded` order without it counts per `refunds_without_time`. Ties go to the
    category name first in alphabetical order; orders without a category are ignored.
    `orders`: the orders frame, or the brand's data (an ingested store is queried where it
    is, so ranking never reads its orders into pandas). One DuckDB query either way, amounts
    summed exactly as DECIMAL. Returns `member_id, trial_category` for members with at least
    one such order, by member_id.
    """
    start = as_of - pd.Timedelta(days=lookback_days)
    con = connect(engine or EngineConfig())
    try:
        if isinstance(orders, StoredBrandData):
            con.execute("ATTACH ? AS brand (READ_ONLY)", [orders.path])
            relation = 'brand.main."orders"'
        else:
            frame = orders.orders if isinstance(orders, BrandData) else orders
            columns = ("member_id", "ordered_at", "amount", "category", "refunded", "refunded_at")
            frame = frame.loc[:, [c for c in columns if c in frame.columns]]
            for column, dtype in (("refunded", "boolean"), ("refunded_at", "datetime64[us]")):
                if column not in frame.columns:
                    frame[column] = pd.Series(pd.NA if dtype == "boolean" else pd.NaT, index=frame.index, dtype=dtype)
            con.register("_orders", frame)
            relation = "_orders"
        t = timestamp_literal(as_of)
        counted = refund_rule(refunds_without_time).replace("$t", t)
        sql = f"""
            WITH spend AS (
                SELECT CAST(member_id AS VARCHAR) AS member_id, CAST(category AS VARCHAR) AS category,
                    SUM(CAST(amount AS DECIMAL(38, 6))) AS amount
                FROM {relation}
                WHERE ordered_at >= {timestamp_literal(start)} AND ordered_at < {t}
                    AND category IS NOT NULL AND {counted}
                GROUP BY ALL
            )
            SELECT member_id, category AS trial_category FROM spend
            QUALIFY ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY amount DESC, category) = 1
            ORDER BY member_id
        """
        out = con.execute(sql).df()
    finally:
        con.close()
    return out.astype({"member_id": "str", "trial_category": "str"})


def model_engine(model: RankingModel, engine: EngineConfig | None = None) -> EngineConfig:
    """`engine` (DuckDB threads / memory from config) with the feature semantics the model was trained on.

    The refund rule changes feature values, so a model that recorded `refunds_without_time_`
    is scored with that rule whatever the current config says (a differing config is logged).
    """
    engine = engine or EngineConfig()
    trained = getattr(model, "refunds_without_time_", None)
    if trained is None or trained == engine.refunds_without_time:
        return engine
    logger.warning(
        "config [engine] refunds_without_time = %r, but the model was trained with %r: scoring with the model's rule",
        engine.refunds_without_time, trained,
    )
    return engine.model_copy(update={"refunds_without_time": trained})


def model_features(
    data: BrandData, as_of: pd.Timestamp, model: RankingModel, engine: EngineConfig | None = None
) -> pd.DataFrame:
    """`build_features` at one cutoff, with the feature semantics `model` was trained on (`model_engine`)."""
    return build_features(data, [as_of], model_engine(model, engine))


def _member_segments(data: BrandData) -> pd.DataFrame:
    return data.members[["member_id", *QUOTA_COLUMNS]]


def score_population(
    data: BrandData,
    as_of: pd.Timestamp,
    loaded: LoadedModel,
    cfg: RankConfig,
    label_cfg: LabelConfig,
    engine: EngineConfig | None = None,
    features: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every member who joined before `as_of`: eligibility flags, score, value scores, segment.

    Percentile and tier are computed among eligible members only (null for the others).
    `features`: `build_features(data, [as_of])` already built (e.g. read by `read_feature_file`).
    Returns (scored sorted by member_id, model inputs indexed by member_id).
    """
    model = loaded.model
    engine = model_engine(model, engine)
    elig = eligibility(data, as_of, label_cfg)
    if features is None:
        features = build_features(data, [as_of], engine)
    X = features[list(model.feature_names_)]  # a copy-on-write view, not a copy
    if cfg.compiled_min_rows is not None and len(X) >= cfg.compiled_min_rows:
        attach_compiled(model, model_cache_dir() / COMPILED_DIR, engine.threads)
    scores = pd.Series(predict_in_chunks(model, X), index=features.index, name="score")
    values = value_scores(features)[list(VALUE_SCORE_COLUMNS)].round(1)  # 0-100, one decimal is plenty
    rfm_segment = rfm_scores(features)["rfm_segment"].astype("str")
    scored = pd.concat([features[["member_id"]], scores, values, rfm_segment], axis=1)
    segments = _member_segments(data)
    for name, frame in (("eligibility", elig), ("features", scored), ("members", segments)):
        # what merge(validate="one_to_one") checked, at a sixth of its cost (3 s at 1M members)
        if not frame["member_id"].is_unique:
            raise ValueError(f"{name}: member_id is not unique at {as_of}")
    scored = (
        elig.drop(columns="as_of")
        .merge(scored, on="member_id", how="left")
        .merge(
            trial_categories(data, as_of, cfg.trial_category_lookback_days, engine.refunds_without_time, engine),
            on="member_id", how="left",
        )
        .merge(segments, on="member_id", how="left")
    )
    eligible = scored["eligible"].to_numpy(dtype=bool)
    scored["percentile"] = score_percentiles(scored.loc[eligible, "score"]).reindex(scored.index)
    scored["tier"] = assign_tiers(scored["score"], cfg).where(eligible, None)
    inputs = X.set_axis(features["member_id"].to_numpy(), axis=0)
    return scored.sort_values("member_id", ignore_index=True), inputs


def candidate_columns(n_reasons: int) -> list[str]:
    """Column order of the ranked list."""
    return [
        "rank",
        "member_id",
        "score",
        "percentile",
        "tier",
        *[f"reason_{i + 1}" for i in range(n_reasons)],
        *[f"reason_feature_{i + 1}" for i in range(n_reasons)],
        *[f"reason_{i + 1}_{lang}" for lang in ("zh", "en") for i in range(n_reasons)],
        "why_not_higher",
        "why_not_higher_zh",
        "why_not_higher_en",
        "reasons",  # reason objects {feature, value, contribution, zh, en} for the API (not written to files)
        *VALUE_SCORE_COLUMNS,
        "rfm_segment",
        "trial_category",
        *SEGMENT_COLUMNS,
        "exploration",
        "selection_probability",
    ]


def rank_members(
    data: BrandData,
    as_of: pd.Timestamp,
    loaded: LoadedModel,
    k: int,
    cfg: RankConfig | None = None,
    label_cfg: LabelConfig | None = None,
    *,
    generated_at: str | None = None,
    generated_by: str | None = None,
    config_digest: str | None = None,
    data_fingerprint: dict[str, Any] | None = None,
    engine: EngineConfig | None = None,
    features_file: str | os.PathLike[str] | None = None,
) -> RankResult:
    """Rank eligible members at `as_of` and pick the K to invite (quotas + exploration).

    `as_of` is a naive business-time `pd.Timestamp`, parsed once by the caller (CLI or API).
    `generated_at` (ISO text) and `generated_by` are recorded in the metadata as given;
    `config_digest` defaults to a hash of the rank and label configs and K; `data_fingerprint`
    to `data.fingerprint()` (callers with files pass `training.fingerprint.cached_fingerprint`'s,
    so unchanged tables are not hashed again on every ranking). `engine`: the config's `[engine]`
    (DuckDB threads, memory limit, spill folder); the refund rule is the model's (`model_engine`).
    `features_file`: a `koc features` Parquet file holding `as_of`, read instead of building the
    features (FeatureFileMismatch unless it was built from this data with the model's semantics).
    """
    if not isinstance(as_of, pd.Timestamp) or as_of.tzinfo is not None:
        raise TypeError(f"as_of must be a naive business-time pd.Timestamp (parse it at the edge), got {as_of!r}")
    cfg = cfg or RankConfig()
    label_cfg = label_cfg or LabelConfig()
    if not (data.members["joined_at"] < as_of).any():
        raise ValueError(f"no member joined before as_of {as_of}: nobody can be ranked (is the date right?)")
    if data_fingerprint is None:
        data_fingerprint = data.fingerprint()
    features = None
    if features_file is not None:
        features = read_feature_file(
            features_file, as_of, timezone=data.timezone,
            refunds_without_time=model_engine(loaded.model, engine).refunds_without_time,
            data_fingerprint=data_fingerprint,
        )
    scored, inputs = score_population(data, as_of, loaded, cfg, label_cfg, engine, features)
    chosen = choose_candidates(scored.loc[scored["eligible"]], k, cfg, as_of=as_of)
    population = _population(inputs)
    reasons = explain_members(loaded.model, inputs, chosen["member_id"], cfg.n_reasons, population)
    chosen = chosen.join(reasons, on="member_id")
    candidates = chosen[candidate_columns(cfg.n_reasons)].reset_index(drop=True)
    counts = exclusion_counts(scored[["eligible", *EXCLUSION_RULES]])
    exclusions = {rule.removeprefix("excl_"): counts[rule.removeprefix("excl_")] for rule in EXCLUSION_RULES}
    expected = float(candidates["score"].sum())
    info = loaded.info
    warnings = label_config_warnings(getattr(loaded.model, "label_config_", None), label_cfg)
    stale_days = (as_of - data.data_end) / pd.Timedelta(days=1)
    if stale_days > STALE_AFTER_DAYS:
        stale = (
            f"the data ends {data.data_end}, {stale_days:.0f} days before as_of {as_of}: recent behaviour is missing, "
            "so scores are low and the list is stale; export fresh data"
        )
        logger.warning(stale)
        warnings.append(stale)
    target = str(getattr(loaded.model, "target_", "observed"))
    config_hash = config_digest or cfg.config_hash(k=int(k), labels=label_cfg.model_dump(mode="json"), timezone=data.timezone)
    meta: dict[str, Any] = {
        "list_id": list_id(as_of, info.run_id or info.uri, info.version, config_hash, data_fingerprint, int(k)),
        "target": target,
        "model": {
            "name": info.name,
            "version": info.version,
            "alias": info.alias,
            "run_id": info.run_id,
            "uri": info.uri,
            "trained_at": info.trained_at,
            "feature_set_version": info.feature_set_version,
            "label_config": getattr(loaded.model, "label_config_", None),
            "target": target,
            "target_method": getattr(loaded.model, "target_method_", None),
        },
        "warnings": warnings,
        "as_of": as_of.isoformat(),
        "generated_at": generated_at,
        "generated_by": generated_by,
        "k": int(k),
        "exclusions": exclusions,
        "counts": {
            "members": int(len(data.members)),
            "joined_before_as_of": int(len(scored)),
            "eligible": int(scored["eligible"].sum()),
            "listed": int(len(candidates)),
            "exploration": int(candidates["exploration"].sum()),
            "by_tier": {tier: int((candidates["tier"] == tier).sum()) for tier in ("A", "B", "C")},
        },
        "expected_productive": round(expected, 6),
        "segments": segment_shares(chosen, [*SEGMENT_COLUMNS, *(c for c in cfg.quotas if c not in SEGMENT_COLUMNS)]),
        "config_hash": config_hash,
        "rank_config": cfg.model_dump(mode="json"),
        "data_fingerprint": data_fingerprint,
    }
    logger.info(
        "as of %s: %d eligible of %d members; listed %d (%d exploration); expected productive KOCs %.1f",
        as_of.date(), meta["counts"]["eligible"], meta["counts"]["joined_before_as_of"], len(candidates),
        meta["counts"]["exploration"], expected,
    )
    positions = dict(zip(scored["member_id"].tolist(), range(len(scored)), strict=True))
    return RankResult(
        candidates=candidates, scored=scored, meta=meta, features=inputs, population=population, positions=positions
    )


def list_id(as_of: pd.Timestamp, model_ref: str, version: str | None, config_hash: str, data_fingerprint: Any, k: int) -> str:
    """A short, stable id of one list: cutoff date plus a hash of model, config, data and K.

    The same inputs give the same id (CLI and API alike), so the activation log can name the
    list a member was approved from.
    """
    blob = json.dumps([as_of.isoformat(), model_ref, version, config_hash, data_fingerprint, k], sort_keys=True, default=str)
    return f"{as_of:%Y%m%d}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def filter_candidates(
    candidates: pd.DataFrame,
    top: int | None = None,
    tier: str | None = None,
    city_tier: int | None = None,
) -> pd.DataFrame:
    """The list restricted to a tier and/or city tier, then its first `top` rows (rank order)."""
    mask = pd.Series(True, index=candidates.index)
    if tier is not None:
        mask &= candidates["tier"] == tier
    if city_tier is not None:
        mask &= (candidates["city_tier"] == city_tier).fillna(False).astype(bool)
    out = candidates.loc[mask]
    return out.head(top) if top is not None else out


def lookup_members(
    scored: pd.DataFrame, member_ids: Sequence[str], positions: Mapping[str, int] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Rows of `scored` for the requested ids (request order, duplicates once) and the unknown ids.

    Unknown means not a member who joined before the cutoff. With `positions` (member_id -> row,
    `RankResult.positions`) each id is one dict look-up; without, `scored` must be sorted by
    member_id and each id is a binary search after an O(n) order check.
    """
    wanted = list(dict.fromkeys(member_ids))
    if positions is not None:
        hits = [(member_id, positions.get(member_id)) for member_id in wanted]
        rows = [pos for _, pos in hits if pos is not None]
        return scored.iloc[rows].reset_index(drop=True), [member_id for member_id, pos in hits if pos is None]
    ids = scored["member_id"]
    if not ids.is_monotonic_increasing:
        raise ValueError("scored must be sorted by member_id (as score_population returns it)")
    positions = ids.searchsorted(wanted) if wanted else np.array([], dtype=int)
    found = [pos < len(ids) and ids.iat[pos] == member_id for pos, member_id in zip(positions, wanted, strict=True)]
    known_positions = [int(pos) for pos, hit in zip(positions, found, strict=True) if hit]
    unknown = [member_id for member_id, hit in zip(wanted, found, strict=True) if not hit]
    return scored.iloc[known_positions].reset_index(drop=True), unknown
