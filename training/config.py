"""Typed configuration of the training stage (cutoffs, split, LightGBM, evaluation, registry)."""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KSpec = int | str
"""A top-K size: an absolute count (`100`) or a share of eligible members (`"1%"`)."""

REGISTERED_MODEL_NAME = "koc-potential"
"""The one home of the registered model's default name (config, CLI and serving read it from here)."""

_PERCENT_K = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def validate_k_spec(spec: KSpec) -> KSpec:
    """`spec` in canonical form (`100`, `"1%"`, `"0.5%"`) if it is a positive count or a percentage, else ValueError.

    Percentages are normalised (`"1.0%"`, `" 1 %"` and `"01%"` all become `"1%"`) so one K has one
    spelling in `k_list`, `primary_k` and the metric names.
    """
    if isinstance(spec, bool):
        raise ValueError(f"K must be a positive integer or a percentage such as '1%', got {spec!r}")
    if isinstance(spec, int):
        if spec <= 0:
            raise ValueError(f"K must be positive, got {spec}")
        return spec
    match = _PERCENT_K.match(spec) if isinstance(spec, str) else None
    if match is None or not 0 < float(match.group(1)) <= 100:
        raise ValueError(f"K must be a positive integer or a percentage in (0, 100] such as '1%', got {spec!r}")
    whole, _, fraction = match.group(1).partition(".")
    fraction = fraction.rstrip("0")
    return f"{int(whole)}{'.' + fraction if fraction else ''}%"


class LgbmParams(BaseModel):
    """LightGBM hyperparameters; the seed, thread count and determinism flags come from TrainConfig.

    Defaults are regularised (small leaves, many rows per leaf, strong L2): positives are
    rare (1-5%), and on simulated worlds of 20k and 50k members these settings matched or
    beat the looser 31-leaf defaults on every test metric.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(0.03, gt=0)
    num_leaves: int = Field(15, ge=2)
    max_depth: int = -1
    min_data_in_leaf: int = Field(300, ge=1)
    feature_fraction: float = Field(0.6, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(10.0, ge=0)
    min_gain_to_split: float = Field(0.0, ge=0)
    max_bin: int = Field(255, ge=2)
    cat_smooth: float = Field(10.0, ge=0)
    num_boost_round: int = Field(1000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    linear_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Weight of a logistic regression blended into the raw score (log-odds) of the components named in "
            "`linear_components`: (1 - w) * booster + w * linear, before calibration (training/linear.py). 0 turns "
            "it off"
        ),
    )
    linear_components: tuple[str, ...] = Field(
        ("accept",),
        description=(
            "Components of a treatment-aware target that blend in the linear part: by default P(accept | invited), "
            "learnt from a few thousand invitations, where trees cannot extrapolate into the tails the best "
            "candidates sit in"
        ),
    )
    monotone_increasing: tuple[str, ...] = Field(
        ("post_interactions_mean", "post_interactions_median", "post_interactions_max"),
        description=(
            "Name prefixes of features the score may only rise with (LightGBM monotone constraints): more "
            "interactions on a member's posts never lower the score, all else equal"
        ),
    )


class TrainConfig(BaseModel):
    """Everything `koc train` needs beyond the label definition and the time zone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- snapshot cutoffs -------------------------------------------------------------
    first_cutoff: date | None = Field(
        None, description="First cutoff (month start); default: min_history_months after the earliest data"
    )
    last_cutoff: date | None = Field(None, description="Latest cutoff to consider; default: latest complete one")
    min_history_months: int = Field(6, ge=0, description="History required before the first default cutoff")
    step_months: int = Field(1, ge=1, description="Months between consecutive cutoffs")
    embargo: bool = Field(
        True,
        description=(
            "Keep only validation cutoffs whose labels are known before the test cutoff, and train cutoffs whose "
            "labels are known before the validation cutoff, so no label used for fitting, early stopping or "
            "calibration was unknown at the cutoff it is judged on. A cutoff's labels are known horizon + 7 days "
            "after it (the last posts' interactions), or horizon + accept_days if longer for every target but "
            "`observed` (the last invitations' answers); training.dataset.label_lag"
        ),
    )
    max_cutoffs: int = Field(
        36,
        ge=3,
        description=(
            "At most this many cutoffs (the latest ones) are built; older history still feeds the features. "
            "Bounds the work when a stray early timestamp would otherwise make thousands of monthly cutoffs"
        ),
    )
    backtest_cutoffs: int = Field(
        3, ge=1, description="Test cutoffs of the rolling-origin backtest (the latest ones, each with its own split)"
    )
    refit: bool = Field(
        True,
        description=(
            "Serve a model refit on every complete cutoff (embargoed ones included) with the backtest's median "
            "iteration count, calibrated on the backtest's out-of-time scores; false serves the latest fold's model "
            "(lambdarank always does)"
        ),
    )
    negative_sample_rate: float | Literal["auto"] = Field(
        "auto",
        description=(
            "Share of training rows with no outcome (label 0, never invited or enrolled) kept, weighted 1/rate; "
            "1 keeps all. Sampled before features are built, on training and validation cutoffs (early stopping "
            "and calibration use the weights); test cutoffs are never sampled (lambdarank keeps validation too). "
            "`auto`: 1 while the training-only cutoffs hold at most auto_sample_train_rows rows, else the rate "
            "that keeps about that many"
        ),
    )
    auto_sample_train_rows: int = Field(
        250_000,
        ge=1,
        description=(
            "Training rows `auto` sampling aims at. A LightGBM fit costs about rows x iterations and the "
            "backtest makes four (three folds + the refit), and all rows with an outcome (invited, enrolled or "
            "productive) are kept. The 30k `koc eval` worlds (~100k rows) are never sampled; the 100k-member "
            "world's ~350k rows are; at 1M members (~3.5M rows) the rows with an outcome fill most of the budget "
            "and about 1 in 80 of the rest is kept. At 1M, 250k instead of 400k took `koc train` from 11 min 6 s "
            "to 9 min 36 s, with test yield@1%/oracle 0.789 against 0.792 (one world)"
        ),
    )

    # --- target -------------------------------------------------------------------------
    target: Literal["if_invited", "observed", "uplift"] = Field(
        "if_invited",
        description=(
            "What the score means: `if_invited` P(productive KOC within H | invited now), `observed` P(enrolled "
            "and productive within H) under the past policy, `uplift` P(productive | invited) - "
            "P(productive | not invited); see training/targets.py. `if_invited` is the default: on the 30k "
            "`koc eval` grid (5 scenarios x 2 seeds x 3 test cutoffs, README) it ties `observed` within the "
            "seed spread where past invitations were random, activity-led, mixed or mostly self-driven, and wins by 0.14 "
            "yield@1%/oracle where they were spend-led (measured with two_path). Without logged invitations and enrolments it "
            "falls back to `observed` and says so"
        ),
    )
    target_method: Literal["two_path", "two_path_shared", "two_path_soft", "two_path_soft_declined", "two_stage", "ipw", "auxiliary", "blend"] = Field(
        "two_path_soft",
        description=(
            "How `if_invited` (and uplift's treated arm) is learnt; see training/targets.py. `two_path_soft` "
            "(the default): P(accept | invited) x P(productive | enrolled) + (1 - P(accept | invited)) x "
            "P(productive | not invited), whose two productivity factors learn a denoised label "
            "(training/soft_labels.py). Against `two_path` (the same with 0/1 outcomes) it is ahead on the 30k "
            "`koc eval --served` grid on each of 4 seeds (+0.003 to +0.007 of the ceiling, 34 of 60 folds) and on "
            "the 1M bench world (yield@1%/oracle 0.794 against 0.789); with a brand's own labels table it falls "
            "back to `two_path`. `two_path_shared` learns the middle factor from every row with enrolment as an "
            "input (ahead on the 30k grid, behind at 1M); `two_path_soft_declined` softens the declined path "
            "only (README, koc eval)"
        ),
    )
    propensity_clip: float = Field(
        0.002, gt=0, lt=1, description="Lower clip of P(invited | x) for inverse-propensity weights"
    )
    accept_days: int = Field(
        30,
        gt=0,
        description=(
            "Days an invitation's answer is awaited: `accepted` is an enrolment within this many days of the "
            "member's first invitation in the window, before any decline; the answer is known this many days "
            "after the invitation"
        ),
    )
    accept_from_answers: bool = Field(
        True,
        description=(
            "P(accept | invited) learns from every invitation answered by the time a model is trained (a fold's "
            "test cutoff; the data's end for the served refit), early-stopped on the latest answered month, instead "
            "of only the fold's training cutoffs, whose label windows must be complete. Answers arrive within "
            "days, so this adds the freshest invitations. On the 30k grid the fold models gained in 9 of 10 worlds "
            "(mean +0.006 of the ceiling); as served, where the refit already saw most of these answers through "
            "older cutoffs' rows, random_organic, spend_led and mixed_quiet did not move beyond the noise (README). "
            "If a fold's answers are too "
            "few to learn from (a small brand), that fold learns from its own cutoffs as before"
        ),
    )

    # --- model --------------------------------------------------------------------------
    seed: int = 7
    num_threads: int = Field(
        0,
        ge=0,
        description=(
            "LightGBM threads; 0 = the machine's cores (os.cpu_count()). Set 1 on a busy shared machine, where "
            "OpenMP threads spin"
        ),
    )
    objective: Literal["binary", "lambdarank"] = "binary"
    calibration: Literal["platt", "isotonic"] = Field(
        "platt", description="Calibrator fitted on the validation cutoff; Platt keeps the booster's ranking"
    )
    lgbm: LgbmParams = LgbmParams()

    # --- evaluation ---------------------------------------------------------------------
    k_list: tuple[KSpec, ...] = (100, 500, "1%", "5%")
    primary_k: KSpec = Field(100, description="K whose backtest mean precision decides champion promotion")
    value_weights: dict[str, float] | None = Field(
        None, description="Weights for the value-score baseline; None uses features.scores defaults"
    )
    reliability_bins: int = Field(10, ge=2)
    promotion_margin: float = Field(
        0.005,
        ge=0,
        description=(
            "A challenger must beat the champion's backtest mean of precision@primary_k by more than this; "
            "within it, mean PR AUC must win by more than it too; an exact tie never promotes"
        ),
    )

    # --- tracking -----------------------------------------------------------------------
    experiment_name: str = "kocrank"
    registered_model_name: str = REGISTERED_MODEL_NAME

    @field_validator("k_list")
    @classmethod
    def _check_k_list(cls, value: tuple[KSpec, ...]) -> tuple[KSpec, ...]:
        if not value:
            raise ValueError("k_list must name at least one K")
        specs = tuple(validate_k_spec(spec) for spec in value)
        repeated = sorted({str(spec) for spec in specs if specs.count(spec) > 1})
        if repeated:
            raise ValueError(f"k_list names the same K more than once: {', '.join(repeated)} (given {list(value)})")
        return specs

    @field_validator("primary_k")
    @classmethod
    def _check_primary_k(cls, value: KSpec) -> KSpec:
        return validate_k_spec(value)

    @model_validator(mode="after")
    def _check_primary_k_is_evaluated(self) -> TrainConfig:
        if self.primary_k not in self.k_list:
            raise ValueError(
                f"primary_k {self.primary_k!r} is not in k_list {list(self.k_list)}: promotion compares test "
                "precision at primary_k, so it must be one of the evaluated K values; add it to k_list or "
                "choose one of them"
            )
        return self

    @field_validator("negative_sample_rate")
    @classmethod
    def _check_rate(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < float(value) <= 1:
            raise ValueError(f"negative_sample_rate must be 'auto' or a share in (0, 1], got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_cutoff_order(self) -> TrainConfig:
        if self.first_cutoff and self.last_cutoff and self.first_cutoff > self.last_cutoff:
            raise ValueError(f"first_cutoff {self.first_cutoff} is after last_cutoff {self.last_cutoff}")
        return self
