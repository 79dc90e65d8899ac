"""The feature pipeline on Apache Spark: the SAME registry-generated SQL, run by pyspark.

`features.build.feature_sql` is the one feature definition. Here it is transpiled with
sqlglot (read="duckdb", write="spark") and run over the contract files of a data folder
read by Spark, so a brand too large for one machine (18M members) can be scored on a
cluster; `tests/data/test_spark_parity.py` checks every feature against DuckDB.

What makes the two engines agree:
- Timestamps are loaded as Spark `TIMESTAMP_NTZ` in naive business time, exactly as the
  DuckDB loader does (`features.contract._to_local_naive`): tz-aware instants (Parquet
  UTC-adjusted timestamps, ISO text with an offset) are converted to the business time
  zone's wall time; naive values (Parquet local timestamps, text without offset) are taken
  as business time unchanged. The session time zone (`spark.sql.session.timeZone`) is the
  business time zone, so every instant → wall-time conversion happens there.
- Ids become text (integral floats without ".0"), nullable ints BIGINT, amounts DOUBLE,
  bools with the contract's defaults; exact duplicate source rows are dropped; optional
  tables that are absent become empty tables with the canonical columns.
- Decimals (amount sums) are cast to DOUBLE at the end, then the Python-computed features
  (BG/NBD) and the canonical dtypes come from `features.build._finish`, the code the
  DuckDB path runs.
- `SPARK_TRANSFORMS`: documented sqlglot rewrites where the transpiled SQL would differ.

Spark runs on validated input: `koc validate` (the DuckDB contract checks) is the gate. This
loader only canonicalises, and fails loudly on what it cannot read (a missing required
column, a timestamp text it cannot parse); it does not repeat the contract's rules.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import sqlglot
from sqlglot import exp

from features.build import REFUNDS_WITHOUT_TIME, SQL_COLUMNS, RefundsWithoutTime, _finish, feature_sql
from features.contract import (
    DEFAULT_TIMEZONE,
    TABLES,
    Col,
    ContractError,
    TableSpec,
    Violation,
    check_timezone,
    table_files,
)
from features.labels import as_cutoff
from features.registry import CATEGORY_LEVELS, coerce_features

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

DEFAULT_MASTER = "local[2]"
# an offset only counts after a time of day (features.contract._OFFSET, in Java regex)
_OFFSET_REGEX = r"[T ]\d{2}(:?\d{2}){0,2}(\.\d+)?\s*([Zz]|[+-]\d{2}(:?\d{2})?)$"
# date, hour, minutes, seconds, fraction, Z or ±hh, offset minutes ("…T10:00+08", "…T1000+0800", "…T10:00:00.5Z")
_AWARE_PARTS = r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}):?(\d{2})?:?(\d{2})?(\.\d+)?\s*([Zz]|[+-]\d{2}):?(\d{2})?$"
_TRUE = ("true", "1", "t", "yes", "y")
_FALSE = ("false", "0", "f", "no", "n")
_SPARK_TYPES = {"id": "string", "str": "string", "ts": "timestamp_ntz", "date": "timestamp_ntz",
                "int": "bigint", "nullable_int": "bigint", "float": "double", "bool": "boolean"}


class SparkEngineError(RuntimeError):
    """The Spark engine cannot run (pyspark or Java missing)."""


def spark_session(
    master: str = DEFAULT_MASTER,
    timezone: str = DEFAULT_TIMEZONE,
    *,
    shuffle_partitions: int | None = None,
    driver_memory: str | None = None,
    app_name: str = "kocrank-features",
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """A SparkSession whose session time zone is the business time zone.

    `shuffle_partitions` defaults to Spark's own (200) on a cluster and 4 × cores locally;
    `conf` adds any other Spark setting. An existing session is reused (Spark allows one per
    process), but its time zone is always reset to `timezone`.
    """
    check_timezone(timezone)
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:  # pragma: no cover - pyspark is a declared dependency
        raise SparkEngineError("the Spark engine needs pyspark: pip install 'kocrank[spark]'") from err
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", timezone)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.inferTimestampNTZ.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local"):
        # local Python UDF workers (spark_udf scoring) run this interpreter, which has kocrank's
        # dependencies, unless PYSPARK_PYTHON says otherwise (pyspark reads it when the context starts)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.ui.enabled", "false")
        if shuffle_partitions is None:
            cores = master[6:-1] if master.startswith("local[") else "1"
            shuffle_partitions = 4 * (int(cores) if cores.isdigit() else 2)
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(int(shuffle_partitions)))
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # noqa: BLE001 - Java missing or the JVM failed to start
        raise SparkEngineError(
            f"cannot start Spark ({type(err).__name__}: {err}); the Spark engine needs Java 17 (java -version)"
        ) from err
    spark.conf.set("spark.sql.session.timeZone", timezone)
    return spark


# --------------------------------------------------------------------------- SQL


def _median_as_percentile(tree: exp.Expression) -> exp.Expression:
    """DuckDB `MEDIAN(x)` is the interpolated 50th percentile; say so explicitly for Spark.

    sqlglot emits `MEDIAN(x)`, which Spark ≥ 3.4 has with the same meaning; writing
    `PERCENTILE(x, 0.5)` keeps the SQL correct on older Spark releases as well.
    """

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Median):
            return exp.Anonymous(this="PERCENTILE", expressions=[node.this, exp.Literal.number("0.5")])
        return node

    return tree.transform(rewrite)


# DuckDB → Spark rewrites applied after parsing, in order (each tested in the parity test).
SPARK_TRANSFORMS: tuple[Callable[[exp.Expression], exp.Expression], ...] = (_median_as_percentile,)


def spark_feature_sql(as_of: pd.Timestamp, refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME) -> str:
    """`feature_sql` in Spark SQL: sqlglot's DuckDB → Spark transpilation plus `SPARK_TRANSFORMS`."""
    tree = sqlglot.parse_one(feature_sql(as_of, refunds_without_time), read="duckdb")
    for transform in SPARK_TRANSFORMS:
        tree = transform(tree)
    return tree.sql(dialect="spark", pretty=True)


# --------------------------------------------------------------------------- loading


def _read_file(spark: SparkSession, path: Path) -> DataFrame:
    if path.suffix == ".csv":
        frame = (
            spark.read.option("header", True)
            .option("multiLine", True)  # quoted fields may span lines, as in the contract's CSV
            .option("escape", '"')  # RFC 4180 doubled quotes, as pandas writes and reads them
            .option("encoding", "UTF-8")
            .option("inferSchema", False)  # every value as text, coerced by its column's kind
            .csv(str(path))
        )
        # a byte-order mark (Excel's "CSV UTF-8") is not part of the first column name
        return frame.toDF(*[c.lstrip("\ufeff") for c in frame.columns])
    return spark.read.parquet(str(path))


def _aware_text(text: Column, timezone: str) -> Column:
    """ISO text with an offset → business wall time.

    Spark parses an offset only after full seconds ("T10:00+08:00" is null to it), so the
    text is taken apart (date, hour, optional minutes / seconds / fraction, offset), the
    local time rebuilt as `yyyy-MM-dd HH:mm:ss[.f]`, moved to UTC by the offset and
    converted to `timezone`.
    """
    from pyspark.sql import functions as F

    def part(index: int) -> Column:
        return F.regexp_extract(text, _AWARE_PARTS, index)

    def or_zero(value: Column) -> Column:
        return F.when(value == "", F.lit("00")).otherwise(value)

    local = F.concat(part(1), F.lit(" "), part(2), F.lit(":"), or_zero(part(3)), F.lit(":"), or_zero(part(4)), part(5))
    zone = part(6)
    minutes = F.substring(zone, 2, 2).cast("int") * 60 + or_zero(part(7)).cast("int")
    offset = F.when(F.upper(zone) == "Z", F.lit(0)).when(zone.startswith("-"), -minutes).otherwise(minutes)
    utc = F.timestamp_add("MINUTE", -offset, local.try_cast("timestamp_ntz"))
    return F.when(text.rlike(_AWARE_PARTS), F.convert_timezone(F.lit("UTC"), F.lit(timezone), utc))


def _timestamp(column: Column, dtype: str, timezone: str) -> Column:
    """A timestamp column as naive business time (the session time zone is the business one)."""
    from pyspark.sql import functions as F

    if dtype == "timestamp_ntz":
        return column
    if dtype in ("timestamp", "date"):  # an instant (or a date): its wall time in the session time zone
        return column.cast("timestamp_ntz")
    text = F.trim(column.cast("string"))
    text = F.when(text != "", text)
    return F.when(text.rlike(_OFFSET_REGEX), _aware_text(text, timezone)).otherwise(text.try_cast("timestamp_ntz"))


def _identifier(column: Column, dtype: str) -> Column:
    from pyspark.sql import functions as F

    if dtype in ("float", "double"):  # ids exported as floats (1.0) keep their integer text
        whole = (column == F.floor(column)) & (F.abs(column) < 2**53)
        return F.when(whole, column.cast("bigint").cast("string")).otherwise(column.cast("string"))
    if dtype == "binary":
        return F.decode(column, "UTF-8")
    return column.cast("string")


def _integer(column: Column, dtype: str) -> Column:
    from pyspark.sql import functions as F

    if dtype in ("tinyint", "smallint", "int", "bigint"):
        return column.cast("bigint")
    return F.round(column.cast("double")).cast("bigint")


def _boolean(column: Column, dtype: str, default: object) -> Column:
    from pyspark.sql import functions as F

    if dtype == "boolean":
        value = column
    else:
        text = F.lower(F.trim(column.cast("string")))
        value = F.when(text.isin(*_TRUE), F.lit(True)).when(text.isin(*_FALSE), F.lit(False))
    return F.coalesce(value, F.lit(bool(default) if default is not None else False))


def _canonical_column(col: Col, column: Column | None, dtype: str | None, timezone: str) -> Column:
    from pyspark.sql import functions as F

    target = _SPARK_TYPES[col.kind]
    if column is None:  # left out: the default, or nulls
        if col.kind == "bool":
            return F.lit(bool(col.default) if col.default is not None else False)
        return (F.lit(col.default) if col.default is not None else F.lit(None)).cast(target)
    if col.kind in ("id", "str"):
        return _identifier(column, dtype)
    if col.kind in ("ts", "date"):
        return _timestamp(column, dtype, timezone)
    if col.kind in ("int", "nullable_int"):
        return _integer(column, dtype)
    if col.kind == "float":
        return column.cast("double")
    if col.kind == "bool":
        return _boolean(column, dtype, col.default)
    raise AssertionError(col.kind)


def _empty_table(spark: SparkSession, spec: TableSpec) -> DataFrame:
    schema = ", ".join(f"`{c.name}` {_SPARK_TYPES[c.kind]}" for c in spec.columns)
    return spark.createDataFrame([], schema)


def _check_parsed(name: str, table: DataFrame, columns: Sequence[str]) -> None:
    """Raise naming table, column and examples when a timestamp text could not be read."""
    from pyspark.sql import functions as F

    if not columns:
        return
    both = table.select(*[F.col(c).alias(f"__parsed_{c}") for c in columns], *[F.col(f"__raw_{c}") for c in columns])
    bad = {c: (F.col(f"__raw_{c}").isNotNull() & (F.trim(F.col(f"__raw_{c}").cast("string")) != "")
               & F.col(f"__parsed_{c}").isNull()) for c in columns}
    counts = both.agg(*[F.sum(F.when(cond, 1).otherwise(0)).alias(c) for c, cond in bad.items()]).first()
    problems = []
    for column, cond in bad.items():
        if counts[column]:
            examples = [repr(r[0]) for r in both.where(cond).select(f"__raw_{column}").limit(3).collect()]
            problems.append(Violation(name, column, "must be an ISO 8601 timestamp", int(counts[column]), tuple(examples)))
    if problems:
        raise ContractError(problems)


def load_tables_spark(spark: SparkSession, data_dir: str | Path) -> dict[str, DataFrame]:
    """The feature SQL's tables (`SQL_COLUMNS`) read from a data folder into canonical Spark frames.

    Timestamps become business wall time in the session's time zone (`spark_session` sets it
    to the business one). Absent optional tables are empty tables with the canonical columns. Raises
    `ContractError` for a missing required table or column, or an unreadable timestamp.
    """
    timezone = spark.conf.get("spark.sql.session.timeZone")
    files = table_files(data_dir)
    missing = [Violation(n, None, "required table is missing", 0) for n, s in TABLES.items() if s.required and n not in files]
    if missing:
        raise ContractError(missing)
    tables: dict[str, DataFrame] = {}
    for name, wanted in SQL_COLUMNS.items():
        spec = TABLES[name]
        if name not in files:
            tables[name] = _empty_table(spark, spec).select(*wanted)
            continue
        raw = _read_file(spark, files[name]).dropDuplicates()  # exact duplicate source rows, as the contract drops them
        dtypes = dict(raw.dtypes)
        absent = [c.name for c in spec.columns if not (c.optional or c.nullable) and c.name not in dtypes]
        if absent:
            present = ", ".join(raw.columns)
            raise ContractError(
                [Violation(name, c, "required column is missing", 0, (f"columns present: {present}",)) for c in absent]
            )
        from pyspark.sql import functions as F

        columns = []
        parsed_text = []
        for col in spec.columns:
            if col.name not in wanted:
                continue
            source = F.col(f"`{col.name}`") if col.name in dtypes else None
            columns.append(_canonical_column(col, source, dtypes.get(col.name), timezone).alias(col.name))
            if col.kind == "ts" and col.name in dtypes and dtypes[col.name] == "string":
                columns.append(source.alias(f"__raw_{col.name}"))
                parsed_text.append(col.name)
        table = raw.select(*columns)
        _check_parsed(name, table, parsed_text)
        tables[name] = table.select(*wanted)
    return tables


# --------------------------------------------------------------------------- features


def _doubles(frame: DataFrame) -> DataFrame:
    """Decimal columns (exact amount sums) as DOUBLE, the dtype the DuckDB path hands to pandas."""
    from pyspark.sql import functions as F

    return frame.select(
        *[F.col(c).cast("double").alias(c) if t.startswith("decimal") else F.col(c) for c, t in frame.dtypes]
    )


def build_features_spark(
    data_dir: str | Path,
    cutoffs: Sequence[pd.Timestamp] | pd.Timestamp,
    *,
    master: str = DEFAULT_MASTER,
    timezone: str = DEFAULT_TIMEZONE,
    refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME,
    spark: SparkSession | None = None,
    shuffle_partitions: int | None = None,
    driver_memory: str | None = None,
) -> pd.DataFrame:
    """Features for every member with `joined_at < as_of`, per cutoff, computed by Spark.

    Same output as `features.build.build_features` on the same (validated) files: columns
    `member_id, as_of` then `feature_names()`, sorted by `as_of, member_id`. Cutoffs are
    naive business-time `pd.Timestamp`s (aware ones are converted with `timezone`).
    `spark`: an existing session to use (its time zone is set to `timezone`); otherwise one
    is started on `master`. The SQL features are computed on the cluster; each cutoff's
    result (one row per member) is collected to the driver for the BG/NBD fit (`_finish`).
    """
    values = [cutoffs] if isinstance(cutoffs, pd.Timestamp) else list(cutoffs)
    if not values:
        raise ValueError("build_features_spark needs at least one as_of cutoff")
    normalised = sorted({as_cutoff(v, timezone) for v in values})
    if spark is None:
        spark = spark_session(master, timezone, shuffle_partitions=shuffle_partitions, driver_memory=driver_memory)
    else:
        spark.conf.set("spark.sql.session.timeZone", check_timezone(timezone))
    started = time.perf_counter()
    tables = load_tables_spark(spark, data_dir)
    for name, table in tables.items():
        table.createOrReplaceTempView(name)
    parts = []
    for cutoff in normalised:
        began = time.perf_counter()
        raw = _doubles(spark.sql(spark_feature_sql(cutoff, refunds_without_time))).toPandas()
        parts.append(_finish(raw, cutoff))
        logger.info("spark features at %s: %d members in %.2fs", cutoff, len(raw), time.perf_counter() - began)
    logger.info("spark features: %d cutoff(s) in %.2fs", len(parts), time.perf_counter() - started)
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    result = pd.concat(parts, ignore_index=True).sort_values(["as_of", "member_id"], kind="stable", ignore_index=True)
    categorical = [name for name in CATEGORY_LEVELS if name in result.columns]
    return coerce_features(result, categorical, keep_other_columns=True)
