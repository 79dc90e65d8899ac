"""Outcomes of issued lists: what each list achieved once its label window closed.

For every issued list (`serving.issued`) and the data available now:
- **matured** lists (label window `[as_of, as_of + H)` complete, interactions known):
  invitations sent (an `invited` event in the `program` table within `send_window_days`
  of as_of), accepted (the answer to the invitation: `enrolled` within the list's `accept_days`
  of it, before any `declined`; training's rule, `features.targets.programme_outcomes`),
  productive KOCs (the default label of
  `features.labels`), realised precision@K, lift over the eligible base rate, and uplift
  with a bootstrap interval: exploit picks against the **control group** (held out at
  random from the same top block, `serving.selection.draw_policy`) and exploration picks
  against the band members not drawn (equally random).
- **maturing** lists: the calibrated estimate (sum of the invited scores) next to the
  productive KOCs realised so far.

A list whose invitations were not (all) sent is reported as such: a list nobody acted on
has no precision to report (its figures stay empty); a partly sent list is scored on the
whole list (intention to treat) and its status says how many were sent. Control members who
were invited anyway (by another campaign) are counted, since they dilute the uplift.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from features.contract import BrandData, parse_as_of
from features.frames import is_in
from features.labels import INTERACTIONS_KNOWN_AFTER, default_labels, label_data_end, label_window_complete
from features.targets import ACCEPT_DAYS, programme_outcomes
from serving.issued import IssuedList, LoopConfig

logger = logging.getLogger(__name__)


def bootstrap_rate_difference(
    treated: np.ndarray, control: np.ndarray, reps: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Difference of the means of two 0/1 samples with a percentile bootstrap interval.

    Resampling n draws with replacement from a 0/1 sample and taking the mean is a
    Binomial(n, p_hat) / n draw, so the bootstrap is done exactly without row loops.
    Returns (difference, low, high); NaNs when either sample is empty.
    """
    if len(treated) == 0 or len(control) == 0:
        return (float("nan"),) * 3
    p_t, p_c = float(np.mean(treated)), float(np.mean(control))
    draws = rng.binomial(len(treated), p_t, reps) / len(treated) - rng.binomial(len(control), p_c, reps) / len(control)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return p_t - p_c, float(low), float(high)


def _send_status(n_invited: int, n_sent: int) -> str:
    if n_invited == 0:
        return "empty list"
    if n_sent == n_invited:
        return "sent"
    if n_sent == 0:
        return "not sent"
    return f"partly sent ({n_sent} of {n_invited})"


def member_outcomes(issued: IssuedList, data: BrandData, cfg: LoopConfig) -> pd.DataFrame:
    """The list's member rows with `sent`, `accepted` and `productive` (so far) from the data now."""
    as_of = parse_as_of(issued.as_of, data.timezone)
    label_cfg = issued.label_config
    program = data.program
    sent_window = (program["event_at"] >= as_of) & (program["event_at"] < as_of + pd.Timedelta(days=cfg.send_window_days))
    sent = set(program.loc[sent_window & (program["status"] == "invited"), "member_id"])
    # the answer to the member's first invitation in the window, as training learns it (a decline
    # followed by a self-enrolment is a decline); lists issued before `accept_days` was recorded use the default
    answers = programme_outcomes(data, as_of, label_cfg, int(issued.meta.get("accept_days", ACCEPT_DAYS)))
    accepted = set(answers.loc[answers["accepted"], "member_id"])
    labels = default_labels(data, as_of, label_cfg).set_index("member_id")["label"]
    members = issued.members.copy()
    members["sent"] = is_in(members["member_id"], sent)
    members["accepted"] = is_in(members["member_id"], accepted)
    members["productive"] = members["member_id"].map(labels).fillna(0).astype("int64")
    return members


UPLIFTS = (("exploit", "exploit", "control"), ("explore", "explore", "band"))


def _realised(members: pd.DataFrame, cfg: LoopConfig, seed_key: str) -> dict[str, float]:
    """Precision, base rate, lift and the two uplifts (with intervals) of scored member rows."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, *seed_key.encode()]))
    y = members["productive"].to_numpy()
    role = members["role"].to_numpy()
    out = {"precision": float(y[members["invited"].to_numpy(dtype=bool)].mean()), "base_rate": float(y.mean())}
    out["lift"] = out["precision"] / out["base_rate"] if out["base_rate"] > 0 else float("nan")
    for name, picked, against in UPLIFTS:
        diff, low, high = bootstrap_rate_difference(y[role == picked], y[role == against], cfg.bootstrap_reps, cfg.confidence, rng)
        out[f"uplift_{name}"], out[f"uplift_{name}_low"], out[f"uplift_{name}_high"] = diff, low, high
    return out


def _counts(members: pd.DataFrame) -> dict[str, Any]:
    invited = members.loc[members["invited"]]
    control = members.loc[members["role"] == "control"]
    return {
        "eligible": int(len(members)),
        "invited": int(len(invited)),
        "sent": int(invited["sent"].sum()),
        "accepted": int(invited.loc[invited["sent"], "accepted"].sum()),
        "productive": int(invited["productive"].sum()),
        "expected_productive": float(invited["score"].sum()),
        "control": int(len(control)),
        "control_invited_elsewhere": int(control["sent"].sum()),
        "control_productive": int(control["productive"].sum()),
    }


EMPTY = {key: float("nan") for key in (
    "precision", "base_rate", "lift", *(f"uplift_{name}{end}" for name, _, _ in UPLIFTS for end in ("", "_low", "_high")))}


def _list_record(issued: IssuedList, members: pd.DataFrame, data: BrandData, cfg: LoopConfig) -> dict[str, Any]:
    label_cfg = issued.label_config
    as_of = parse_as_of(issued.as_of, data.timezone)
    matured = label_window_complete(data, as_of, label_cfg)
    counts = _counts(members)
    record: dict[str, Any] = {
        "list_id": issued.list_id,
        "as_of": str(issued.meta["as_of"])[:10],
        "model": f"{issued.meta['model'].get('name')}/{issued.meta['model'].get('version')}",
        "target": issued.meta["target"],
        "matured": bool(matured),
        "window_closes": str((as_of + label_cfg.horizon + INTERACTIONS_KNOWN_AFTER).date()),
        "status": _send_status(counts["invited"], counts["sent"]),
        "k": int(issued.meta["k"]),
        **counts,
        **EMPTY,
    }
    if not matured:
        record["evidence_until"] = str(label_data_end(data).date())
        return record
    if counts["sent"] == 0:
        return record  # nothing was acted on: nothing to score, the status says so
    record.update(_realised(members, cfg, issued.list_id))
    return record


def list_outcome(issued: IssuedList, data: BrandData, cfg: LoopConfig | None = None) -> dict[str, Any]:
    """One issued list scored against `data`: a flat record (see the module docstring)."""
    cfg = cfg or LoopConfig()
    return _list_record(issued, member_outcomes(issued, data, cfg), data, cfg)


def score_outcomes(lists: list[IssuedList], data: BrandData, cfg: LoopConfig | None = None) -> pd.DataFrame:
    """`list_outcome` of every issued list, oldest first, plus a `pooled` row over the matured
    lists that were (at least partly) sent: one control group of 5% of K is small, and pooling
    the months is what gives the uplift a useful interval."""
    cfg = cfg or LoopConfig()
    records, scored = [], []
    for issued in lists:
        members = member_outcomes(issued, data, cfg)
        record = _list_record(issued, members, data, cfg)
        records.append(record)
        if record["matured"] and record["sent"] > 0:
            scored.append(members)
    if len(scored) > 1:
        pooled = pd.concat(scored, ignore_index=True)
        counts = _counts(pooled)
        records.append({
            "list_id": f"pooled ({len(scored)} lists)", "as_of": "", "model": "", "target": "", "matured": True,
            "window_closes": "", "status": f"{counts['sent']} of {counts['invited']} sent", "k": int(sum(r["k"] for r in records
            if r["matured"] and r["sent"] > 0)), **counts, **_realised(pooled, cfg, "pooled"),
        })
    return pd.DataFrame.from_records(records)
