"""Compact distribution profiles of feature frames and the population stability index (PSI).

A profile is what an issued list or a training reference keeps of its feature
distribution: per numeric column the decile edges and the share of rows in each bin
(plus the share of nulls); per categorical column the share of each level. It is small
JSON (a few KB for the whole registry), so it is stored with every issued list and
compared later without recomputing features at the old cutoff.

Everything is vectorised (numpy quantiles / searchsorted, pandas value_counts): profiling
or comparing 1M rows x 60 features takes seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

N_BINS = 10
EPSILON = 1e-4  # floor on a bin's share, so an empty bin does not make PSI infinite
NULL_BIN = "<null>"


def _numeric_profile(values: pd.Series, n_bins: int) -> dict[str, Any]:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    present = array[~np.isnan(array)]
    null_share = float(1.0 - len(present) / len(array)) if len(array) else 0.0
    if len(present) == 0:
        return {"kind": "numeric", "edges": [], "shares": [], "null_share": null_share, "n": int(len(array))}
    inner = np.unique(np.quantile(present, np.linspace(0, 1, n_bins + 1)[1:-1]))
    shares = _bin_shares(present, inner) * (1.0 - null_share)
    return {
        "kind": "numeric",
        "edges": inner.tolist(),
        "shares": shares.tolist(),
        "null_share": null_share,
        "n": int(len(array)),
        "mean": float(present.mean()),
    }


def _bin_shares(present: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of `present` in the bins (-inf, e1], (e1, e2], ..., (e_last, inf).

    One vectorised comparison per edge (about ten) is several times faster than a
    searchsorted of every value at 1M rows.
    """
    at_most = np.array([np.count_nonzero(present <= edge) for edge in edges], dtype="int64")
    counts = np.diff(np.concatenate([[0], at_most, [len(present)]]))
    return counts / max(len(present), 1)


def _categorical_profile(values: pd.Series) -> dict[str, Any]:
    counts = values.value_counts(dropna=False, sort=False)  # on the codes for a categorical: fast at 1M rows
    total = max(int(counts.sum()), 1)
    shares: dict[str, float] = {}
    for level, count in counts.items():
        key = NULL_BIN if pd.isna(level) else str(level)
        shares[key] = shares.get(key, 0.0) + count / total
    return {"kind": "categorical", "shares": shares, "n": int(len(values))}


def profile_frame(frame: pd.DataFrame, columns: Iterable[str] | None = None, n_bins: int = N_BINS) -> dict[str, dict[str, Any]]:
    """Profile of each column of `frame` (numeric: decile bins; category/object/bool: level shares)."""
    out: dict[str, dict[str, Any]] = {}
    for column in columns if columns is not None else frame.columns:
        series = frame[column]
        if isinstance(series.dtype, pd.CategoricalDtype) or series.dtype == object or pd.api.types.is_string_dtype(series):
            out[column] = _categorical_profile(series)
        else:
            out[column] = _numeric_profile(series.astype("float64"), n_bins)
    return out


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.clip(expected, EPSILON, None)
    actual = np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_against(reference: Mapping[str, Any], values: pd.Series) -> float:
    """PSI of `values` against one column's reference profile (reference bins, nulls a bin of their own)."""
    if reference["kind"] == "categorical":
        current = _categorical_profile(values)["shares"]
        levels = sorted(set(reference["shares"]) | set(current))
        expected = np.array([reference["shares"].get(level, 0.0) for level in levels])
        actual = np.array([current.get(level, 0.0) for level in levels])
        return _psi(expected, actual)
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    present = array[~np.isnan(array)]
    null_share = float(1.0 - len(present) / len(array)) if len(array) else 0.0
    edges = np.asarray(reference["edges"], dtype="float64")
    if len(reference["shares"]) == 0:  # the reference was all null
        return _psi(np.array([1.0, 0.0]), np.array([null_share, 1.0 - null_share]))
    actual = np.append(_bin_shares(present, edges) * (1.0 - null_share), null_share)
    expected = np.append(np.asarray(reference["shares"], dtype="float64"), reference["null_share"])
    return _psi(expected, actual)


def psi_profiles(reference: Mapping[str, Mapping[str, Any]], frame: pd.DataFrame) -> pd.Series:
    """PSI of every column the reference profiles and `frame` share, sorted high to low."""
    shared = [column for column in reference if column in frame.columns]
    values = {column: psi_against(reference[column], frame[column]) for column in shared}
    return pd.Series(values, name="psi", dtype="float64").sort_values(ascending=False)
