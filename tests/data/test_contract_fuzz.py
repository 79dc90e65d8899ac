"""Fuzz the contract loader: whatever a brand hands over, the answer is success or a ContractError.

Hypothesis draws, for every table, CSV or Parquet files of random bytes, missing and
extra columns, and columns of random types and values (odd text, huge numbers, NaN/inf,
booleans, naive and aware timestamps from year 1 to 9999, dates, nulls). The loader must
never show a traceback: a bug here is an operator staring at a stack trace instead of a
message naming table, column, rule and examples.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import TABLES, ContractError, from_frames, load_data

# pandas warns when it reads a complex number as a float; the value is then rejected anyway
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")]

IDS = ["000123", "000456", "789", " 789", "", "1.0"]  # a small pool so references sometimes exist

texts = st.one_of(
    st.sampled_from(IDS),
    st.text(max_size=12),
    st.sampled_from(
        [
            "2024-05-01",
            "2024-05-01T10:00:00+08:00",
            "2024-05-01T0200Z",
            "0001-01-01",
            "9999-12-31",
            "nan",
            "NaT",
            "inf",
            "-0",
            "1e400",
            "true",
            "F",
            "xhs",
            "enrolled",
            "share",
            "=1+1",
            " ",
        ]
    ),
)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
)
naive_times = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))
aware_times = st.datetimes(
    min_value=dt.datetime(1678, 1, 1),
    max_value=dt.datetime(2261, 12, 31),
    timezones=st.just(dt.timezone(dt.timedelta(hours=8))),
)

# one homogeneous column type at a time (Parquet needs it); a CSV gets the values as text
COLUMN_VALUES = {
    "text": texts,
    "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "bool": st.booleans(),
    "naive": naive_times,
    "aware": aware_times,
    "date": st.dates(min_value=dt.date(1, 1, 1)),
    "mixed": st.one_of(texts, numbers, st.booleans(), naive_times),
    # what odd exports and hand-built frames carry: nested Parquet columns, raw bytes, exotic objects
    "list": st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    "struct": st.fixed_dictionaries({"a": st.integers(min_value=0, max_value=9)}),
    "bytes": st.binary(max_size=6),
    "decimal": st.decimals(allow_nan=True, allow_infinity=False, places=2),
    "exotic": st.sampled_from([1j, pd.Period("2024-01"), pd.Interval(0, 1), dt.time(1, 2), pd.Timedelta(1), 10**30]),
}


@st.composite
def column(draw, n: int) -> pd.Series:
    kind = draw(st.sampled_from(sorted(COLUMN_VALUES)))
    values = draw(st.lists(st.one_of(st.none(), COLUMN_VALUES[kind]), min_size=n, max_size=n))
    if kind in ("naive", "aware") and draw(st.booleans()):
        values = [None if v is None else pd.Timestamp(v) for v in values]
        try:  # a real datetime column, when pandas can hold the values
            return pd.Series(pd.to_datetime(values, utc=kind == "aware"))
        except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
            pass
    return pd.Series(values, dtype=object)


@st.composite
def table(draw, name: str) -> pd.DataFrame:
    n = draw(st.integers(min_value=0, max_value=6))
    names = [c for c in TABLES[name].column_names if draw(st.integers(0, 9)) > 0]  # now and then a column is missing
    if draw(st.booleans()):
        names.append(draw(st.sampled_from(["extra", "member_id", "", "Unnamed: 0"])))
    frame = pd.DataFrame({col: draw(column(n)) for col in dict.fromkeys(names)}, index=range(n))
    return frame


@st.composite
def data_dir(draw) -> dict[str, tuple[str, object]]:
    """Per table: ("bytes", raw file content) or ("frame", DataFrame), and the file format."""
    out = {}
    for name in TABLES:
        if name not in ("members", "orders") and draw(st.integers(0, 3)) == 0:
            continue  # optional table absent
        fmt = draw(st.sampled_from(["csv", "parquet"]))
        if draw(st.integers(0, 7)) == 0:
            out[name] = (fmt, draw(st.binary(max_size=200)))
        else:
            out[name] = (fmt, draw(table(name)))
    return out


def _write(frame: pd.DataFrame, path: Path) -> bool:
    """Write a frame as the brand would; False when the writer itself refuses the values."""
    try:
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    except Exception:  # noqa: BLE001 - pyarrow/pandas refusing odd objects is not the loader's business
        path.unlink(missing_ok=True)
        return False
    return True


def _only_contract_errors(call) -> None:
    try:
        call()
    except ContractError as err:
        assert err.violations and all(v.table and v.rule for v in err.violations)
        assert len(str(err)) < 20_000  # examples are short


# about a minute of CPU for the three fuzz tests together; raise max_examples locally to dig deeper
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(FUZZ, max_examples=40)
@given(files=data_dir())
def test_loading_any_files_gives_data_or_a_contract_error(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (fmt, content) in files.items():
            path = root / f"{name}.{fmt}"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                _write(content, path)
        _only_contract_errors(lambda: load_data(root, export_time="2030-01-01"))


@settings(FUZZ, max_examples=15)
@given(
    frames=st.fixed_dictionaries({name: table(name) for name in TABLES}), tz=st.sampled_from(["Asia/Shanghai", "UTC"])
)
def test_validating_any_frames_gives_data_or_a_contract_error(frames, tz):
    _only_contract_errors(lambda: from_frames(frames, tz))


# a small valid world, one row per record: the fuzz changes one cell of it at a time
VALID = {
    "members": pd.DataFrame.from_records(
        [("A1", "2024-01-01", 1990, "F", 1, "store"), ("B2", "2024-02-01 09:30", None, "M", 3, "ads"), ("C3", "2024-03-01", None, None, None, None)],
        columns=["member_id", "joined_at", "birth_year", "gender", "city_tier", "channel"],
    ),
    "orders": pd.DataFrame.from_records(
        [("o1", "A1", "2024-04-01 10:00", 99.0, "skincare"), ("o2", "A1", "2024-05-01T10:00+08:00", 150.5, None), ("o3", "B2", "2024-05-02", 20.0, "makeup")],
        columns=["order_id", "member_id", "ordered_at", "amount", "category"],
    ),
    "labels": pd.DataFrame.from_records([("A1", "2024-06-01", 1), ("C3", "2024-06-01", 0)], columns=["member_id", "as_of", "label"]),
}


@settings(FUZZ, max_examples=30)
@given(
    table_name=st.sampled_from(sorted(VALID)),
    row=st.integers(min_value=0, max_value=2),
    column_index=st.integers(min_value=0, max_value=5),
    value=st.one_of(st.none(), *COLUMN_VALUES.values()),
    fmt=st.sampled_from(["csv", "parquet"]),
)
def test_one_odd_cell_in_valid_data_gives_data_or_a_contract_error(table_name, row, column_index, value, fmt):
    """Near-valid input reaches the deep rules (references, uniqueness, time bounds) that random input rarely does."""
    frames = {name: df.astype(object) for name, df in VALID.items()}
    target = frames[table_name]
    target.iat[row % len(target), column_index % target.shape[1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = all(_write(df, root / f"{name}.{fmt}") for name, df in frames.items())
        if written:
            _only_contract_errors(lambda: load_data(root, export_time="2030-01-01", current_year=2026))
    _only_contract_errors(lambda: from_frames(frames, export_time="2030-01-01", current_year=2026))


def test_the_valid_base_of_the_fuzz_loads():
    data = from_frames(VALID, export_time="2030-01-01", current_year=2026)
    assert len(data.orders) == 3 and data.labels["label"].tolist() == [1, 0]
