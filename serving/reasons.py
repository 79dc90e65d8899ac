"""Why a member is on the list: per-member model contributions turned into bilingual reasons.

Generated from the feature registry: each `Feature` carries its reason `concept` and its
`zh`/`en` phrase templates, filled with the member's own value ("12 notes in 90 days").
A reason is listed only for a feature that pushes this member's score UP (positive
contribution), the strongest feature per concept (a behaviour's 7/30/90-day variants are
one concept), strongest first. `why_not_higher` phrases the strongest concept pulling
the score DOWN. The API gets reason objects `{feature, value, contribution, zh, en,
percentile}`; the list gets `reason_i` ("zh / en"), `reason_i_zh` and `reason_i_en`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.registry import FEATURE_BY_NAME, Feature

Population = Mapping[str, np.ndarray]
"""Sorted non-missing values per numeric feature: the population a value's percentile is judged in."""


class Explainable(Protocol):
    def contributions(self, X: pd.DataFrame) -> pd.DataFrame: ...


def sorted_population(reference: pd.DataFrame, numeric_columns: Iterable[str]) -> dict[str, np.ndarray]:
    """Precompute a `Population` once so explaining a few members later stays cheap."""
    return {name: np.sort(reference[name].dropna().to_numpy(dtype="float64")) for name in numeric_columns}


class LazyPopulation(Mapping[str, np.ndarray]):
    """A `Population` that sorts a feature's values the first time a reason needs them.

    Reasons of a list use a handful of features; sorting all of them up front costs a
    full-size float64 copy of every numeric column (1 GB and ~10 s at 1M members).
    Sorting is deterministic, so a column sorted twice by racing requests is the same.
    """

    def __init__(self, reference: pd.DataFrame, numeric_columns: Iterable[str]) -> None:
        self._reference = reference
        self._columns = [name for name in numeric_columns if name in reference.columns]
        self._sorted: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._columns:
            raise KeyError(name)
        values = self._sorted.get(name)
        if values is None:
            values = np.sort(self._reference[name].dropna().to_numpy(dtype="float64"))
            self._sorted[name] = values
        return values

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def reason_concept(feature: str) -> str:
    """The registry's concept of a feature (the feature's own name when it is not registered)."""
    entry = FEATURE_BY_NAME.get(feature)
    return entry.concept if entry is not None else feature


def _is_missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def phrase(feature: Feature, value: object) -> tuple[str, str]:
    """The feature's (zh, en) phrase filled with one member's value."""
    if _is_missing(value):
        return feature.zh_missing or f"{feature.name}: —", feature.en_missing or f"{feature.name}: —"
    if feature.dtype == "category":
        fields: dict[str, Any] = {"value": str(value)}
    else:
        number = float(value)  # type: ignore[arg-type]
        fields = {"value": number}
        if "value_exp" in feature.zh + feature.en:  # a log-scale feature phrased on its natural scale
            fields["value_exp"] = math.expm1(min(number, 700.0))
    return feature.zh.format(**fields), feature.en.format(**fields)


def _plain(value: object) -> object:
    """A JSON-friendly value: None for missing, float for numbers, str for categories."""
    if _is_missing(value):
        return None
    return str(value) if isinstance(value, str) else float(value)  # type: ignore[arg-type]


def _percentile(population: Population | None, name: str, value: object) -> float | None:
    """Share of the population at or below the value (None for categories / missing)."""
    if population is None or name not in population or _is_missing(value) or isinstance(value, str):
        return None
    values = population[name]
    if len(values) == 0:
        return None
    return round(float(np.searchsorted(values, float(value), side="right")) / len(values), 4)  # type: ignore[arg-type]


def _strongest_distinct(contrib: np.ndarray, concepts: Sequence[str], n: int) -> np.ndarray:
    """Per row, the column positions of the `n` largest contributions, one per concept."""
    order = np.argsort(-contrib, axis=1, kind="stable")
    codes = pd.factorize(pd.Series(concepts))[0][order]
    repeat = np.zeros(order.shape, dtype=bool)
    for j in range(1, order.shape[1]):
        repeat[:, j] = (codes[:, :j] == codes[:, [j]]).any(axis=1)
    # stable sort puts each row's first-of-concept positions first, in contribution order
    keep_first = np.argsort(repeat, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(order, keep_first, axis=1)


def reason_columns(n_reasons: int) -> list[str]:
    """The list columns `top_reasons` returns, in order."""
    slots = range(1, n_reasons + 1)
    return [
        *[f"reason_{i}" for i in slots],
        *[f"reason_{i}_zh" for i in slots],
        *[f"reason_{i}_en" for i in slots],
        *[f"reason_feature_{i}" for i in slots],
        "reasons",
        "why_not_higher",
        "why_not_higher_zh",
        "why_not_higher_en",
    ]


def top_reasons(
    contributions: pd.DataFrame,
    values: pd.DataFrame,
    n_reasons: int = 3,
    population: Population | None = None,
) -> pd.DataFrame:
    """Each row's `n_reasons` strongest positive contributions, one per concept, as phrases.

    `contributions` and `values` share index and feature columns (extra columns such as a
    bias term, and features the registry does not know, are ignored). A slot is empty ("")
    when the member has fewer positive concepts; `reasons` holds the reason objects.
    """
    features = [c for c in contributions.columns if c in values.columns and c in FEATURE_BY_NAME]
    contrib = contributions[features].to_numpy(dtype="float64")
    concepts = [FEATURE_BY_NAME[f].concept for f in features]
    up = _strongest_distinct(contrib, concepts, n_reasons)
    down = np.argmin(contrib, axis=1) if features else np.zeros(len(contrib), dtype=int)
    columns: dict[str, np.ndarray] = {}  # only the few columns a reason names, as Python objects

    def value(name: str, r: int) -> object:
        if name not in columns:
            columns[name] = values[name].to_numpy(dtype=object)
        return columns[name][r]

    rows = []
    for r in range(len(contrib)):
        row: dict[str, object] = {}
        objects = []
        for slot in range(n_reasons):
            pos = int(up[r, slot]) if slot < up.shape[1] else -1
            if pos >= 0 and contrib[r, pos] > 0:
                name = features[pos]
                zh, en = phrase(FEATURE_BY_NAME[name], value(name, r))
                objects.append(
                    {
                        "feature": name,
                        "value": _plain(value(name, r)),
                        "contribution": round(float(contrib[r, pos]), 6),
                        "zh": zh,
                        "en": en,
                        "percentile": _percentile(population, name, value(name, r)),
                    }
                )
            else:
                name, zh, en = "", "", ""
            row[f"reason_{slot + 1}"] = f"{zh} / {en}" if name else ""
            row[f"reason_{slot + 1}_zh"] = zh
            row[f"reason_{slot + 1}_en"] = en
            row[f"reason_feature_{slot + 1}"] = name
        row["reasons"] = objects
        worst = int(down[r]) if features else -1
        if worst >= 0 and contrib[r, worst] < 0:
            zh, en = phrase(FEATURE_BY_NAME[features[worst]], value(features[worst], r))
            row.update(why_not_higher=f"{zh} / {en}", why_not_higher_zh=zh, why_not_higher_en=en)
        else:
            row.update(why_not_higher="", why_not_higher_zh="", why_not_higher_en="")
        rows.append(row)
    return pd.DataFrame(rows, index=contributions.index, columns=reason_columns(n_reasons))


def explain(
    model: Explainable,
    rows: pd.DataFrame,
    member_ids: Sequence[str],
    n: int = 3,
    population: Population | None = None,
) -> pd.DataFrame:
    """Reasons for some members, indexed by member_id (columns: `reason_columns(n)`).

    `rows`: model inputs indexed by member_id (at least these members). Contributions are
    computed only for these members (LightGBM's pred_contrib is the costly part of ranking);
    `population` (see `sorted_population`) gives each reason value its percentile.
    """
    chosen = rows.loc[list(member_ids)]
    out = top_reasons(model.contributions(chosen), chosen, n, population)
    out.index.name = "member_id"
    return out
