"""Small, fast frame operations shared by the pipeline."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def is_in(values: pd.Series | pd.Index, candidates: Iterable[str]) -> np.ndarray:
    """`values.isin(candidates)` as a bool array, for string ids (missing values are never in).

    For Arrow-backed strings (pandas 3's default `str`) it is one `pyarrow.compute.is_in`:
    pandas builds a Python scalar per candidate first, which took 1.36 s for 1M member ids
    against 130k candidates, 0.15 s this way; labels and outcomes of a 1M-member brand make
    dozens of such calls. Other dtypes fall back to pandas.
    """
    if isinstance(candidates, (set, frozenset)):
        candidates = list(candidates)
    array = getattr(values.array, "_pa_array", None)
    if array is None or not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return np.asarray(values.isin(candidates), dtype=bool)
    value_set = pd.array(candidates, dtype="str")
    value_set = pa.chunked_array(getattr(value_set, "_pa_array", pa.array(value_set))).combine_chunks().cast(array.type)
    found = pc.is_in(array, value_set=value_set.drop_null(), skip_nulls=True)
    return np.asarray(found.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
