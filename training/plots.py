"""Charts logged with each training run (matplotlib's object API: no pyplot state, no backend switch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    return target


def gains_chart(curves: Mapping[str, pd.DataFrame], path: str | Path, *, title: str = "") -> Path:
    """Cumulative gains (left) and lift (right) per scorer; `curves` come from `evaluate.gains_curve`."""
    fig = Figure(figsize=(12, 5))
    gains_ax, lift_ax = fig.subplots(1, 2)
    for name, curve in curves.items():
        gains_ax.plot(curve["contacted_share"], curve["captured_share"], label=name, linewidth=1.4)
        head = curve.loc[curve["contacted_share"] <= 0.2]
        lift_ax.plot(head["contacted_share"], head["lift"], label=name, linewidth=1.4)
    gains_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="no information")
    gains_ax.set(xlabel="share of eligible members invited", ylabel="share of productive KOCs captured")
    gains_ax.set_title("Cumulative gains" + (f" — {title}" if title else ""))
    lift_ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    lift_ax.set(xlabel="share of eligible members invited (top 20%)", ylabel="lift over base rate")
    lift_ax.set_title("Lift")
    gains_ax.legend(loc="lower right")
    lift_ax.legend(loc="upper right")
    return _save(fig, path)


def calibration_chart(tables: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Reliability diagram: observed positive rate against mean predicted probability per bin, with the
    first scorer's bin counts."""
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    top = 0.0
    for name, table in tables.items():
        filled = table.loc[table["count"] > 0]
        ax.plot(filled["mean_predicted"], filled["observed_rate"], marker="o", label=name)
        if name == next(iter(tables)):  # members per bin of the first scorer (the model): how much each point weighs
            for x, y, n in filled[["mean_predicted", "observed_rate", "count"]].itertuples(index=False):
                ax.annotate(f"n={int(n):,}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        top = max(top, float(filled[["mean_predicted", "observed_rate"]].max().max()))
    limit = min(1.0, max(top * 1.1, 0.05))
    ax.plot([0, limit], [0, limit], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    ax.set(xlim=(0, limit), ylim=(0, limit), xlabel="mean predicted probability", ylabel="observed positive rate")
    ax.set_title("Calibration on the test cutoff")
    ax.legend(loc="upper left")
    return _save(fig, path)


def bar_chart(values: pd.Series, path: str | Path, *, title: str, xlabel: str, top: int = 25) -> Path:
    """Horizontal bars of the `top` largest values (feature importance, mean |SHAP|)."""
    shown = values.sort_values(ascending=False, kind="stable").head(top)[::-1]
    fig = Figure(figsize=(8, max(3.0, 0.3 * len(shown) + 1)))
    ax = fig.subplots()
    ax.barh(np.arange(len(shown)), shown.to_numpy(), color="#3b7dd8")
    ax.set_yticks(np.arange(len(shown)), labels=[str(i) for i in shown.index])
    ax.set(xlabel=xlabel)
    ax.set_title(title)
    return _save(fig, path)
