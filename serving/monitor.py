"""The monthly monitoring report: is the model still fit to rank this month's members?

Checks, each against a `[loop]` threshold; any tripped check recommends retraining:
- **feature drift** — PSI of every model input of this month's eligible members against the
  training reference (the profile of the model's test cutoff) and against the previous
  issued list's profile (`serving.profile`: reference decile bins, nulls a bin of their own);
- **score drift** — PSI of the score distribution against the same two references;
- **calibration drift** — on the latest matured issued list: realised productive KOCs among
  its eligible members against the sum of their scores (the calibrated estimate);
- **rank stability** — share of the previous list's top K still in this month's top K, and
  Kendall's tau of the two scores over the union of both top Ks (informational);
- **quota fill and reasons** of the latest issued list (informational).

`monitor` is pure: it takes the current feature frame and scores, the reference profiles and
issued lists, and returns a `MonitorReport`; everything is vectorised (numpy histograms and
searchsorted), so 1M members take seconds (`bench/monitor.py`). `render_html` turns a report
into one self-contained HTML file (matplotlib PNGs embedded as base64).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from serving.issued import IssuedList, LoopConfig
from serving.profile import profile_frame, psi_against, psi_profiles

logger = logging.getLogger(__name__)

TOP_REASONS = 8


@dataclass(frozen=True)
class Check:
    """One monitored quantity, its threshold and whether it recommends retraining."""

    name: str
    value: float | None
    threshold: str
    tripped: bool
    detail: str


@dataclass
class MonitorReport:
    as_of: pd.Timestamp
    checks: list[Check]
    feature_psi: pd.DataFrame  # index feature; columns vs_reference, vs_previous
    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, Any] = field(default_factory=dict)  # data the figures are drawn from

    @property
    def retrain_recommended(self) -> bool:
        return any(check.tripped for check in self.checks)

    def tripped(self) -> list[Check]:
        return [check for check in self.checks if check.tripped]


def _psi_check(name: str, psi: pd.Series, threshold: float, against: str) -> Check:
    if psi.empty:
        return Check(name, None, f"PSI <= {threshold}", False, f"no {against} to compare with")
    worst = psi.sort_values(ascending=False)
    over = worst[worst > threshold]
    detail = (f"{len(over)} feature(s) above {threshold}: " + ", ".join(f"{f} {v:.2f}" for f, v in over.head(5).items())
              if len(over) else f"largest {worst.index[0]} {worst.iloc[0]:.3f}")
    return Check(name, float(worst.iloc[0]), f"PSI <= {threshold}", bool(len(over)), detail)


def _top_k(scores: pd.Series, k: int) -> pd.Index:
    """Ids of the K highest scores, ties broken by member_id (as lists are ordered)."""
    values = scores.to_numpy(dtype="float64")
    if len(values) > k:  # only rows scoring at least the K-th score need the (string) tie-break sort
        candidates = np.flatnonzero(values >= np.partition(values, len(values) - k)[len(values) - k])
    else:
        candidates = np.arange(len(values))
    order = np.lexsort((scores.index.to_numpy()[candidates], -values[candidates]))
    return scores.index[candidates[order[:k]]]


TAU_SAMPLE = 20_000


def top_k_overlap(previous: pd.Series, current: pd.Series, k: int) -> tuple[float, float, pd.DataFrame]:
    """(share of the previous top K in the current top K, Kendall tau, the scores of the union of both top Ks).

    Both inputs are scores indexed by member_id. Only members eligible in both months are
    compared: last month's picks who were invited since are in cool-down now, and their
    leaving says nothing about the model's stability. Tau is over all those members (a seeded
    sample of `TAU_SAMPLE` beyond that): over the union of two top Ks alone it would be
    pulled negative by the selection itself.
    """
    from scipy.stats import kendalltau

    common = previous.index.intersection(current.index)
    previous, current = previous.loc[common], current.loc[common]
    prev_top, curr_top = _top_k(previous, k), _top_k(current, k)
    overlap = len(prev_top.intersection(curr_top)) / max(len(prev_top), 1)
    union = prev_top.union(curr_top)
    both = pd.DataFrame({"previous": previous.loc[union], "current": current.loc[union]})
    rows = np.arange(len(common))
    if len(rows) > TAU_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(rows, TAU_SAMPLE, replace=False))
    tau = float(kendalltau(previous.to_numpy()[rows], current.to_numpy()[rows]).statistic) if len(rows) > 2 else float("nan")
    return overlap, tau, both


def calibration_table(scores: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean score against realised rate per score decile (a reliability table)."""
    frame = pd.DataFrame({"score": scores, "productive": outcomes})
    frame["decile"] = pd.qcut(frame["score"].rank(method="first"), bins, labels=False) + 1
    return frame.groupby("decile").agg(members=("score", "size"), mean_score=("score", "mean"),
                                       realised_rate=("productive", "mean")).reset_index()


def monitor(
    as_of: pd.Timestamp,
    features: pd.DataFrame,
    scores: pd.Series,
    cfg: LoopConfig,
    *,
    k: int,
    reference: dict[str, Any] | None = None,
    previous: IssuedList | None = None,
    matured: tuple[IssuedList, pd.DataFrame] | None = None,
    latest: IssuedList | None = None,
) -> MonitorReport:
    """Drift, calibration and stability checks of this month's eligible members.

    `features`: model inputs of this month's eligible members (index member_id); `scores`:
    their scores (same index). `reference`: the training profile `{"features": ..., "score": ...}`
    (`serving.profile`); `previous`: the last issued list before `as_of`; `matured`: the latest
    matured list with its member outcomes (`serving.outcomes.member_outcomes`); `latest`: the
    latest issued list at or before `as_of` (quota fill and reasons).
    """
    psi_ref = psi_profiles(reference["features"], features) if reference else pd.Series(dtype="float64")
    psi_prev = psi_profiles(previous.profile["features"], features) if previous and previous.profile else pd.Series(dtype="float64")
    feature_psi = pd.DataFrame({"vs_reference": psi_ref, "vs_previous": psi_prev})
    feature_psi = feature_psi.sort_values(["vs_reference", "vs_previous"], ascending=False, na_position="last")
    checks = [
        _psi_check("feature drift vs training reference", psi_ref, cfg.psi_alert, "training reference"),
        _psi_check("feature drift vs previous list", psi_prev, cfg.psi_alert, "previous issued list"),
    ]
    score_frame = scores.to_frame("score")
    for label, profile in (("training reference", reference), ("previous list", previous.profile if previous else None)):
        if profile and "score" in profile:
            value = psi_against(profile["score"], score_frame["score"])
            checks.append(Check(f"score drift vs {label}", value, f"PSI <= {cfg.score_psi_alert}", value > cfg.score_psi_alert,
                                f"score PSI {value:.3f}"))
        else:
            checks.append(Check(f"score drift vs {label}", None, f"PSI <= {cfg.score_psi_alert}", False, f"no {label}"))
    metrics: dict[str, float] = {
        "eligible": float(len(scores)),
        "mean_score": float(scores.mean()) if len(scores) else float("nan"),
        "max_feature_psi_reference": float(psi_ref.max()) if len(psi_ref) else float("nan"),
        "max_feature_psi_previous": float(psi_prev.max()) if len(psi_prev) else float("nan"),
    }
    tables: dict[str, pd.DataFrame] = {}
    plots: dict[str, Any] = {"scores": scores.to_numpy(), "feature_psi": feature_psi}

    if matured is not None:
        issued, members = matured
        expected, realised = float(members["score"].sum()), float(members["productive"].sum())
        ratio = realised / expected if expected > 0 else float("nan")
        tripped = bool(np.isfinite(ratio) and abs(ratio - 1.0) > cfg.calibration_alert)
        checks.append(Check("calibration on latest matured list", ratio, f"|realised/expected - 1| <= {cfg.calibration_alert}",
                            tripped, f"list {issued.list_id}: {realised:.0f} productive of {len(members):,} eligible against "
                            f"{expected:.1f} expected (ratio {ratio:.2f})"))
        tables["calibration"] = calibration_table(members["score"].to_numpy(), members["productive"].to_numpy())
        metrics["calibration_ratio"] = ratio
    else:
        checks.append(Check("calibration on latest matured list", None, f"|realised/expected - 1| <= {cfg.calibration_alert}",
                            False, "no issued list has matured yet"))

    if previous is not None:
        prev_scores = previous.members.set_index("member_id")["score"]
        overlap, tau, both = top_k_overlap(prev_scores, scores, k)
        checks.append(Check("rank stability (top-K overlap)", overlap, f">= {cfg.min_top_k_overlap}",
                            overlap < cfg.min_top_k_overlap, f"among members eligible in both months, {overlap:.0%} of list "
                            f"{previous.list_id}'s top {k} are still in the top {k}; Kendall tau of their scores {tau:.2f}"))
        metrics.update(top_k_overlap=overlap, kendall_tau=tau)
        plots["rank"] = both
        plots["previous_scores"] = prev_scores.to_numpy()
    else:
        checks.append(Check("rank stability (top-K overlap)", None, f">= {cfg.min_top_k_overlap}", False, "no previous issued list"))

    if latest is not None:
        invited = latest.members.loc[latest.members["invited"]]
        counts = latest.meta.get("counts", {})
        fill = pd.DataFrame([{"list": latest.list_id, "K": latest.meta["k"], "invited": len(invited),
                              "exploit": counts.get("exploit"), "explore": counts.get("explore"), "control": counts.get("control"),
                              "fill": len(invited) / latest.meta["k"]}])
        segments = latest.meta.get("segments", {})
        caps = latest.meta.get("rank_config", {}).get("quotas", {})
        for column, shares in segments.items():
            top_value, top_count = max(shares.items(), key=lambda item: item[1]) if shares else ("-", 0)
            fill[f"largest {column}"] = f"{top_value}: {top_count}" + (f" (cap {caps[column]:.0%})" if column in caps else "")
        tables["quota_fill"] = fill
        reasons = Counter(reason.strip() for text in invited["reasons"].dropna() for reason in str(text).split("|") if reason.strip())
        tables["reasons"] = pd.DataFrame(reasons.most_common(TOP_REASONS), columns=["reason", "members"])
        metrics["quota_fill"] = float(fill["fill"].iloc[0])
    return MonitorReport(pd.Timestamp(as_of), checks, feature_psi, metrics, tables, plots)


def reference_profile(features: pd.DataFrame, scores: pd.Series) -> dict[str, Any]:
    """The training reference: profiles of the model inputs and the scores of one cutoff's eligible members."""
    return {"features": profile_frame(features), "score": profile_frame(scores.to_frame("score"))["score"]}


# -- HTML ---------------------------------------------------------------------------------

def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(report: MonitorReport, cfg: LoopConfig) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    psi = report.feature_psi.head(15).iloc[::-1]
    if len(psi):
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(psi) + 1.2))
        y = np.arange(len(psi))
        ax.barh(y - 0.2, psi["vs_reference"].fillna(0), height=0.4, label="vs training reference")
        ax.barh(y + 0.2, psi["vs_previous"].fillna(0), height=0.4, label="vs previous list")
        ax.axvline(cfg.psi_alert, color="red", linestyle="--", label=f"alert {cfg.psi_alert}")
        ax.set_yticks(y, psi.index)
        ax.set_xlabel("population stability index")
        ax.set_title("Feature drift: the 15 most shifted model inputs")
        ax.legend(loc="lower right", fontsize=8)
        out["feature drift"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(0, 1, 41)
    ax.hist(report.plots["scores"], bins=bins, density=True, alpha=0.6, label=f"this month ({report.as_of.date()})")
    if "previous_scores" in report.plots:
        ax.hist(report.plots["previous_scores"], bins=bins, density=True, histtype="step", linewidth=1.5, label="previous list")
    ax.set_yscale("log")
    ax.set_xlabel("score (calibrated probability of becoming a productive KOC)")
    ax.set_ylabel("density (log)")
    ax.set_title("Score distribution of eligible members")
    ax.legend(fontsize=8)
    out["score distribution"] = _png(fig)
    if "calibration" in report.tables:
        table = report.tables["calibration"]
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        top = float(max(table["mean_score"].max(), table["realised_rate"].max(), 1e-3)) * 1.1
        ax.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect calibration")
        ax.plot(table["mean_score"], table["realised_rate"], marker="o", label="score deciles")
        ax.set_xlabel("mean score")
        ax.set_ylabel("realised productive rate")
        ax.set_title("Calibration on the latest matured list")
        ax.legend(fontsize=8)
        out["calibration"] = _png(fig)
    if "rank" in report.plots and len(report.plots["rank"]):
        both = report.plots["rank"]
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        ax.scatter(both["previous"], both["current"], s=8, alpha=0.6)
        ax.set_xlabel("score in the previous list")
        ax.set_ylabel("score this month")
        ax.set_title("Rank stability: union of both top K")
        out["rank stability"] = _png(fig)
    return out


def _table_html(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    return frame.to_html(index=False, border=0, classes="t", na_rep="-", float_format=float_format.format, escape=True)


def render_html(report: MonitorReport, cfg: LoopConfig, title: str = "kocrank monitoring report") -> str:
    """One self-contained HTML page: verdict, checks, plots (base64 PNG) and tables."""
    verdict = ("<p class='bad'>RETRAIN RECOMMENDED — tripped: " + html.escape("; ".join(c.name for c in report.tripped())) + "</p>"
               if report.retrain_recommended else "<p class='ok'>No threshold tripped: keep the champion.</p>")
    rows = "".join(
        f"<tr class='{'bad' if c.tripped else 'ok'}'><td>{html.escape(c.name)}</td>"
        f"<td>{'-' if c.value is None else f'{c.value:.3f}'}</td><td>{html.escape(c.threshold)}</td>"
        f"<td>{'TRIPPED' if c.tripped else 'ok'}</td><td>{html.escape(c.detail)}</td></tr>"
        for c in report.checks
    )
    figures = "".join(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(name)}</figcaption></figure>"
                      for name, data in _figures(report, cfg).items())
    psi = report.feature_psi.head(20).reset_index(names="feature")
    sections = [f"<h2>Most drifted features (PSI)</h2>{_table_html(psi)}"]
    for name, heading in (("quota_fill", "Quota fill of the latest list"), ("reasons", "Most common reasons in the latest list"),
                          ("calibration", "Calibration by score decile")):
        if name in report.tables:
            sections.append(f"<h2>{heading}</h2>{_table_html(report.tables[name])}")
    style = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{padding:4px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:left}"
             "tr.bad td{background:#fde2e2}.bad{color:#a40000;font-weight:bold}.ok{color:#176b00}"
             "figure{display:inline-block;margin:8px}figcaption{font-size:12px;color:#555}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body><h1>{html.escape(title)} — as of {report.as_of.date()}</h1>{verdict}"
            f"<p>{int(report.metrics['eligible']):,} eligible members; mean score {report.metrics['mean_score']:.4f}</p>"
            f"<table><tr><th>check</th><th>value</th><th>threshold</th><th>status</th><th>detail</th></tr>{rows}</table>"
            f"{figures}{''.join(sections)}</body></html>")
