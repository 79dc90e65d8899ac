"""Typed configuration of the ranking stage (tiers, budget quotas, exploration, API limits)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL_URI = "models:/koc-potential@champion"

ISO_CUTOFF_FORM = "YYYY-MM-DD, optionally with a time: YYYY-MM-DDTHH:MM[:SS][+08:00|Z]"
_ISO_CUTOFF = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)


class CutoffError(ValueError):
    """A cutoff that is not ISO 8601 (e.g. 02/01/2026, ambiguous between February 1st and January 2nd)."""


def parse_cutoff(text: str, timezone: str) -> pd.Timestamp:
    """The one parser of a user-given cutoff (CLI `--as-of`, API `as_of`): ISO 8601 only.

    Returns a naive business-time `pd.Timestamp`; a date means local midnight, a time with an
    offset is converted to the business time zone. Anything else is refused with the expected form.
    """
    from features.contract import parse_as_of

    value = str(text).strip()
    if not _ISO_CUTOFF.match(value):
        raise CutoffError(f"cutoff {value[:40]!r} is not ISO 8601; expected {ISO_CUTOFF_FORM}, e.g. 2026-01-01")
    try:
        return parse_as_of(value, timezone)
    except (ValueError, OverflowError) as error:
        raise CutoffError(f"cutoff {value!r} is not a real date/time ({error}); expected {ISO_CUTOFF_FORM}") from None


def default_cutoff(data_end: pd.Timestamp) -> pd.Timestamp:
    """The one rule for the default cutoff: local midnight after the data's last day."""
    return data_end.normalize() + pd.Timedelta(days=1)


# Segment columns a quota may refer to (members table columns that describe a segment).
QUOTA_COLUMNS = ("city_tier", "channel", "gender")


SCORING_ENGINE_FIELDS = {"compiled_min_rows"}


class RankConfig(BaseModel):
    """Business rules of one ranked invitation list.

    Tiers are score bands: A when `score >= tier_a_min_score`, B when
    `score >= tier_b_min_score`, else C. `quotas` maps a segment column to the maximum
    share of the K slots any single value of that column may take. `exploration_share`
    of the K slots is drawn at random (seeded) from the next `exploration_band_size`
    ranks after the exploited list (default: K), so future training data is not only
    the model's own picks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tier_a_min_score: float = Field(0.5, ge=0.0, le=1.0)
    tier_b_min_score: float = Field(0.2, ge=0.0, le=1.0)
    quotas: dict[str, float] = Field(default_factory=dict)
    exploration_share: float = Field(0.1, ge=0.0, lt=1.0)
    exploration_band_size: int | None = Field(None, ge=1)
    control_share: float = Field(0.05, ge=0.0, lt=1.0, description="random control group held out of the top block, as a share of K")
    issue: bool = Field(False, description="record every `koc rank` as an immutable issued list (serving.issued)")
    n_reasons: int = Field(3, ge=1, le=10)
    trial_category_lookback_days: int = Field(365, ge=1)
    seed: int = Field(42, ge=0)
    model_uri: str = DEFAULT_MODEL_URI
    score_batch_limit: int = Field(1000, ge=1)
    default_top: int = Field(100, ge=1)
    alias_check_seconds: float = Field(60.0, ge=0.0)
    compiled_min_rows: int | None = Field(
        200_000,
        ge=1,
        description=(
            "Score populations of at least this many members with the model compiled to native code "
            "(serving.compiled, lleaves; the same scores ~3x faster, compiled once per model and machine); "
            "smaller ones, and every population when unset, use LightGBM's own predict"
        ),
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> RankConfig:
        if self.tier_b_min_score > self.tier_a_min_score:
            raise ValueError(
                f"tier_b_min_score ({self.tier_b_min_score}) must not exceed tier_a_min_score ({self.tier_a_min_score})"
            )
        for column, share in self.quotas.items():
            if column not in QUOTA_COLUMNS:
                raise ValueError(f"quota on unknown segment column {column!r}; use one of {QUOTA_COLUMNS}")
            if not 0.0 < share <= 1.0:
                raise ValueError(f"quota share for {column!r} must be in (0, 1], got {share}")
        return self

    def config_hash(self, **extra: Any) -> str:
        """Stable sha256 of this config plus any extra run inputs (e.g. K, label config)."""
        # how scores are computed is not a business rule: it never changes the list, so not its id
        payload = {"rank": self.model_dump(mode="json", exclude=SCORING_ENGINE_FIELDS), **extra}
        text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
