"""Point-in-time feature pipeline: one row per `(member_id, as_of)`, computed in DuckDB SQL.

For each cutoff `as_of` the validated tables are filtered to rows whose own timestamp is
strictly before `as_of`, and every feature of `features.registry` is computed by one SQL
query (`feature_sql`) GENERATED from the registry: one CTE per source (orders, events,
posts, ...) holding exactly the aggregate columns its registry entries declare, all
left-joined onto the members who joined before `as_of`. Post interactions are used only
when `posted_at + 7 days < as_of`; a referral's join / first order only when that
timestamp is before `as_of`; a refund only from `refunded_at` (see `refund_rule`).
Entries marked `python` (the BG/NBD features) are computed by `features.clv` from
columns of the same query.

Portability: the SQL uses only CASE WHEN, COUNT(DISTINCT), SUM/AVG/MIN/MAX/MEDIAN,
STDDEV_SAMP, LN, ROW_NUMBER/COUNT OVER, CAST, EXTRACT and DATE_DIFF('microsecond', ...).
Window bounds are computed in Python and inlined as TIMESTAMP literals, so no interval
arithmetic is needed. `sqlglot.transpile(feature_sql(t), read="duckdb", write="spark")`
yields Spark SQL.

Determinism: amounts are summed as DECIMAL(38, 6) (exact, so the result does not depend
on DuckDB's parallel summation order) and only converted to DOUBLE at the end.

Out of core: DuckDB spills large aggregations and sorts to disk when `EngineConfig`
sets `memory_limit` (e.g. "2GB") and `temp_directory`; the input tables themselves
are the pandas frames already in memory (registered zero-copy).

Subsets: `build_features(..., rows=...)` computes features only for given
`(member_id, as_of)` pairs. The SQL is unchanged; it reads views of the tables that keep
only those members' rows (a semi-join), except `referrals`, which a member's second-hop
reach reads for other members too. The BG/NBD parameters are fitted on the whole
population's RFM summary at the cutoff (a cheap orders-only query), so a subset equals
the same rows of the full build exactly.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import string
import time
from collections import ChainMap
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from features.clv import fit_bgnbd, rfm_summary, score_bgnbd
from features.contract import BrandData
from features.io import atomic_path
from features.labels import as_cutoff
from features.registry import (
    ALL_EVENT_TYPES,
    BGNBD_HORIZON_DAYS,
    CATEGORY_LEVELS,
    FEATURE_SET_VERSION,
    FEATURES,
    GROUPS,
    SOURCES,
    coerce_features,
    group_tables,
    source_columns,
)
from features.store import StoredBrandData

logger = logging.getLogger(__name__)

# Columns each table contributes to the SQL (only these are registered with DuckDB).
SQL_COLUMNS: dict[str, tuple[str, ...]] = {
    "members": ("member_id", "joined_at", "birth_year", "gender", "city_tier", "channel"),
    "orders": ("member_id", "ordered_at", "amount", "category", "refunded", "refunded_at"),
    "events": ("member_id", "event_at", "event_type", "campaign_id"),
    "posts": ("post_id", "member_id", "posted_at", "platform", "likes_7d", "comments_7d", "saves_7d", "campaign_id"),
    "referrals": ("referrer_id", "referred_at", "referee_id", "referee_joined_at", "referee_first_order_at"),
    "program": ("member_id", "event_at", "status"),
    "social": ("member_id", "platform", "followers", "observed_at"),
}

# Tables whose rows each belong to one member (`member_id`): a subset build reads only its
# members' rows of these. `referrals` is read whole: the second-hop reach of a member goes
# through the referrals of the members it referred.
MEMBER_TABLES = ("members", "orders", "events", "posts", "program", "social")

# How an order flagged `refunded` without a `refunded_at` counts (README "Refunds point in
# time" has the measurement behind the default): "count" keeps every order (the refund
# time is unknown, so counting it is what ranking time sees for a recent order too);
# "drop" removes it at every cutoff (the v1.0 rule, which leaks later refunds backwards).
RefundsWithoutTime = Literal["count", "drop"]
REFUNDS_WITHOUT_TIME: RefundsWithoutTime = "count"

# Members per feature query (`EngineConfig.chunk_members`). At 1M members (905k at the cutoff)
# one query ran out of memory under a 2 GB memory_limit (DuckDB 2.0; it had passed at 1 GB and
# 3 GB: which operator cannot spill varies), two chunks of 500k built it in 63 s (the query
# alone took 43 s in one piece when it fitted); at 3M one query failed under 2 and 6 GB.
CHUNK_MEMBERS = 500_000

# Python-computed registry entries (`Feature.python`): how the model is fitted on the inputs of
# every member at a cutoff, and how a fitted model scores any rows' inputs.
PYTHON_FEATURES = {
    "bgnbd": (
        lambda population, as_of: fit_bgnbd(rfm_summary(population, as_of)),
        lambda model, inputs, as_of: score_bgnbd(model, inputs, as_of, BGNBD_HORIZON_DAYS),
    )
}


class EngineConfig(BaseModel):
    """DuckDB settings for the feature pipeline (`[engine]` in the config file).

    `threads=None` uses min(2, CPU count); `memory_limit` (e.g. "2GB") with a
    `temp_directory` lets DuckDB spill aggregations to disk instead of failing.
    `refunds_without_time`: how a `refunded` order without `refunded_at` counts.
    `chunk_members`: a cutoff with more members than this is computed in member chunks of
    this size, one query each (the same rows and values): DuckDB's working set then follows
    the chunk, not the brand (see `CHUNK_MEMBERS`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int | None = Field(None, ge=1)
    memory_limit: str | None = None
    temp_directory: str | None = None
    refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME
    chunk_members: int = Field(CHUNK_MEMBERS, ge=1)


def timestamp_literal(ts: pd.Timestamp) -> str:
    """`ts` as a DuckDB/Spark TIMESTAMP literal (microseconds)."""
    return f"TIMESTAMP '{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def refund_rule(refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME) -> str:
    """The SQL condition under which an order still counts at the cutoff `$t`.

    With `refunded_at` an order is refunded from that instant on (refunded_at < as_of);
    without it `refunds_without_time` decides.
    """
    unknown = "NOT COALESCE(refunded, FALSE)" if refunds_without_time == "drop" else "TRUE"
    return f"(CASE WHEN refunded_at IS NOT NULL THEN refunded_at >= $t ELSE {unknown} END)"


class _Placeholders(Mapping[str, str]):
    """Values of the registry's `$` placeholders at one cutoff (`$since_N` for any N)."""

    def __init__(self, cutoff: pd.Timestamp, refunds_without_time: RefundsWithoutTime) -> None:
        self.cutoff = cutoff
        self.fixed = {
            "t": timestamp_literal(cutoff),
            "year": str(cutoff.year),
            "known_event_types": ", ".join(f"'{e}'" for e in ALL_EVENT_TYPES if e != "other"),
            "refund_rule": refund_rule(refunds_without_time),
        }

    def __getitem__(self, key: str) -> str:
        if key in self.fixed:
            return self.fixed[key]
        if key.startswith("since_") and key[6:].isdigit():
            return timestamp_literal(self.cutoff - pd.Timedelta(days=int(key[6:])))
        raise KeyError(f"unknown placeholder ${key} in the feature registry")

    def __iter__(self):  # noqa: ANN204 - Mapping protocol
        return iter(self.fixed)

    def __len__(self) -> int:
        return len(self.fixed)

    def fill(self, template: str, **extra: str) -> str:
        values = ChainMap(extra, self)
        filled = string.Template(template).substitute(values)
        # placeholders inside a placeholder's value (`$t` in the refund rule) need a second pass
        return string.Template(filled).substitute(values) if "$" in filled else filled


def python_input_column(source: str, column: str) -> str:
    """The name under which the SQL hands a `python` feature's input column to Python."""
    return f"_{source}__{column}"


def _source_ctes(fill: _Placeholders) -> tuple[list[str], list[str]]:
    """The WITH clauses (rows CTEs, then one aggregate per source) and the joins onto `m`."""
    ctes, joins = [], []
    for source in SOURCES:
        ctes += [f"{name} AS (\n    {fill.fill(rows)}\n)" for name, rows in source.rows]
        columns = source_columns(source.name)
        if source.kind != "aggregate" or not columns:
            continue
        body = ",\n        ".join(f"{fill.fill(sql)} AS {column}" for column, sql in columns.items())
        ctes.append(
            f"{source.name} AS (\n    SELECT {source.key} AS member_id,\n        {body}\n"
            f"    FROM {source.rows[-1][0]} GROUP BY {source.key}\n)"
        )
        joins.append(f"LEFT JOIN {source.name} ON {source.name}.member_id = m.member_id")
    return ctes, joins


def feature_sql(as_of: pd.Timestamp, refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME) -> str:
    """The SQL (DuckDB dialect, Spark-transpilable) computing every feature at one cutoff.

    It reads the tables `members, orders, events, posts, referrals, program, social`
    (canonical columns) and returns `member_id`, every SQL feature of the registry and the
    inputs of its `python` features, for members with `joined_at < as_of`, by `member_id`.
    """
    cutoff = as_cutoff(as_of)
    if cutoff.tzinfo is not None:
        raise ValueError(f"as_of must be a naive business-time timestamp, got {cutoff}")
    fill = _Placeholders(cutoff, refunds_without_time)
    ctes, joins = _source_ctes(fill)
    select = ["m.member_id AS member_id"]
    python_inputs: dict[str, str] = {}
    for feature in FEATURES:
        if feature.python:
            for column, _ in feature.columns:
                python_inputs[python_input_column(feature.source, column)] = f"{feature.source}.{column}"
        else:
            select.append(f"{fill.fill(feature.value, src=feature.source)} AS {feature.name}")
    select += [f"{expression} AS {name}" for name, expression in python_inputs.items()]
    nl = "\n"
    return (
        f"WITH\n{(','+nl).join(ctes)}\n"
        f"SELECT {(','+nl+'    ').join(select)}\n"
        f"FROM m\n{nl.join(joins)}\nORDER BY m.member_id\n"
    )


def python_inputs_sql(as_of: pd.Timestamp, refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME) -> str:
    """The SQL returning only the inputs of the `python` features for every member at one cutoff.

    The same CTEs and aggregates as `feature_sql`, restricted to the sources and columns the
    `python` features read (for BG/NBD: the orders' RFM summary), by `member_id`.
    """
    cutoff = as_cutoff(as_of)
    fill = _Placeholders(cutoff, refunds_without_time)
    needed: dict[str, dict[str, str]] = {}
    for feature in FEATURES:
        if feature.python:
            needed.setdefault(feature.source, {}).update(dict(feature.columns))
    ctes, joins = [], []
    select = ["m.member_id AS member_id"]
    for source in SOURCES:
        if source.kind == "base":
            ctes += [f"{name} AS (\n    {fill.fill(rows)}\n)" for name, rows in source.rows]
        if source.name not in needed:
            continue
        ctes += [f"{name} AS (\n    {fill.fill(rows)}\n)" for name, rows in source.rows]
        body = ",\n        ".join(f"{fill.fill(sql)} AS {column}" for column, sql in needed[source.name].items())
        ctes.append(
            f"{source.name} AS (\n    SELECT {source.key} AS member_id,\n        {body}\n"
            f"    FROM {source.rows[-1][0]} GROUP BY {source.key}\n)"
        )
        joins.append(f"LEFT JOIN {source.name} ON {source.name}.member_id = m.member_id")
        select += [f"{source.name}.{column} AS {python_input_column(source.name, column)}" for column in needed[source.name]]
    nl = "\n"
    return (
        f"WITH\n{(','+nl).join(ctes)}\n"
        f"SELECT {', '.join(select)}\n"
        f"FROM m\n{nl.join(joins)}\nORDER BY m.member_id\n"
    )


_CTE_HEAD = re.compile(r"^(\w+) AS \(", flags=re.MULTILINE)


def inline_ctes(sql: str) -> str:
    """The feature SQL with every CTE marked `NOT MATERIALIZED` (DuckDB only; Spark gets `feature_sql`).

    DuckDB materializes a CTE that is read twice (e.g. `o` and `e`, read by their own aggregate
    and by `activity`): at 1M members that held the filtered 28M-row events table in memory
    (7.8 GB unconstrained, out of memory under a 2 GB `memory_limit`). Inlined, each reader
    scans the table itself: the same result, 3.1 GB, and ~8% faster.
    """
    return _CTE_HEAD.sub(r"\1 AS NOT MATERIALIZED (", sql)


def absent_groups(data: BrandData) -> list[str]:
    """Feature groups none of whose source tables were supplied (they are all zero/null)."""
    return [group for group in GROUPS if all(t in data.absent for t in group_tables(group))]


def connect(engine: EngineConfig) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with `engine`'s threads, memory limit and spill folder."""
    return configure(duckdb.connect(":memory:"), engine)


def configure(con: duckdb.DuckDBPyConnection, engine: EngineConfig) -> duckdb.DuckDBPyConnection:
    """`con` set to `engine`'s threads, memory limit and spill folder."""
    threads = engine.threads or min(2, os.cpu_count() or 1)
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    if engine.memory_limit:
        con.execute("SET memory_limit = ?", [engine.memory_limit])
    if engine.temp_directory:
        con.execute("SET temp_directory = ?", [engine.temp_directory])
    return con


def _normalise_cutoffs(as_of: Sequence[pd.Timestamp] | pd.Timestamp, timezone: str) -> list[pd.Timestamp]:
    values = [as_of] if isinstance(as_of, pd.Timestamp) else list(as_of)
    if not values:
        raise ValueError("build_features needs at least one as_of cutoff")
    return sorted({as_cutoff(v, timezone) for v in values})


def _python_inputs(raw: pd.DataFrame, kind: str) -> pd.DataFrame:
    entries = [f for f in FEATURES if f.python == kind]
    return pd.DataFrame(
        {column: raw[python_input_column(f.source, column)] for f in entries for column, _ in f.columns}
    )


def _fit_python(population: pd.DataFrame, cutoff: pd.Timestamp) -> dict[str, object]:
    """The python features' models fitted on `population` (every member's inputs at the cutoff)."""
    return {kind: fit(_python_inputs(population, kind), cutoff) for kind, (fit, _) in PYTHON_FEATURES.items()}


def _finish(raw: pd.DataFrame, cutoff: pd.Timestamp, models: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Python-computed features added, then the canonical dtypes (`coerce_features`).

    `models`: the python features' models fitted on every member at the cutoff, when `raw`
    holds only some of them (default: fitted on `raw`).
    """
    raw = raw.copy()
    models = models if models is not None else _fit_python(raw, cutoff)
    for kind, (_, score) in PYTHON_FEATURES.items():
        computed = score(models[kind], _python_inputs(raw, kind), cutoff)
        for feature in (f for f in FEATURES if f.python == kind):
            raw[feature.name] = computed[feature.name]
    features = coerce_features(raw)
    features.insert(0, "as_of", pd.Series(cutoff, index=raw.index, dtype="datetime64[us]"))
    features.insert(0, "member_id", raw["member_id"].astype("str"))
    return features


def _empty_features() -> pd.DataFrame:
    """A feature frame with no rows, in the canonical columns and dtypes."""
    columns = ["member_id"] + [f.name for f in FEATURES if not f.python]
    columns += [python_input_column(f.source, c) for f in FEATURES if f.python for c, _ in f.columns]
    raw = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    raw["member_id"] = raw["member_id"].astype("str")
    for f in FEATURES:
        if f.python:
            for column, _ in f.columns:
                if column.endswith("_at"):
                    raw[python_input_column(f.source, column)] = pd.Series(dtype="datetime64[us]")
    return _finish(raw, pd.Timestamp("2000-01-01"))


def _input_relations(con: duckdb.DuckDBPyConnection, data: BrandData) -> dict[str, str]:
    """Make each input table readable in `con`; returns the relation name per table.

    Tables of a `StoredBrandData` are read where they are (the database is attached read
    only); in-memory frames are registered zero-copy.
    """
    if isinstance(data, StoredBrandData):
        con.execute("ATTACH ? AS brand (READ_ONLY)", [data.path])
        return {table: f'brand.main."{table}"' for table in SQL_COLUMNS}
    relations = {}
    for table, columns in SQL_COLUMNS.items():
        relations[table] = f"_input_{table}"
        con.register(relations[table], data.tables[table].loc[:, list(columns)])
    return relations


def _point_views(con: duckdb.DuckDBPyConnection, relations: Mapping[str, str], subset: bool) -> None:
    """(Re)create the views the feature SQL reads: whole tables, or only the `_subset` members' rows."""
    for table, columns in SQL_COLUMNS.items():
        where = " WHERE member_id IN (SELECT member_id FROM _subset)" if subset and table in MEMBER_TABLES else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT {', '.join(columns)} FROM {relations[table]}{where}")


def _subset_cutoffs(rows: pd.DataFrame, as_of: object, timezone: str) -> dict[pd.Timestamp, pd.DataFrame]:
    """The requested member ids per cutoff, from `rows` (`member_id, as_of`)."""
    missing = {"member_id", "as_of"} - set(rows.columns)
    if missing:
        raise ValueError(f"rows must have columns member_id, as_of; missing {sorted(missing)}")
    wanted = None if as_of is None else set(_normalise_cutoffs(as_of, timezone))
    out: dict[pd.Timestamp, pd.DataFrame] = {}
    for value, group in rows.groupby("as_of", sort=True):
        cutoff = as_cutoff(value, timezone)
        if wanted is not None and cutoff not in wanted:
            raise ValueError(f"rows hold cutoff {cutoff} that is not in as_of {sorted(wanted)}")
        ids = pd.DataFrame({"member_id": group["member_id"].astype("str").drop_duplicates()})
        out[cutoff] = pd.concat([out[cutoff], ids]).drop_duplicates() if cutoff in out else ids
    return out


def compact_floats(features: pd.DataFrame) -> pd.DataFrame:
    """Float columns as float32 (half the memory; LightGBM bins them the same way)."""
    floats = [c for c in features.columns if pd.api.types.is_float_dtype(features[c].dtype)]
    return features.astype(dict.fromkeys(floats, "float32"))


STREAM_BATCH_ROWS = 100_000  # rows per Arrow batch read from DuckDB's feature query


def _is_string_view(kind: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return bool(check and check(kind))


def _owned_strings(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with its text columns copied out of DuckDB's result buffers.

    pandas 3 keeps text as zero-copy Arrow, and an Arrow column imported from DuckDB holds the
    whole batch's memory: the member ids alone kept every feature column of the batch alive,
    1.8 GB per complete cutoff at 1M members (measured RSS; 0.5 GB of it was the frame).
    """
    positions = None
    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or _is_string_view(column.type):
            positions = positions if positions is not None else pa.array(np.arange(batch.num_rows))
            column = pc.take(column, positions)  # new buffers
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


class _FinishedBatches:
    """The feature query's Arrow streams (one per member chunk), each batch finished (`_finish`)
    with the cutoff's python models. `readers` is lazy: a chunk's query starts when the previous
    chunk's stream is exhausted (it replaces the views the previous query read)."""

    def __init__(self, readers: Iterator[object], cutoff: pd.Timestamp, models: Mapping[str, object]) -> None:
        self._readers = readers
        self._first = next(readers)  # every stream has at least one query (for the schema)
        self._cutoff, self._models = cutoff, models

    def __iter__(self) -> Iterator[pd.DataFrame]:
        for reader in itertools.chain([self._first], self._readers):
            for batch in reader:
                yield _finish(_owned_strings(batch).to_pandas(), self._cutoff, self._models)

    def empty(self) -> pd.DataFrame:
        """The finished frame with no rows (for a cutoff nobody had joined before)."""
        return _finish(self._first.schema.empty_table().to_pandas(), self._cutoff, self._models)


def member_chunks(member_ids: Sequence[str] | pd.Series, size: int) -> list[pd.DataFrame]:
    """`member_ids` sorted (code point order, DuckDB's string order) in frames of at most `size` ids."""
    ids = np.sort(np.asarray(pd.Series(member_ids, dtype="str").drop_duplicates(), dtype=object))
    return [pd.DataFrame({"member_id": ids[start : start + size]}) for start in range(0, len(ids), size)]


def _cutoff_stream(
    con: duckdb.DuckDBPyConnection,
    relations: Mapping[str, str],
    cutoff: pd.Timestamp,
    engine: EngineConfig,
    members: pd.DataFrame | None,
    batch_rows: int,
) -> tuple[int, _FinishedBatches]:
    """(members at the cutoff, the finished feature batches of `members` or of everyone).

    The python features' models are fitted on every member at the cutoff first, then the SQL
    result is read as an Arrow stream: DuckDB never holds the whole result (under its
    memory_limit a 1M-member cutoff does not fit), and each batch is finished on its own.
    More than `engine.chunk_members` members are computed chunk by chunk (sorted ids, each
    chunk a subset build), so the batches still come in member_id order.
    """
    _point_views(con, relations, subset=False)
    population = con.execute(inline_ctes(python_inputs_sql(cutoff, engine.refunds_without_time))).df()
    models = _fit_python(population, cutoff)
    wanted = population["member_id"] if members is None else members["member_id"]
    chunks: list[pd.DataFrame | None]
    if len(wanted) > engine.chunk_members:
        chunks = list(member_chunks(wanted, engine.chunk_members))
        logger.info("features at %s: %d members in %d chunks", cutoff, len(wanted), len(chunks))
    else:
        chunks = [members]
    sql = inline_ctes(feature_sql(cutoff, engine.refunds_without_time))

    def readers() -> Iterator[object]:
        for chunk in chunks:
            if chunk is not None:
                con.register("_subset", chunk)
                _point_views(con, relations, subset=True)
            yield con.sql(sql).to_arrow_reader(batch_rows)

    return len(population), _FinishedBatches(readers(), cutoff, models)


def build_features(
    data: BrandData,
    as_of: Sequence[pd.Timestamp] | pd.Timestamp | None,
    engine: EngineConfig | None = None,
    *,
    rows: pd.DataFrame | None = None,
    float32: bool = False,
) -> pd.DataFrame:
    """Features for every member with `joined_at < as_of`, for each cutoff in `as_of`.

    Returns columns `member_id, as_of` then `feature_names()`, sorted by `as_of, member_id`.
    Cutoffs are `pd.Timestamp`s in naive business time (aware ones are converted with
    `data.timezone`; text is parsed at the edge, not here); duplicates are built once.

    `rows` (`member_id, as_of`): build only these pairs (its cutoffs; `as_of` may then be
    None, else it must hold them). The result equals the same rows of the full build; a
    pair whose member had not joined before its cutoff has no row, as in the full build.
    `float32`: float columns as float32, cast batch by batch (training's memory: the float64
    frame of a whole cutoff never exists).
    """
    engine = engine or EngineConfig()
    if rows is None:
        if as_of is None:
            raise ValueError("build_features needs as_of cutoffs or rows")
        subsets: dict[pd.Timestamp, pd.DataFrame | None] = dict.fromkeys(_normalise_cutoffs(as_of, data.timezone))
    else:
        subsets = dict(_subset_cutoffs(rows, as_of, data.timezone))
        if not subsets:
            return _empty_features()
    con = connect(engine)
    try:
        relations = _input_relations(con, data)
        parts = []
        for cutoff, members in subsets.items():
            started = time.perf_counter()
            _, stream = _cutoff_stream(con, relations, cutoff, engine, members, STREAM_BATCH_ROWS)
            batches = [compact_floats(batch) if float32 else batch for batch in stream] or [stream.empty()]
            part = batches[0] if len(batches) == 1 else pd.concat(batches, ignore_index=True)
            del batches
            parts.append(part)
            logger.info("features at %s: %d members in %.2fs", cutoff, len(part), time.perf_counter() - started)
    finally:
        con.close()
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    result = pd.concat(parts, ignore_index=True).sort_values(["as_of", "member_id"], kind="stable", ignore_index=True)
    categorical = [name for name in CATEGORY_LEVELS if name in result.columns]
    # concat keeps categories only when identical: restore the fixed levels
    return coerce_features(result, categorical, keep_other_columns=True)


def write_features(
    data: BrandData,
    as_of: Sequence[pd.Timestamp] | pd.Timestamp,
    out: str | os.PathLike[str],
    engine: EngineConfig | None = None,
    *,
    batch_rows: int = 50_000,
    data_fingerprint: Mapping[str, object] | None = None,
) -> dict[str, int]:
    """Build the features of every cutoff and stream them to the Parquet file `out` (atomically).

    The same rows and values as `build_features` (sorted by `as_of, member_id`), but never
    the whole result in memory: DuckDB's result is read `batch_rows` at a time (an Arrow stream), the
    python features are scored per batch with models fitted once per cutoff on every
    member. Returns `{"rows": n, "members": distinct members, "cutoffs": k}`.

    The file's schema metadata records what the rows depend on (`feature_file_provenance`),
    so `read_feature_file` can refuse a file built from other data, cutoffs or feature semantics.
    """
    import pyarrow.parquet as pq

    engine = engine or EngineConfig()
    cutoffs = _normalise_cutoffs(as_of, data.timezone)
    provenance = {
        FEATURE_FILE_KEY: json.dumps(
            feature_file_provenance(data.timezone, engine.refunds_without_time, cutoffs, data_fingerprint),
            sort_keys=True, default=str,
        ).encode()
    }
    rows, members = 0, 0
    con = connect(engine)
    try:
        relations = _input_relations(con, data)
        with atomic_path(out) as tmp:
            writer: pq.ParquetWriter | None = None
            try:
                for cutoff in cutoffs:
                    started = time.perf_counter()
                    population, stream = _cutoff_stream(con, relations, cutoff, engine, None, batch_rows)
                    members = max(members, population)  # the latest cutoff's members include every earlier one's
                    for finished in stream:
                        table = pa.Table.from_pandas(finished, preserve_index=False)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema.with_metadata(table.schema.metadata | provenance))
                        writer.write_table(table.cast(writer.schema))
                        rows += table.num_rows
                    logger.info("features at %s written in %.2fs", cutoff, time.perf_counter() - started)
                if writer is None:  # no cutoff had members: an empty file with the columns
                    empty = pa.Table.from_pandas(_empty_features(), preserve_index=False)
                    pq.write_table(empty.replace_schema_metadata(empty.schema.metadata | provenance), tmp)
            finally:
                if writer is not None:
                    writer.close()
    finally:
        con.close()
    return {"rows": rows, "members": members, "cutoffs": len(cutoffs)}


FEATURE_FILE_KEY = b"kocrank"


class FeatureFileMismatch(ValueError):
    """A feature file cannot stand in for building the features now (other data, cutoff or semantics)."""


def feature_file_provenance(
    timezone: str,
    refunds_without_time: str,
    cutoffs: Sequence[pd.Timestamp],
    data_fingerprint: Mapping[str, object] | None,
) -> dict[str, object]:
    """What a feature file's rows depend on, as recorded in its Parquet metadata."""
    return {
        "feature_set_version": FEATURE_SET_VERSION,
        "timezone": timezone,
        "refunds_without_time": refunds_without_time,
        "cutoffs": [c.isoformat() for c in cutoffs],
        "data_fingerprint": data_fingerprint,
    }


def read_feature_file(
    path: str | os.PathLike[str],
    as_of: pd.Timestamp,
    *,
    timezone: str,
    refunds_without_time: str,
    data_fingerprint: Mapping[str, object],
) -> pd.DataFrame:
    """The rows of the `write_features` file `path` at cutoff `as_of`: equal to `build_features(data, [as_of])`.

    Refused with FeatureFileMismatch, naming what differs, unless the file records the same feature
    set version, time zone, refund rule and data fingerprint and holds the cutoff.
    """
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as err:
        raise FeatureFileMismatch(f"cannot read the feature file {path}: {err}") from err
    if FEATURE_FILE_KEY not in metadata:
        raise FeatureFileMismatch(
            f"{path} records no provenance (feature set, cutoffs, data): write it with `koc features --out <file>.parquet`"
        )
    recorded = json.loads(metadata[FEATURE_FILE_KEY])
    if recorded.get("data_fingerprint") is None:
        raise FeatureFileMismatch(
            f"{path} records no data fingerprint, so it cannot be matched to this data: write it with `koc features`"
        )
    expected = feature_file_provenance(timezone, refunds_without_time, [as_of], data_fingerprint)
    normal = json.loads(json.dumps(expected, sort_keys=True, default=str))
    for key in ("feature_set_version", "timezone", "refunds_without_time", "data_fingerprint"):
        if recorded.get(key) != normal[key]:
            what = "the data changed since the file was built" if key == "data_fingerprint" else f"{recorded.get(key)!r} != {normal[key]!r}"
            raise FeatureFileMismatch(f"{path} was built with another {key.replace('_', ' ')} ({what}): rebuild it with `koc features`")
    if normal["cutoffs"][0] not in recorded["cutoffs"]:
        raise FeatureFileMismatch(f"{path} holds cutoffs {recorded['cutoffs']}, not {as_of.isoformat()}")
    table = pq.read_table(path, filters=[("as_of", "==", pa.scalar(as_of.to_datetime64(), pa.timestamp("us")))])
    return table.to_pandas().reset_index(drop=True)
