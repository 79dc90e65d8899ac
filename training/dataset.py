"""Snapshot datasets: features and labels of eligible members at monthly cutoffs, split by time.

Cutoffs
- With a user `labels` table the cutoffs are its distinct `as_of` values (the brand's
  labels are taken as complete). Otherwise they are month starts from `first_cutoff`
  (default: the first month start at least `min_history_months` after the earliest
  order) every `step_months`, and cutoffs whose label window is not complete
  (`features.labels.label_window_complete`) are left out.
- `first_cutoff` / `last_cutoff` in the config narrow either list.

Split (out of time)
- test: the latest cutoff; validation: the latest earlier cutoff allowed; train: the
  earlier ones allowed. With `embargo` (default) the validation cutoff's labels must be
  known on or before the test cutoff, and each train cutoff's on or before the validation
  cutoff, so fitting, early stopping, calibration and the backtest each use only labels
  known at the cutoff they are judged on. A cutoff's labels are known `label_lag` after it:
  the window (horizon) plus 7 days for its last posts' interactions, or plus `accept_days`
  for its last invitations' answers if that is longer and the target reads answers (every
  target but `observed`). Cutoffs left out by either rule are listed in
  `CutoffSplit.embargoed`.

Refit
- The served model is refit on every complete cutoff (`SnapshotDataset.refit_cutoffs`), the
  embargoed ones included: the embargo keeps the backtest's judgement honest, but once the
  judging is done every label known at training time is fair to learn from.

Answers (`accept_from_answers`)
- An invitation's answer is known `accept_days` after it, long before the productivity window
  closes. P(accept | invited) of a model trained at time T (a fold's test cutoff, or the data's end
  for the refit) learns from every row whose first invitation was answered by T, whatever its
  cutoff (`SnapshotDataset.answered_rows`; for the refit, T is the programme log's end); a fold
  early-stops and calibrates it on the answered invitations from the start of the latest whole step
  answered by T, and learns from the earlier ones (`acceptance_parts`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from features.build import EngineConfig, build_features
from features.contract import BrandData
from features.labels import INTERACTIONS_KNOWN_AFTER, LabelConfig, label_window_complete
from features.registry import CATEGORY_LEVELS, coerce_features, feature_names
from features.targets import ACCEPT_DAYS, OUTCOME_COLUMNS, POSTING_COLUMNS, labels_and_outcomes
from training.config import TrainConfig
from training.model import ACCEPT_COMPONENT

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CutoffSplit:
    """Which cutoffs went where, and which were left out and why."""

    train: tuple[pd.Timestamp, ...]
    validation: pd.Timestamp
    test: pd.Timestamp
    incomplete: tuple[pd.Timestamp, ...] = ()
    embargoed: tuple[pd.Timestamp, ...] = ()
    source: str = "default_label"

    @property
    def used(self) -> tuple[pd.Timestamp, ...]:
        return (*self.train, self.validation, self.test)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly record of the split (ISO dates)."""

        def iso(values: Sequence[pd.Timestamp]) -> list[str]:
            return [v.date().isoformat() for v in values]

        return {
            "label_source": self.source,
            "train": iso(self.train),
            "validation": self.validation.date().isoformat(),
            "test": self.test.date().isoformat(),
            "excluded_incomplete_window": iso(self.incomplete),
            "excluded_embargo": iso(self.embargoed),
        }


def _month_start_on_or_after(ts: pd.Timestamp) -> pd.Timestamp:
    start = ts.normalize().replace(day=1)
    return start if start >= ts else start + pd.DateOffset(months=1)


def candidate_cutoffs(
    data: BrandData, label_cfg: LabelConfig, train_cfg: TrainConfig
) -> tuple[list[pd.Timestamp], list[pd.Timestamp], str]:
    """(usable cutoffs, cutoffs left out for an incomplete label window, label source)."""
    lower = pd.Timestamp(train_cfg.first_cutoff) if train_cfg.first_cutoff else None
    upper = pd.Timestamp(train_cfg.last_cutoff) if train_cfg.last_cutoff else None

    def in_range(ts: pd.Timestamp) -> bool:
        return (lower is None or ts >= lower) and (upper is None or ts <= upper)

    if "labels" not in data.absent:
        given = sorted(pd.Timestamp(v).as_unit("us") for v in data.labels["as_of"].dropna().unique())
        return [c for c in given if in_range(c)][-train_cfg.max_cutoffs :], [], "labels_table"

    orders, earliest = data.rows_and_first("orders", "ordered_at")  # a store reads no orders into memory
    if orders == 0 or earliest is None:
        raise ValueError("the orders table is empty: there is no history to build cutoffs from")
    if lower is None:
        lower = _month_start_on_or_after(earliest + pd.DateOffset(months=train_cfg.min_history_months))
    complete: list[pd.Timestamp] = []
    incomplete: list[pd.Timestamp] = []
    cutoff = pd.Timestamp(lower).as_unit("us")
    end = data.data_end
    earliest_kept = end - pd.DateOffset(months=train_cfg.step_months * (train_cfg.max_cutoffs + 6))
    if cutoff < earliest_kept:
        skipped = (earliest_kept.year - cutoff.year) * 12 + earliest_kept.month - cutoff.month
        steps = skipped // train_cfg.step_months
        logger.warning(
            "history reaches back to %s: %d monthly cutoff(s) before %s are not built (training.max_cutoffs = %d)",
            cutoff.date(),
            steps,
            earliest_kept.date(),
            train_cfg.max_cutoffs,
        )
        cutoff = (cutoff + pd.DateOffset(months=steps * train_cfg.step_months)).as_unit("us")
    while cutoff <= end and (upper is None or cutoff <= upper):
        (complete if label_window_complete(data, cutoff, label_cfg) else incomplete).append(cutoff)
        cutoff = (cutoff + pd.DateOffset(months=train_cfg.step_months)).as_unit("us")
    return complete[-train_cfg.max_cutoffs :], incomplete, "default_label"


def label_lag(label_cfg: LabelConfig, train_cfg: TrainConfig) -> pd.Timedelta:
    """How long after its cutoff every label of a row is known (the embargo's unit).

    The productivity outcome is known 7 days after the window closes (the last posts' 7-day
    interactions). `accepted`, which every target but `observed` reads, is the answer to an
    invitation made in the window, known `accept_days` after it: up to horizon + accept_days.
    """
    after = INTERACTIONS_KNOWN_AFTER
    if train_cfg.target != "observed":
        after = max(after, pd.Timedelta(days=train_cfg.accept_days))
    return label_cfg.horizon + after


def split_cutoffs(
    cutoffs: Sequence[pd.Timestamp],
    label_cfg: LabelConfig,
    train_cfg: TrainConfig,
    *,
    incomplete: Sequence[pd.Timestamp] = (),
    source: str = "default_label",
) -> CutoffSplit:
    """Out-of-time split: latest cutoff tests, the latest allowed earlier one validates, the rest train."""
    ordered = sorted(set(cutoffs))
    if len(ordered) < 3:
        raise ValueError(
            f"need at least 3 cutoffs with complete labels (train, validation, test), found {len(ordered)}: "
            f"{[c.date().isoformat() for c in ordered]}. Supply more history, lower min_history_months "
            "or set an earlier first_cutoff"
        )
    test = ordered[-1]
    earlier = ordered[:-1]
    embargoed: list[pd.Timestamp] = []
    lag = label_lag(label_cfg, train_cfg)
    if train_cfg.embargo:
        known_by_test = [c for c in earlier if c + lag <= test]
        embargoed = [c for c in earlier if c not in known_by_test]
        earlier = known_by_test
    if len(earlier) < 2:
        raise ValueError(
            f"after the embargo (labels must be known before the test cutoff {test.date()}) only "
            f"{len(earlier)} earlier cutoff(s) remain; need 2 (train + validation). Supply more history, lower "
            "min_history_months, or set training.embargo = false"
        )
    validation = earlier[-1]
    train = earlier[:-1]
    if train_cfg.embargo:
        # the same rule one step earlier: training labels must be known at the validation cutoff,
        # or early stopping and calibration would be judged on outcomes the fit already saw
        known_by_validation = [c for c in train if c + lag <= validation]
        embargoed = sorted([*embargoed, *(c for c in train if c not in known_by_validation)])
        train = known_by_validation
        if not train:
            raise ValueError(
                f"after the embargo no training cutoff's labels are known before the validation cutoff "
                f"{validation.date()}. Supply more history, lower min_history_months, or set training.embargo = false"
            )
    return CutoffSplit(
        train=tuple(train),
        validation=validation,
        test=test,
        incomplete=tuple(incomplete),
        embargoed=tuple(embargoed),
        source=source,
    )


def backtest_splits(
    cutoffs: Sequence[pd.Timestamp],
    label_cfg: LabelConfig,
    train_cfg: TrainConfig,
    *,
    incomplete: Sequence[pd.Timestamp] = (),
    source: str = "default_label",
) -> tuple[CutoffSplit, ...]:
    """Rolling-origin folds, oldest first: the latest `backtest_cutoffs` cutoffs each test once.

    Each fold is `split_cutoffs` on the cutoffs up to its test cutoff (same embargo rules), so
    no fold fits, stops early or calibrates on labels unknown at its own test cutoff. Folds
    that history cannot support are left out (the latest one must exist).
    """
    ordered = sorted(set(cutoffs))
    folds: list[CutoffSplit] = []
    for back in range(train_cfg.backtest_cutoffs):
        upto = ordered[: len(ordered) - back]
        try:
            folds.append(split_cutoffs(upto, label_cfg, train_cfg, incomplete=incomplete, source=source))
        except ValueError:
            if not folds:
                raise
            logger.warning(
                "backtest: only %d of %d test cutoffs have enough history before them",
                len(folds),
                train_cfg.backtest_cutoffs,
            )
            break
    return tuple(reversed(folds))


@dataclass(frozen=True)
class SnapshotDataset:
    """One row per eligible (member, cutoff) of every cutoff any backtest fold uses.

    Columns: `member_id, as_of, split, label, relevance, weight`, the outcome columns of
    `features.targets` (`invited, accepted, enrolled, productive`), then the features. `split`
    names the latest fold's role of the row (`train`, `validation`, `test`, `backtest` for
    cutoffs only earlier folds use, `refit` for embargoed cutoffs only the served model's refit
    learns from). Cutoffs no fold tests on (lambdarank: nor validates on) hold
    only their sampled rows (`downsample_negatives`, built before their features); `part` and `fold_parts`
    sample the training rows of the other cutoffs the same way (the same rows: sampling is
    idempotent), so every training row is kept with probability 1 or `negative_sample_rate`
    and weighted by the inverse. Numeric features are float32.
    """

    frame: pd.DataFrame
    split: CutoffSplit
    feature_names: list[str]
    downsampling: dict[str, float] = field(default_factory=dict)
    folds: tuple[CutoffSplit, ...] = ()
    negative_sample_rate: float = 1.0
    seed: int = 0
    refit_cutoffs: tuple[pd.Timestamp, ...] = ()  # every complete cutoff (empty: the latest fold's used ones)
    answers_end: pd.Timestamp | None = None  # the programme log's end: answers after it are unknown (the refit's "now")
    accept_days: int = ACCEPT_DAYS  # an invitation's answer is known this many days after it
    step_months: int = 1
    accept_from_answers: bool = False  # P(accept | invited) learns from every answer known at training time

    @property
    def answers_known(self) -> bool:
        """Whether P(accept | invited) learns from every answer known at training time (needs invitation times)."""
        return self.accept_from_answers and "invited_at" in self.frame.columns

    def answered_mask(self, rows: pd.DataFrame) -> np.ndarray | None:
        """Which of `rows` have their first invitation's answer known when the programme log ends
        (`invited_at + accept_days <= answers_end`; False where not invited). None without
        invitation times: the out-of-time rows P(accept | invited) is calibrated on (`training.backtest`)."""
        if self.answers_end is None or "invited_at" not in rows.columns:
            return None
        return self._answered_by(rows, self.answers_end)

    def _answered_by(self, rows: pd.DataFrame, known_at: pd.Timestamp) -> np.ndarray:
        """`invited_at + accept_days <= known_at` per row (False where not invited: no `invited_at`)."""
        return (rows["invited_at"] + pd.Timedelta(days=self.accept_days) <= known_at).to_numpy(dtype=bool)

    def answered_rows(self, known_at: pd.Timestamp) -> pd.DataFrame:
        """Rows of cutoffs before `known_at` whose first invitation's answer is known at `known_at`
        (`invited_at + accept_days <= known_at`), the rows `accepted` is learnt from at that time."""
        frame = self.frame
        known = (
            (frame["invited"].to_numpy() == 1)
            & (frame["as_of"] < known_at).to_numpy()
            & self._answered_by(frame, known_at)
        )
        return frame.loc[known].reset_index(drop=True)

    def acceptance_parts(self, known_at: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """(training, validation) rows of P(accept | invited) for a model trained at `known_at`, or None
        when the component learns from the fold's own rows (`accept_from_answers` off, or no invitation times).

        `start` opens the latest whole step whose answers are all known at `known_at`; validation holds
        every answered invitation from `start` on (that step and any later answered days, so one to two
        steps), training every one before `start`. A member invited once
        appears at up to H / step cutoffs: all of them fall on the same side, so early stopping never
        sees an answer the fit learnt from.
        """
        if not self.answers_known:
            return None
        start = answer_validation_start(known_at, self.accept_days, self.step_months)
        rows = self.answered_rows(known_at)
        validation = (rows["invited_at"] >= start).to_numpy()
        return rows.loc[~validation].reset_index(drop=True), rows.loc[validation].reset_index(drop=True)

    def component_rows(self, known_at: pd.Timestamp) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]] | None:
        """`fit_components(rows_for=...)` for a model trained at `known_at`: the accept component's
        `acceptance_parts`, or None when it learns from the fold's own rows."""
        parts = self.acceptance_parts(known_at)
        return None if parts is None else {ACCEPT_COMPONENT: parts}

    def _rows(self, cutoffs: Sequence[pd.Timestamp]) -> pd.DataFrame:
        return self.frame.loc[self.frame["as_of"].isin(list(cutoffs))].reset_index(drop=True)

    def _train_rows(self, cutoffs: Sequence[pd.Timestamp]) -> pd.DataFrame:
        rows = downsample_negatives(self._rows(cutoffs), self.negative_sample_rate, self.seed)
        return rows.reset_index(drop=True)

    def part(self, name: str) -> pd.DataFrame:
        """Rows of one split of the latest fold (`train`, `validation`, `test`), sorted by as_of then member_id."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        if name == "train":
            return self._train_rows(self.split.train)
        return self._rows([self.split.validation if name == "validation" else self.split.test])

    def fold_parts(self, fold: CutoffSplit) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(train, validation, test) rows of one backtest fold."""
        return self._train_rows(fold.train), self._rows([fold.validation]), self._rows([fold.test])

    def all_rows(self) -> pd.DataFrame:
        """The refit's training rows: every complete cutoff (`refit_cutoffs`), negatives downsampled.

        That includes the cutoffs the latest fold's embargo left out: they are complete at training
        time, and the refit is judged by no one afterwards (it is calibrated on the folds' out-of-time
        scores). Without `refit_cutoffs`, the cutoffs the latest fold uses."""
        return self._train_rows(self.refit_cutoffs or self.split.used)

    def known_rows(self, fold: CutoffSplit) -> pd.DataFrame:
        """What a refit as of `fold.test` learns from: every complete cutoff up to the fold's validation
        cutoff (all of them have their labels known at the test cutoff), negatives downsampled."""
        complete = self.refit_cutoffs or (*fold.train, fold.validation)
        return self._train_rows([c for c in complete if c <= fold.validation])

    def counts(self) -> pd.DataFrame:
        """Rows and positives per split and cutoff."""
        return (
            self.frame.groupby(["split", "as_of"], observed=True, sort=True)
            .agg(rows=("label", "size"), positives=("label", "sum"))
            .reset_index()
        )


def programme_end(data: BrandData) -> pd.Timestamp:
    """When the programme log ends (an export that stops early must not read as "no answer"); without one, the data's end."""
    end = None if "program" in data.absent else data.latest("program", "event_at")
    return pd.Timestamp(data.data_end if end is None or pd.isna(end) else min(end, data.data_end))


def answer_validation_start(known_at: pd.Timestamp, accept_days: int, step_months: int) -> pd.Timestamp:
    """The start of the latest step-long window of invitations whose answers are all known at `known_at`."""
    step = pd.DateOffset(months=step_months)
    start = known_at - step
    while start + step + pd.Timedelta(days=accept_days) > known_at:
        start = start - step
    return start


def graded_relevance(data: BrandData, labels: pd.DataFrame, label_cfg: LabelConfig) -> pd.Series:
    """2 = label 1; 1 = enrolled within the label window without being productive; 0 otherwise."""
    relevance = labels["label"].astype("int64") * 2
    program = data.program
    enrolled = program.loc[program["status"] == "enrolled", ["member_id", "event_at"]]
    if len(enrolled) == 0:
        return relevance
    pairs = labels[["member_id", "as_of"]].merge(enrolled, on="member_id", how="inner")
    in_window = (pairs["event_at"] >= pairs["as_of"]) & (pairs["event_at"] < pairs["as_of"] + label_cfg.horizon)
    hit = pairs.loc[in_window, ["member_id", "as_of"]].drop_duplicates().assign(enrolled_in_window=True)
    flags = labels[["member_id", "as_of"]].merge(hit, on=["member_id", "as_of"], how="left")
    enrolled_flag = flags["enrolled_in_window"].fillna(False).astype(bool).to_numpy()
    return relevance.where(~((relevance == 0) & enrolled_flag), 1)


SAMPLING_KEY_COLUMNS = ("member_id", "as_of")
FEATURE_BATCH_ROWS = 1_000_000  # rows per build_features call: bounds the float64 frame before float32


def sampling_draws(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """A uniform [0, 1) draw per row, a pure function of the row's (member_id, as_of) and the seed.

    A row's draw does not depend on the other rows, so sampling before the features are built
    and sampling again later (a cutoff that one fold validates on and a later fold trains on)
    keep exactly the same rows: sampling is idempotent.
    """
    keys = [c for c in SAMPLING_KEY_COLUMNS if c in frame.columns]
    if not keys:
        raise ValueError(f"sampling needs a key column ({', '.join(SAMPLING_KEY_COLUMNS)})")
    hash_key = hashlib.sha256(f"kocrank-negative-sampling-{seed}".encode()).hexdigest()[:16]
    hashed = pd.util.hash_pandas_object(frame[keys], index=False, hash_key=hash_key).to_numpy(dtype="uint64")
    return (hashed >> np.uint64(11)).astype("float64") * 2.0**-53


def informative_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows never sampled away: label 1, graded relevance > 0, or any outcome (invited, accepted, ...).

    Keeping every row with an outcome keeps the rare invited rows that treatment-aware targets
    (training.targets) learn from; only rows with nothing happening are sampled.
    """
    keep = frame["label"].to_numpy() == 1
    if "relevance" in frame.columns:
        keep |= frame["relevance"].to_numpy() > 0
    for column in OUTCOME_COLUMNS:
        if column in frame.columns:
            keep |= frame[column].to_numpy() == 1
    return keep


def downsample_negatives(frame: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """Keep every informative row and a seeded `rate` share of the others, weighted 1/rate.

    Horvitz-Thompson weights: each kept row's weight is 1 / its probability of being kept, so
    every component fit (observed, if_invited, uplift) stays unbiased. Idempotent: see
    `sampling_draws`.
    """
    if rate >= 1.0:
        return frame.assign(weight=1.0)
    informative = informative_rows(frame)
    keep = informative | (sampling_draws(frame, seed) < rate)
    kept = frame.loc[keep].copy()
    kept["weight"] = np.where(informative[keep], 1.0, 1.0 / rate)
    return kept


def negative_rate(train_cfg: TrainConfig, train_rows: int, informative: int) -> float:
    """The share of uninformative training rows to keep.

    A number in the config is used as given. `"auto"` keeps every row while the training
    cutoffs hold at most `auto_sample_train_rows` rows, and above that keeps about that many
    (all informative rows plus a share of the rest): the backtest's fits then cost the same
    for any brand size, while the evaluation cutoffs stay complete.
    """
    if train_cfg.negative_sample_rate != "auto":
        return float(train_cfg.negative_sample_rate)
    budget = train_cfg.auto_sample_train_rows
    if train_rows <= budget:
        return 1.0
    rest = max(train_rows - informative, 1)
    return float(min(1.0, max(budget - informative, 0.01 * rest) / rest))


def features_for_rows(data: BrandData, rows: pd.DataFrame, engine: EngineConfig | None = None) -> pd.DataFrame:
    """Features (float32 numerics) of exactly the (member_id, as_of) pairs in `rows`.

    Built in batches of whole cutoffs of at most ~`FEATURE_BATCH_ROWS` rows, each cast to
    float32 as DuckDB streams it, so no float64 frame covers a whole cutoff.
    """
    counts = rows.groupby("as_of", sort=True, observed=True).size()
    batches: list[list[pd.Timestamp]] = [[]]
    size = 0
    for cutoff, count in counts.items():
        if batches[-1] and size + count > FEATURE_BATCH_ROWS:
            batches.append([])
            size = 0
        batches[-1].append(pd.Timestamp(cutoff))
        size += int(count)
    parts = []
    for cutoffs in batches:
        wanted = rows.loc[rows["as_of"].isin(cutoffs), ["member_id", "as_of"]]
        parts.append(build_features(data, None, engine, rows=wanted, float32=True))
    features = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    categorical = [name for name in CATEGORY_LEVELS if name in features.columns]
    return coerce_features(features, categorical, keep_other_columns=True) if len(parts) > 1 else features


def _same_keys(rows: pd.DataFrame, features: pd.DataFrame) -> bool:
    """Whether `features` holds exactly `rows`' (member_id, as_of) pairs in the same order."""
    return (
        len(rows) == len(features)
        and bool((rows["member_id"].to_numpy() == features["member_id"].to_numpy()).all())
        and bool((rows["as_of"].to_numpy() == features["as_of"].to_numpy()).all())
    )


def build_snapshots(
    data: BrandData, label_cfg: LabelConfig, train_cfg: TrainConfig, engine: EngineConfig | None = None
) -> SnapshotDataset:
    """Features, labels and outcomes of eligible members at every complete cutoff (backtest folds and refit).

    `engine`: the config's `[engine]` (DuckDB threads, memory limit, spill folder, refund rule)."""
    cutoffs, incomplete, source = candidate_cutoffs(data, label_cfg, train_cfg)
    folds = backtest_splits(cutoffs, label_cfg, train_cfg, incomplete=incomplete, source=source)
    split = folds[-1]
    # every complete cutoff: the folds' own, and the embargoed ones the served model's refit learns
    # from (none without a refit: `refit = false`, or lambdarank, which serves the latest fold)
    refit_cutoffs = tuple(sorted(cutoffs)) if train_cfg.refit and train_cfg.objective == "binary" else ()
    logger.info(
        "cutoffs: %d train (%s .. %s), validation %s, test %s; %d left out (incomplete window), %d embargoed; "
        "backtest tests %s; the refit learns from %d complete cutoffs",
        len(split.train),
        split.train[0].date(),
        split.train[-1].date(),
        split.validation.date(),
        split.test.date(),
        len(split.incomplete),
        len(split.embargoed),
        ", ".join(str(f.test.date()) for f in folds),
        len(refit_cutoffs),
    )
    fold_cutoffs = {c for fold in folds for c in fold.used}
    used = sorted(fold_cutoffs | set(refit_cutoffs))
    # test cutoffs are judged by top-K metrics over the whole population: they stay complete.
    # Validation cutoffs only early-stop and calibrate, which take weights: they are sampled
    # like training cutoffs (lambdarank's query groups need them whole, so it keeps them).
    evaluated = {fold.test for fold in folds}
    if train_cfg.objective == "lambdarank":
        evaluated |= {fold.validation for fold in folds}
    labels = labels_and_outcomes(data, used, label_cfg, engine, accept_days=train_cfg.accept_days)
    which = {c: "backtest" for fold in folds for c in fold.used}
    which |= {c: "train" for c in split.train} | {split.validation: "validation", split.test: "test"}
    roles = labels["as_of"].map(which).fillna("refit")
    labels.insert(2, "split", pd.Categorical(roles, categories=[*SPLITS, "backtest", "refit"]))
    if train_cfg.objective == "lambdarank":
        relevance = graded_relevance(data, labels, label_cfg) if source == "default_label" else labels["label"]
    else:
        relevance = labels["label"]
    labels.insert(4, "relevance", relevance.astype("int64").to_numpy())

    # sample before building features: the test cutoffs of every fold stay complete. The rate is
    # set by the size of the folds' training-only cutoffs (`negative_rate`; the refit's extra cutoffs
    # do not change it, so neither do the folds' rows) and applies to every other cutoff too
    validations = {fold.validation for fold in folds}
    train_only = labels["as_of"].isin(list(fold_cutoffs - evaluated - validations)).to_numpy()
    sampled = ~labels["as_of"].isin(list(evaluated)).to_numpy()
    informative = informative_rows(labels)
    rate = negative_rate(train_cfg, int(train_only.sum()), int((informative & train_only).sum()))
    kept = pd.concat(
        [
            labels.loc[~sampled].assign(weight=1.0),
            downsample_negatives(labels.loc[sampled], rate, train_cfg.seed),
        ]
    )
    logger.info(
        "snapshot rows: %d eligible (member, cutoff) pairs, %d kept (negative sample rate %.4g on %d training and "
        "validation cutoffs; %d test cutoffs complete)",
        len(labels), len(kept), rate, len(set(used) - evaluated), len(evaluated),
    )
    train_rows = int((labels["split"] == "train").sum())
    eligible_rows = len(labels)
    del labels, sampled, train_only, informative  # 7.4M rows at 1M members: not needed past sampling
    kept = kept.sort_values(["as_of", "member_id"], kind="stable", ignore_index=True)
    feats = features_for_rows(data, kept, engine)
    names = feature_names()
    columns = ["member_id", "as_of", "split", "label", "relevance", "weight", *OUTCOME_COLUMNS, "invited_at"]
    if source == "default_label":  # the soft label's evidence (training.soft_labels); a brand's own label has other rules
        columns += [c for c in POSTING_COLUMNS if c in kept.columns]
    if _same_keys(kept, feats):  # the usual case: both sorted by (as_of, member_id), one copy
        frame = pd.concat([kept[columns], feats[names]], axis=1)
    else:
        merged = kept.merge(feats, on=["member_id", "as_of"], how="inner", validate="one_to_one")
        if len(merged) != len(kept):
            raise ValueError(
                f"{len(kept) - len(merged)} labelled (member, cutoff) rows have no feature row; "
                "features.build.build_features must return every member who joined before the cutoff"
            )
        frame = merged.sort_values(["as_of", "member_id"], kind="stable", ignore_index=True)[[*columns, *names]]
    del feats, kept
    dataset = SnapshotDataset(
        frame=frame,
        split=split,
        feature_names=names,
        folds=folds,
        negative_sample_rate=rate,
        seed=train_cfg.seed,
        refit_cutoffs=refit_cutoffs,
        answers_end=programme_end(data),
        accept_days=train_cfg.accept_days,
        step_months=train_cfg.step_months,
        accept_from_answers=train_cfg.accept_from_answers,
    )
    downsampling = {
        "negative_sample_rate": rate,
        "eligible_rows": float(eligible_rows),
        "built_rows": float(len(frame)),
        "train_rows_before": float(train_rows),
        "train_rows_after": float(len(dataset.part("train"))),
    }
    return replace(dataset, downsampling=downsampling)
