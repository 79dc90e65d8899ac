"""Off-policy evaluation: what would another model's top K have achieved on past issued lists?

Every issued list logged, for each eligible member, the exact probability `p` of being
invited under that month's policy (exploit block with a random control hold-out,
exploration band, see `serving.selection.draw_policy`). Once the list's label window has
closed we know, for the members actually invited, whether they became productive KOCs.
For a target policy that would have invited the set S (a challenger's top K, or the
champion's own deterministic top K), the value "productive KOCs among S if invited" is
estimated per list by

- **SNIPS** (self-normalised inverse propensity scoring):
  `K * sum_{i in S} w_i y_i / sum_{i in S} w_i` with `w_i = invited_i / p_i`;
- **DR** (doubly robust): `sum_{i in S} [ m_i + w_i (y_i - m_i) ]`, where `m_i` is a reward
  model of P(productive | invited, scores) fitted on the invited rows (logistic on the logits
  of the logged and the target scores, weighted by 1 / p). Members of S the logged policy
  could never have invited (p = 0) contribute only `m_i`; `coverage` reports their share.

Intervals are percentile bootstraps over members, resampled within each list (multinomial
counts, vectorised); the challenger-minus-champion difference is bootstrapped paired, on the
same resamples. Lists are pooled by summing, and reported per list (value / number of lists).

Why not obp (Open Bandit Pipeline): its current releases (0.5.x) require Python < 3.11 and
the last one that installs here (0.4.1) pulls in torch with its CUDA wheels (several GB)
for two estimators whose formulas fit in a few lines; and obp models one action per round,
whereas an issued list is a top-K slate over the eligible population.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.contract import BrandData, parse_as_of
from features.labels import label_window_complete
from serving.issued import IssuedList, LoopConfig
from serving.outcomes import member_outcomes
from serving.rank import model_features

logger = logging.getLogger(__name__)

ESTIMATORS = ("snips", "dr")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype="float64"), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_reward_model(log: pd.DataFrame) -> np.ndarray:
    """m_i = P(productive | invited, logged score, target score) for every row of `log`.

    Logistic regression on the invited rows (inverse-propensity weighted, so the fit
    represents the whole population rather than the logged picks); falls back to the logged
    calibrated score when the invited rows hold fewer than 10 of either outcome.
    """
    from sklearn.linear_model import LogisticRegression

    X = np.column_stack([_logit(log["score"]), _logit(log["target_score"])])
    invited = log["invited"].to_numpy(dtype=bool)
    y = log["productive"].to_numpy()[invited]
    if min(int(y.sum()), int(len(y) - y.sum())) < 10:
        return log["score"].to_numpy(dtype="float64")
    weights = 1.0 / log["p_invite"].to_numpy()[invited]
    model = LogisticRegression(C=1.0).fit(X[invited], y, sample_weight=weights)
    return model.predict_proba(X)[:, 1]


def top_k_mask(scores: pd.Series, member_ids: pd.Series, k: int) -> np.ndarray:
    """Deterministic top K by score (ties by member_id), as a boolean mask in row order."""
    order = np.lexsort((member_ids.to_numpy(), -scores.to_numpy(dtype="float64")))
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


@dataclass(frozen=True)
class PolicyValue:
    """One estimator's value of a policy: productive KOCs per list, with its interval."""

    policy: str
    estimator: str
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class OpeResult:
    """Estimates for challenger and champion top K on the matured issued lists, and their difference."""

    values: list[PolicyValue]
    difference: dict[str, tuple[float, float, float]]  # estimator -> (challenger - champion, low, high)
    lists: list[str]
    k: int
    coverage: float  # share of challenger picks the logged policies could have invited (p > 0)
    per_list: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(v) for v in self.values])


def _bootstrap(parts: Sequence[dict[str, np.ndarray]], k_by_list: Sequence[int], reps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap replicates (reps,) of the pooled estimates, resampling members within each list."""
    totals: dict[str, np.ndarray] = {}
    for part, k in zip(parts, k_by_list, strict=True):
        n = len(part["w"])
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=reps) if n else np.zeros((reps, 0))
        for name in ("target", "champion"):
            inside = part[name]
            wy = counts @ (inside * part["w"] * part["y"])
            w = counts @ (inside * part["w"])
            snips = np.where(w > 0, k * wy / np.where(w > 0, w, 1.0), 0.0)
            dr = counts @ (inside * part["dr_term"])
            totals[f"{name}_snips"] = totals.get(f"{name}_snips", 0.0) + snips
            totals[f"{name}_dr"] = totals.get(f"{name}_dr", 0.0) + dr
    return totals


def _point(part: dict[str, np.ndarray], name: str, k: int) -> tuple[float, float]:
    inside = part[name]
    w = float((inside * part["w"]).sum())
    snips = k * float((inside * part["w"] * part["y"]).sum()) / w if w > 0 else 0.0
    return snips, float((inside * part["dr_term"]).sum())


def evaluate_top_k(logs: Sequence[pd.DataFrame], cfg: LoopConfig | None = None) -> OpeResult:
    """SNIPS and DR values of the target's and the champion's top K on logged lists.

    Each log frame (one per issued list, attrs `list_id` and `k`) has one row per eligible
    member: `member_id, score` (logged), `target_score`, `invited`, `p_invite`, `productive`.
    """
    cfg = cfg or LoopConfig()
    if not logs:
        raise ValueError("no matured issued list to evaluate on: issue lists and wait for their label windows to close")
    rng = np.random.default_rng(cfg.seed)
    parts, ks, rows = [], [], []
    for log in logs:
        k = int(log.attrs["k"])
        p = log["p_invite"].to_numpy(dtype="float64")
        invited = log["invited"].to_numpy(dtype=bool)
        y = log["productive"].to_numpy(dtype="float64")
        w = np.where(invited & (p > 0), 1.0 / np.where(p > 0, p, 1.0), 0.0)
        m = fit_reward_model(log)
        target = top_k_mask(log["target_score"], log["member_id"], k).astype("float64")
        champion = top_k_mask(log["score"], log["member_id"], k).astype("float64")
        keep = (target + champion) > 0  # only rows in either top K contribute
        part = {"w": w[keep], "y": y[keep], "dr_term": (m + w * (y - m))[keep], "target": target[keep], "champion": champion[keep]}
        parts.append(part)
        ks.append(k)
        target_snips, target_dr = _point(part, "target", k)
        champion_snips, champion_dr = _point(part, "champion", k)
        supported = float(((p > 0) & (target > 0)).sum() / max(target.sum(), 1))
        rows.append({"list_id": log.attrs["list_id"], "k": k, "coverage": supported, "target_snips": target_snips,
                     "target_dr": target_dr, "champion_snips": champion_snips, "champion_dr": champion_dr,
                     "logged_productive": float(y[invited].sum())})
    per_list = pd.DataFrame(rows)
    boot = _bootstrap(parts, ks, cfg.bootstrap_reps, rng)
    alpha = (1.0 - cfg.confidence) / 2.0
    n_lists = len(logs)
    values, difference = [], {}
    for estimator in ESTIMATORS:
        for name, label in (("target", "challenger"), ("champion", "champion")):
            low, high = np.quantile(boot[f"{name}_{estimator}"], [alpha, 1 - alpha]) / n_lists
            point = float(per_list[f"{name}_{estimator}"].sum()) / n_lists
            values.append(PolicyValue(label, estimator, point, float(low), float(high)))
        diff = boot[f"target_{estimator}"] - boot[f"champion_{estimator}"]
        low, high = np.quantile(diff, [alpha, 1 - alpha]) / n_lists
        point = float((per_list[f"target_{estimator}"] - per_list[f"champion_{estimator}"]).sum()) / n_lists
        difference[estimator] = (point, float(low), float(high))
    coverage = float((per_list["coverage"] * per_list["k"]).sum() / per_list["k"].sum())
    return OpeResult(values, difference, list(per_list["list_id"]), int(max(ks)), coverage, per_list)


def list_log(issued: IssuedList, data: BrandData, challenger: Any, cfg: LoopConfig) -> pd.DataFrame | None:
    """One matured list's OPE log with the challenger's score at the list's cutoff; None if not usable.

    The challenger scores the list's eligible members with features at the list's as_of
    (the same point-in-time feature code as training and ranking).
    """
    as_of = parse_as_of(issued.as_of, data.timezone)
    if not label_window_complete(data, as_of, issued.label_config):
        return None
    members = member_outcomes(issued, data, cfg)
    sent_share = float(members.loc[members["invited"], "sent"].mean()) if members["invited"].any() else 0.0
    if sent_share < cfg.min_sent_share:
        # the logged probabilities describe this list's policy; if someone else decided who was
        # actually invited, they do not describe the invitations and IPS/DR would be biased
        logger.warning("list %s: only %.0f%% of its invitations were sent (< %.0f%%): skipped by off-policy evaluation",
                       issued.list_id, 100 * sent_share, 100 * cfg.min_sent_share)
        return None
    features = model_features(data, as_of, challenger).set_index("member_id")
    X = features.loc[members["member_id"], list(challenger.feature_names_)]
    members["target_score"] = challenger.predict_proba(X)
    # the outcome of an invitation is only observed where it was sent; an unsent pick counts as not invited
    members["invited"] = members["invited"] & members["sent"]
    members.attrs.update(list_id=issued.list_id, k=int(issued.meta["k"]))
    return members[["member_id", "score", "target_score", "invited", "p_invite", "productive"]]


def ope_compare(lists: Sequence[IssuedList], data: BrandData, challenger: Any, cfg: LoopConfig | None = None) -> OpeResult:
    """Challenger top K against the logged champion's top K on every matured issued list that was
    sent (at least `min_sent_share` of its invitations)."""
    cfg = cfg or LoopConfig()
    logs = [log for issued in lists if (log := list_log(issued, data, challenger, cfg)) is not None]
    if not logs and lists:
        raise ValueError(
            f"none of the {len(lists)} issued list(s) is usable: each is still maturing or had less than "
            f"{cfg.min_sent_share:.0%} of its invitations sent (see the warnings)"
        )
    return evaluate_top_k(logs, cfg)


@dataclass(frozen=True)
class OpeVerdict:
    """Whether the off-policy evaluation lets a challenger be promoted, and why."""

    allows_promotion: bool
    reason: str
    result: OpeResult | None = None


def ope_verdict(
    lists: Sequence[IssuedList], data: BrandData, challenger: Any, cfg: LoopConfig | None = None, estimator: str = "dr"
) -> OpeVerdict:
    """The promotion gate (`[loop] require_ope_win`): the challenger must beat the champion's top K
    on past issued lists, i.e. the lower bound of the `estimator`'s difference interval is above 0.

    Without `require_ope_win`, or without any matured and sent issued list, it does not block
    (the reason says which). Called by promotion code as
    `ope_verdict(store.all(), brand, loaded_challenger.model, cfg.loop)`.
    """
    cfg = cfg or LoopConfig()
    try:
        result = ope_compare(lists, data, challenger, cfg)
    except ValueError as error:
        return OpeVerdict(True, f"no off-policy evidence ({error}); not blocking")
    return verdict_from(result, cfg, estimator)


def verdict_from(result: OpeResult, cfg: LoopConfig, estimator: str = "dr") -> OpeVerdict:
    """The promotion decision on an `OpeResult`: a win is a difference interval entirely above 0."""
    diff, low, high = result.difference[estimator]
    text = (f"{estimator.upper()} challenger - champion = {diff:+.2f} productive KOCs per list [{low:+.2f}, {high:+.2f}] "
            f"over {len(result.lists)} list(s)")
    if low > 0:
        return OpeVerdict(True, f"challenger wins off-policy: {text}", result)
    if not cfg.require_ope_win:
        return OpeVerdict(True, f"challenger does not win off-policy ({text}); not required by [loop] require_ope_win", result)
    return OpeVerdict(False, f"challenger does not win off-policy: {text}", result)
