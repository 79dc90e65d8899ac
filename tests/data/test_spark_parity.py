"""Spark engine parity: every feature from `build_features_spark` equals DuckDB's `build_features`.

One small simulated world (1,200 members, 12 months) is written to two data folders:
naive Parquet (local timestamps, two cutoffs), and a mix of tz-aware Parquet (UTC
instants in some tables, +08:00 in another) with CSV text mixing naive times with `Z` /
`+00:00` / `+08:00` / `+0800` offsets, exact duplicate rows, unknown event types,
point-in-time refunds and an absent optional table.
DuckDB reads each folder through the contract loader (`load_data`), Spark through its own
loader; the outputs must match column for column:

- the same columns in the same order, the same rows (member_id, as_of) in the same order;
- categoricals and integer-valued counts exactly; floats within rel 1e-9 / abs 1e-9
  (summation order differs between engines; amounts are summed as exact decimals);
- nulls in the same places.

Any transpilation drift (a column missing, renamed, or computed differently) fails.
One SparkSession for the module: local[2], no UI, 4 shuffle partitions.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.contract import ContractError, load_data
from features.io import write_tables
from features.registry import FEATURES, categorical_features, feature_names

pytestmark = pytest.mark.slow

TIMEZONE = "Asia/Shanghai"
CUTOFFS = [pd.Timestamp("2024-10-01"), pd.Timestamp("2025-01-01")]
REL, ABS = 1e-9, 1e-9
TIME_COLUMNS = {
    "members": ["joined_at"],
    "orders": ["ordered_at", "refunded_at"],
    "events": ["event_at"],
    "posts": ["posted_at"],
    "referrals": ["referred_at", "referee_joined_at", "referee_first_order_at"],
    "program": ["event_at"],
    "social": ["observed_at"],
}


def assert_same_features(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    """Fail naming every column where the two engines disagree (and a few rows of it)."""
    assert list(spark.columns) == list(duck.columns), "columns differ: " + str(
        sorted(set(duck.columns).symmetric_difference(spark.columns)) or "same names, other order"
    )
    assert len(spark) == len(duck), f"{len(spark)} rows from Spark, {len(duck)} from DuckDB"
    assert spark["member_id"].tolist() == duck["member_id"].tolist(), "rows are not the same members in the same order"
    assert (spark["as_of"].to_numpy() == duck["as_of"].to_numpy()).all(), "as_of differs"
    categorical = set(categorical_features())
    wrong = []
    for name in feature_names():
        a, b = duck[name], spark[name]
        if name in categorical:
            same = a.astype("object").where(a.notna(), None).tolist() == b.astype("object").where(b.notna(), None).tolist()
            same = same and list(a.cat.categories) == list(b.cat.categories)
        else:
            x, y = a.to_numpy("float64"), b.to_numpy("float64")
            same = bool((np.isnan(x) == np.isnan(y)).all())
            if same and FEATURE_DTYPE[name] == "int":
                same = bool((x[~np.isnan(x)] == y[~np.isnan(y)]).all())
            elif same:
                same = bool(np.allclose(x, y, rtol=REL, atol=ABS, equal_nan=True))
        if not same:
            differs = duck[["member_id", "as_of"]].assign(duckdb=a, spark=b)
            differs = differs[~((a == b) | (a.isna() & b.isna())).fillna(False).astype(bool)]
            wrong.append(f"{name}: {len(differs)} row(s), e.g.\n{differs.head(3).to_string()}")
    assert not wrong, f"{len(wrong)} feature(s) differ between DuckDB and Spark:\n" + "\n".join(wrong)


FEATURE_DTYPE = {f.name: f.dtype for f in FEATURES}


def _localised(series: pd.Series, tz: object) -> pd.Series:
    """Naive business time → the same instant as a tz-aware column in `tz`."""
    return series.dt.tz_localize(TIMEZONE).dt.tz_convert(tz)


def _text(series: pd.Series, rng: np.random.Generator) -> pd.Series:
    """ISO text: naive business time, or the same instant with a Z / +00:00 / +08:00 / +0800 offset."""
    aware = _localised(series, "UTC")
    forms = [
        series.dt.strftime("%Y-%m-%d %H:%M:%S.%f"),
        aware.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        aware.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        series.dt.strftime("%Y-%m-%dT%H:%M:%S.%f+08:00"),
        series.dt.strftime("%Y-%m-%dT%H:%M:%S+0800"),
    ]
    pick = rng.integers(0, len(forms), len(series))
    out = pd.Series(None, index=series.index, dtype="object")
    for i, form in enumerate(forms):
        out[pick == i] = form[pick == i]
    return out.where(series.notna(), None)


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    from kocrank.simulation import SimConfig, simulate

    tables = {k: v for k, v in simulate(SimConfig(members=1200, months=12, seed=1)).tables.items() if k != "truth"}
    orders = tables["orders"].copy()
    # whole seconds: the text forms above keep exactly what the naive value holds
    for name, columns in TIME_COLUMNS.items():
        for column in columns:
            if column in tables[name].columns:
                tables[name][column] = tables[name][column].dt.floor("s")
    orders = tables["orders"].copy()
    refunded = orders["refunded"].to_numpy()
    # half the refunds carry their time (point-in-time rule), half do not ("count" rule)
    with_time = refunded & (np.arange(len(orders)) % 2 == 0)
    orders["refunded_at"] = orders["ordered_at"].where(with_time) + pd.Timedelta(days=20)
    tables["orders"] = orders
    return tables


@pytest.fixture(scope="module")
def spark():
    from features.spark_engine import spark_session

    session = spark_session("local[2]", TIMEZONE, shuffle_partitions=4, app_name="kocrank-parity")
    yield session
    session.stop()


def _naive_parquet(tables, root):
    write_tables(tables, root)


def _aware_parquet(tables, root):
    """Every timestamp tz-aware: UTC instants in some tables, +08:00 in the others."""
    out = {}
    for i, (name, df) in enumerate(tables.items()):
        df = df.copy()
        tz = "UTC" if i % 2 else dt.timezone(dt.timedelta(hours=8))
        for column in TIME_COLUMNS.get(name, []):
            if column in df.columns:
                df[column] = _localised(df[column], tz)
        out[name] = df
    write_tables(out, root)


def _mixed(tables, root):
    """CSV text with mixed offsets (members, orders, posts), tz-aware Parquet (events, referrals,
    program), `social` absent; unknown event types and exact duplicate rows as real exports have."""
    rng = np.random.default_rng(5)
    text, aware = {}, {}
    for name, df in tables.items():
        if name == "social":
            continue  # absent optional table: an empty table with canonical columns in both engines
        df = df.copy()
        if name in ("members", "orders", "posts"):
            for column in TIME_COLUMNS.get(name, []):
                if column in df.columns:
                    df[column] = _text(df[column], rng)
            text[name] = df
        else:
            tz = "UTC" if name != "referrals" else dt.timezone(dt.timedelta(hours=8))
            for column in TIME_COLUMNS.get(name, []):
                df[column] = _localised(df[column], tz)
            aware[name] = df
    events = aware["events"]
    renamed = rng.choice(len(events), 20, replace=False)
    events.loc[events.index[renamed], "event_type"] = "live_stream"  # outside the contract: counted as "other"
    aware["events"] = pd.concat([events, events.iloc[:25]], ignore_index=True)  # exact duplicates, dropped
    text["orders"] = pd.concat([text["orders"], text["orders"].iloc[:5]], ignore_index=True)
    write_tables(text, root, fmt="csv")
    write_tables(aware, root)


@pytest.mark.parametrize("layout", [_naive_parquet, _mixed], ids=["naive-parquet", "aware-parquet-and-csv-text"])
def test_every_feature_matches_duckdb(layout, world, spark, tmp_path):
    from features.spark_engine import build_features_spark

    layout(world, tmp_path)
    brand = load_data(tmp_path, timezone=TIMEZONE)
    cutoffs = CUTOFFS if layout is _naive_parquet else CUTOFFS[-1:]
    duck = build_features(brand, cutoffs)
    result = build_features_spark(tmp_path, cutoffs, spark=spark, timezone=TIMEZONE)
    assert spark.conf.get("spark.sql.session.timeZone") == TIMEZONE
    assert duck["orders_total"].sum() > 0 and duck["bgnbd_p_alive"].notna().any()  # the world has substance
    assert_same_features(duck, result)


def test_time_zone_is_the_business_one(world, spark, tmp_path):
    """UTC instants read under another business time zone land on that zone's wall time."""
    from features.spark_engine import load_tables_spark

    members = world["members"].head(5)
    orders = world["orders"][world["orders"]["member_id"].isin(members["member_id"])]
    _aware_parquet({"members": members, "orders": orders}, tmp_path)
    expected = load_data(tmp_path, timezone="Europe/Paris").members["joined_at"].tolist()
    spark.conf.set("spark.sql.session.timeZone", "Europe/Paris")
    try:
        members = load_tables_spark(spark, tmp_path)["members"].orderBy("member_id").toPandas()
    finally:
        spark.conf.set("spark.sql.session.timeZone", TIMEZONE)
    got = dict(zip(members["member_id"], members["joined_at"], strict=True))
    assert [got[m] for m in load_data(tmp_path, timezone="Europe/Paris").members["member_id"]] == expected


def test_unreadable_time_text_names_table_column_and_value(world, spark, tmp_path):
    from features.spark_engine import load_tables_spark

    members = world["members"].head(6).copy()
    members["joined_at"] = ["2024-01-01 10:00:00", "yesterday", "2024-01-02T10:00:00+08:00", "2024-13-40",
                            "2024-01-03", "2024-01-04T10:00+08"]  # a bare date and a short offset are fine
    write_tables({"members": members, "orders": world["orders"].head(3)}, tmp_path, fmt="csv")
    with pytest.raises(ContractError) as caught:
        load_tables_spark(spark, tmp_path)
    message = str(caught.value)
    assert "members.joined_at: must be an ISO 8601 timestamp — 2 row(s)" in message
    assert "'yesterday'" in message and "'2024-13-40'" in message


def test_assert_same_features_catches_drift(world):
    """The comparison itself fails on a changed value, a new null and a missing column."""
    brand = load_data_from(world)
    duck = build_features(brand, CUTOFFS[-1])
    changed = duck.copy()
    changed.loc[3, "spend_90d"] = changed.loc[3, "spend_90d"] + 1e-6 * max(1.0, abs(changed.loc[3, "spend_90d"]))
    with pytest.raises(AssertionError, match="spend_90d"):
        assert_same_features(duck, changed)
    nulled = duck.copy()
    nulled.loc[0, "orders_total"] = np.nan
    with pytest.raises(AssertionError, match="orders_total"):
        assert_same_features(duck, nulled)
    with pytest.raises(AssertionError, match="columns differ"):
        assert_same_features(duck, duck.drop(columns=["tenure_days"]))
    assert_same_features(duck, duck.copy())


def load_data_from(tables):
    from features.contract import from_frames

    return from_frames(tables, timezone=TIMEZONE)


def test_median_rewrite_is_spark_percentile():
    """The one SPARK_TRANSFORMS rewrite: DuckDB MEDIAN(x) → PERCENTILE(x, 0.5) (interpolated, as DuckDB)."""
    from features.spark_engine import spark_feature_sql

    text = spark_feature_sql(CUTOFFS[-1])
    assert "MEDIAN(" not in text.upper()
    assert "PERCENTILE(interactions, 0.5)" in text
    assert "TIMESTAMP_NTZ" in text  # cutoff literals are naive business time, like the loaded columns


TEXT_FORMS = [
    "2024-01-04 10:00:00", "2024-01-04T10:00", "2024-01-04", " 2024-01-04 10:00:00.5 ", "2024-01-04T10:00+08",
    "2024-01-04T10:00:00Z", "2024-01-04T02:00:00.250+00:00", "2024-01-03T21:30:00-05:00", "2024-01-04T02:00:00z",
    "2024-01-04T10:00+08:00", "2024-01-04T10:00:00+0800", None,
]


def test_time_text_forms_read_as_the_contract_reads_them(spark):
    """Every ISO form the contract loader accepts lands on the same business wall time in Spark."""
    from pyspark.sql import functions as F

    from features.contract import _to_local_naive
    from features.spark_engine import _timestamp

    expected, bad = _to_local_naive(pd.Series(TEXT_FORMS, dtype="object"), TIMEZONE)
    assert not bad.any()
    frame = spark.createDataFrame([(i, v) for i, v in enumerate(TEXT_FORMS)], "i int, x string")
    got = frame.select("i", _timestamp(F.col("x"), "string", TIMEZONE).alias("t")).orderBy("i").toPandas()["t"]
    assert [None if pd.isna(v) else pd.Timestamp(v) for v in got] == [
        None if pd.isna(v) else pd.Timestamp(v) for v in expected
    ]
