"""Point-in-time feature pipeline: one row per `(member_id, as_of)`, computed in DuckDB SQL.

For each cutoff `as_of` the validated tables are filtered to rows whose own timestamp is
strictly before `as_of`, and every feature of `features.registry` is computed by one SQL
query (`feature_sql`) GENERATED from the registry: one CTE per source (orders, events,
posts, ...) holding exactly the aggregate columns its registry entries declare, all
left-joined onto the members who joined before `as_of`. DuckDB runs that query in stages
(`staged_feature_sql`: each source's aggregate into a table, then the join), Spark as one.
Post interactions are used only when `posted_at + 7 days < as_of`; a referral's join / first
order only when that timestamp is before `as_of`; a refund only from `refunded_at` (see
`refund_rule`).
Entries marked `python` (the BG/NBD features) are computed by `features.clv` from
columns of the same query.

Portability: the SQL uses only CASE WHEN, COUNT(DISTINCT), SUM/AVG/MIN/MAX/MEDIAN,
STDDEV_SAMP, LN, ROW_NUMBER OVER, CAST, EXTRACT and DATE_DIFF('microsecond', ...).
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

import contextlib
import itertools
import json
import logging
import os
import re
import string
import tempfile
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
    Source,
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

# Members per chunk of the final join (`EngineConfig.chunk_members`; `_cutoff_stream`). Each
# source is aggregated once for every member, then the aggregates are joined onto the members
# chunk by chunk (ranges of sorted ids). At 1M members (905k at the cutoff) the whole join did
# not fit a 2 GB memory_limit (DuckDB 2.0 builds every join's hash table at once); in chunks of
# 250k, with the aggregates in a file in temp_directory, `koc features` ran in 49 s with a 2 GB
# memory_limit and 1.87 GB peak RSS.
CHUNK_MEMBERS = 250_000

# Members per round of aggregates (`EngineConfig.stage_members`): a cutoff with more members
# computes its aggregates per range of this many sorted ids (each round reads the tables once
# more, only that range's rows, apart from referrals). At 3M members (2.7M at the cutoff) one
# round ran out of memory under a 2 GB memory_limit after 4 minutes; at 1M one round fits.
STAGE_MEMBERS = 1_000_000

# (member, cutoff) pairs per query of the stored labels and outcomes (`EngineConfig.label_rows`;
# `features.targets.labels_and_outcomes`). Cutoffs are packed into queries of at most this many
# pairs (one cutoff at least). At 1M members `koc train`'s 14 cutoffs (8.6M pairs) in one query
# ran out of a 2 GB memory_limit; in queries of <= 2.5M pairs it took 11-12 s, 1.7 GB peak RSS.
LABEL_ROWS = 2_500_000

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
    `chunk_members`: a cutoff with more members than this joins its aggregates onto member
    chunks of this size, one query each (the same rows and values): the join's working set then
    follows the chunk, not the brand (see `CHUNK_MEMBERS`).
    `stage_members`: a cutoff with more members than this computes its aggregates in rounds
    of this many members (see `STAGE_MEMBERS`).
    `label_rows`: (member, cutoff) pairs per query of a store's labels and outcomes; more
    cutoffs than fit run as several queries (see `LABEL_ROWS`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int | None = Field(None, ge=1)
    memory_limit: str | None = None
    temp_directory: str | None = None
    refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME
    chunk_members: int = Field(CHUNK_MEMBERS, ge=1)
    stage_members: int = Field(STAGE_MEMBERS, ge=1)
    label_rows: int = Field(LABEL_ROWS, ge=1)


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


_DISTINCT = re.compile(r"^COUNT\(DISTINCT (?:CASE WHEN (?P<where>.+?) THEN (?P<value>.+) END|(?P<plain>.+))\)$", re.DOTALL)


def split_distinct(sql: str) -> tuple[str, str | None] | None:
    """`(value, condition)` of an aggregate `COUNT(DISTINCT [CASE WHEN condition THEN] value [END])`, else None."""
    match = _DISTINCT.match(sql.strip())
    if match is None:
        return None
    if match["plain"] is not None:
        return match["plain"], None
    return match["value"], match["where"]


def _aggregate_ctes(source: Source, columns: Mapping[str, str], fill: _Placeholders) -> list[str]:
    """The CTEs computing `columns` (name -> aggregate SQL) of `source`, one row per key, as CTE `source.name`.

    A conditional distinct count, `COUNT(DISTINCT CASE WHEN condition THEN value END)`, is
    computed apart: the source rows that meet the condition, deduplicated on (key, value) and
    counted per key, then joined on (0 for a member with rows but none that count, as
    `COUNT(DISTINCT)` gives). The same numbers, faster: at 1M members (16.5M events before the
    cutoff) the events aggregate with its 3 conditional distinct counts inline took 14.4 s, and
    8.7 s this way (5.3 s without them). An unconditional one stays inline, where it was faster
    (posts: 3.5 s inline, 4.0 s apart).
    """
    rows, key = source.rows[-1][0], source.key
    distinct = {c: parts for c, sql in columns.items() if (parts := split_distinct(sql)) and parts[1] is not None}
    plain = {c: fill.fill(sql) for c, sql in columns.items() if c not in distinct}
    head = f"SELECT {key} AS member_id" + "".join(f",\n        {sql} AS {c}" for c, sql in plain.items())
    if not distinct:
        return [f"{source.name} AS (\n    {head}\n    FROM {rows} GROUP BY {key}\n)"]
    ctes = [f"{source.name}__rows AS (\n    {head}\n    FROM {rows} GROUP BY {key}\n)"]
    select, joins = [f"{source.name}__rows.*"], []
    for column, (value, condition) in distinct.items():
        name = f"{source.name}__{column}"
        where = f"({fill.fill(value)}) IS NOT NULL" + (f" AND ({fill.fill(condition)})" if condition else "")
        ctes.append(
            f"{name} AS (\n    SELECT member_id, COUNT(*) AS {column} FROM (\n"
            f"        SELECT DISTINCT {key} AS member_id, {fill.fill(value)} AS distinct_value FROM {rows} WHERE {where}\n"
            f"    ) GROUP BY member_id\n)"
        )
        select.append(f"COALESCE({name}.{column}, 0) AS {column}")
        joins.append(f"LEFT JOIN {name} ON {name}.member_id = {source.name}__rows.member_id")
    nl = "\n    "
    ctes.append(f"{source.name} AS (\n    SELECT {', '.join(select)}\n    FROM {source.name}__rows{nl}{nl.join(joins)}\n)")
    return ctes


def _source_ctes(fill: _Placeholders) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """(every source's row-level CTEs in order, each aggregated source's CTEs, the joins onto `m`).

    A source's aggregate CTEs read only row-level CTEs (its own or an earlier source's) and
    end with the CTE named after the source, one row per member.
    """
    rows, aggregates, joins = [], {}, []
    for source in SOURCES:
        rows += [f"{name} AS (\n    {fill.fill(sql)}\n)" for name, sql in source.rows]
        columns = source_columns(source.name)
        if source.kind != "aggregate" or not columns:
            continue
        aggregates[source.name] = _aggregate_ctes(source, columns, fill)
        joins.append(f"LEFT JOIN {source.name} ON {source.name}.member_id = m.member_id")
    return rows, aggregates, joins


def _feature_select(fill: _Placeholders) -> list[str]:
    """The final SELECT's columns: member_id, every SQL feature, the inputs of the python features."""
    select = ["m.member_id AS member_id"]
    python_inputs: dict[str, str] = {}
    for feature in FEATURES:
        if feature.python:
            for column, _ in feature.columns:
                python_inputs[python_input_column(feature.source, column)] = f"{feature.source}.{column}"
        else:
            select.append(f"{fill.fill(feature.value, src=feature.source)} AS {feature.name}")
    return select + [f"{expression} AS {name}" for name, expression in python_inputs.items()]


def _fill(as_of: pd.Timestamp, refunds_without_time: RefundsWithoutTime) -> _Placeholders:
    cutoff = as_cutoff(as_of)
    if cutoff.tzinfo is not None:
        raise ValueError(f"as_of must be a naive business-time timestamp, got {cutoff}")
    return _Placeholders(cutoff, refunds_without_time)


def _final_sql(ctes: Sequence[str], select: Sequence[str], joins: Sequence[str]) -> str:
    nl = "\n"
    return (
        f"WITH\n{(','+nl).join(ctes)}\n"
        f"SELECT {(','+nl+'    ').join(select)}\n"
        f"FROM m\n{nl.join(joins)}\nORDER BY m.member_id\n"
    )


def feature_sql(as_of: pd.Timestamp, refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME) -> str:
    """The SQL (DuckDB dialect, Spark-transpilable) computing every feature at one cutoff.

    It reads the tables `members, orders, events, posts, referrals, program, social`
    (canonical columns) and returns `member_id`, every SQL feature of the registry and the
    inputs of its `python` features, for members with `joined_at < as_of`, by `member_id`.
    """
    fill = _fill(as_of, refunds_without_time)
    rows, aggregates, joins = _source_ctes(fill)
    return _final_sql([*rows, *itertools.chain.from_iterable(aggregates.values())], _feature_select(fill), joins)


def staged_feature_sql(
    as_of: pd.Timestamp, refunds_without_time: RefundsWithoutTime = REFUNDS_WITHOUT_TIME
) -> tuple[dict[str, str], str]:
    """`feature_sql` in stages, as DuckDB runs it: ({source: query of its aggregate}, final query).

    Each stage query computes one source's aggregate (one row per member); the final query
    reads tables of those names (the caller stores each stage's result under its source's
    name) and is `feature_sql`'s SELECT. Every CTE is inlined (`inline_ctes`). The same
    values as `feature_sql`: the same CTEs, each aggregate computed on its own. As one query
    at 1M members DuckDB ran every aggregate's hash table at once, which did not fit a 2 GB
    `memory_limit`; in stages the working set is one aggregate's.
    """
    fill = _fill(as_of, refunds_without_time)
    rows, aggregates, joins = _source_ctes(fill)
    stages = {
        source: inline_ctes("WITH\n" + ",\n".join([*rows, *ctes]) + f"\nSELECT * FROM {source}")
        for source, ctes in aggregates.items()
    }
    base = [cte for cte in rows if cte.startswith("m AS (")]
    return stages, inline_ctes(_final_sql(base, _feature_select(fill), joins))


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
        ctes += _aggregate_ctes(source, needed[source.name], fill)
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


def _point_views(
    con: duckdb.DuckDBPyConnection,
    relations: Mapping[str, str],
    subset: bool,
    member_range: tuple[str | None, str | None] = (None, None),
    range_tables: Sequence[str] = ("members",),
) -> None:
    """(Re)create the views the feature SQL reads: whole tables, or only the `_subset` members' rows.

    `member_range` (`lo <= member_id < hi`, None for open) limits `range_tables` further: the
    member tables for a round of aggregates, `members` for a chunk of the final join.
    """
    for table, columns in SQL_COLUMNS.items():
        conditions = ["member_id IN (SELECT member_id FROM _subset)"] if subset and table in MEMBER_TABLES else []
        if table in range_tables:
            conditions += _range_conditions(member_range)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT {', '.join(columns)} FROM {relations[table]}{where}")


def _range_conditions(member_range: tuple[str | None, str | None]) -> list[str]:
    lo, hi = member_range
    quote = lambda value: "'" + value.replace("'", "''") + "'"  # noqa: E731 - a literal, not parameters: views keep it
    return ([f"member_id >= {quote(lo)}"] if lo is not None else []) + ([f"member_id < {quote(hi)}"] if hi is not None else [])


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


STAGE_PREFIX = "kocrank-features-"
STALE_LOCK_SECONDS = 10.0  # a lock file younger than this may not yet be locked by its owner: left alone


class _StageStore:
    """Where `_cutoff_stream` keeps the aggregates of a cutoff joined in chunks: DuckDB temp
    tables, or, when the engine has a `temp_directory`, a database file there (`schema`
    attached). A file's blocks can leave memory under the memory_limit; temp tables' could not:
    at 3M members (2.7M at the cutoff) the aggregates did not fit a 2 GB limit as temp tables.

    A file store holds an exclusive `flock` on its `.lock` file for as long as it lives. The
    kernel releases it when the process dies, however it dies, so the next run's
    `sweep_stage_files` can tell a killed run's file (about 0.8 GB at 1M members) from a live one."""

    def __init__(self, schema: str, path: str | None = None, lock: int | None = None) -> None:
        self.schema, self.path, self._lock = schema, path, lock
        self.table_kind = "TABLE" if path else "TEMP TABLE"

    def close(self, con: duckdb.DuckDBPyConnection, tables: Sequence[str]) -> None:
        """Drop the tables (detach the file and delete it), also after the connection was closed."""
        try:
            if self.path is None:
                for table in tables:
                    con.execute(f"DROP TABLE IF EXISTS {self.schema}.{table}")
            else:
                con.execute(f"DETACH {self.schema}")
        except duckdb.Error:  # closed by a failed build before its stream was: nothing left to drop
            pass
        finally:
            if self.path:
                _remove_stage_files(self.path)
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None


def _remove_stage_files(path: str) -> None:
    """Delete a file store's database, its WAL and, last, its lock file."""
    for suffix in ("", ".wal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.removesuffix(".duckdb") + ".lock")


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock on `fd` without waiting; False if another open file holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep_stage_files(directory: str, *, min_age_seconds: float = STALE_LOCK_SECONDS) -> list[str]:
    """Delete the aggregate files in `directory` whose run has died (killed, or its machine crashed).

    A store's lock file is flock-ed by its owner for the store's whole life; a lock nobody holds
    (and older than `min_age_seconds`, so a store being created this instant is left alone) belongs
    to a run that is gone. Returns the database paths removed. Files of live runs are kept.
    """
    removed = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name) if os.path.isdir(directory) else []:
        if not (entry.name.startswith(STAGE_PREFIX) and entry.name.endswith(".lock")):
            continue
        try:
            if time.time() - entry.stat().st_mtime < min_age_seconds:
                continue
            fd = os.open(entry.path, os.O_RDONLY)  # flock needs no write access
        except (FileNotFoundError, PermissionError):  # finished meanwhile, or another user's run: theirs
            continue
        try:
            if not _try_lock(fd):
                continue  # a live run holds it
            database = entry.path.removesuffix(".lock") + ".duckdb"
            _remove_stage_files(database)
            removed.append(database)
        finally:
            os.close(fd)
    if removed:
        logger.warning("removed %d feature aggregate file(s) left by killed runs in %s", len(removed), directory)
    return removed


def _stage_store(con: duckdb.DuckDBPyConnection, engine: EngineConfig) -> _StageStore:
    """A file store when the engine has a `temp_directory`, temp tables otherwise.

    Files that killed runs left in the folder are removed first (`sweep_stage_files`)."""
    if not engine.temp_directory:
        return _StageStore("temp")
    os.makedirs(engine.temp_directory, exist_ok=True)
    sweep_stage_files(engine.temp_directory)
    lock, lock_path = tempfile.mkstemp(prefix=STAGE_PREFIX, suffix=".lock", dir=engine.temp_directory)
    if not _try_lock(lock):  # a fresh, uniquely named file: nobody else can hold it
        os.close(lock)
        raise RuntimeError(f"could not lock {lock_path}")
    path = lock_path.removesuffix(".lock") + ".duckdb"  # DuckDB creates it; the unique name is the lock's
    try:
        con.execute("ATTACH ? AS koc_stage", [path])
    except BaseException:
        _remove_stage_files(path)
        os.close(lock)
        raise
    return _StageStore("koc_stage", path, lock)


Range = tuple[str | None, str | None]


def _member_ranges(member_ids: Sequence[str] | pd.Series, stage_members: int, chunk_members: int) -> list[tuple[Range, list[Range]]]:
    """Rounds of aggregates over sorted member-id ranges of at most `stage_members` ids, each with
    its join chunks of at most `chunk_members` ids: `[(round range, [chunk ranges])]`, in order,
    open at both ends (a range `(lo, hi)` holds `lo <= member_id < hi`; None is open). Ids sort
    in code point order, DuckDB's string order."""
    if len(member_ids) <= min(stage_members, chunk_members):
        return [((None, None), [(None, None)])]  # one query: no need to sort the ids
    ids = np.sort(np.asarray(pd.Series(member_ids, dtype="str").drop_duplicates(), dtype=object))

    def bounds(starts: list[str], lo: str | None, hi: str | None) -> list[Range]:
        return list(zip([lo, *starts], [*starts, hi], strict=True))

    round_bounds = bounds([str(ids[i]) for i in range(stage_members, len(ids), stage_members)], None, None)
    rounds = []
    for (lo, hi), first in zip(round_bounds, range(0, len(ids), stage_members), strict=True):
        stop = min(first + stage_members, len(ids))
        rounds.append(((lo, hi), bounds([str(ids[i]) for i in range(first + chunk_members, stop, chunk_members)], lo, hi)))
    return rounds


def _cutoff_stream(
    con: duckdb.DuckDBPyConnection,
    relations: Mapping[str, str],
    cutoff: pd.Timestamp,
    engine: EngineConfig,
    members: pd.DataFrame | None,
    batch_rows: int,
) -> tuple[int, _FinishedBatches]:
    """(members at the cutoff, the finished feature batches of `members` or of everyone).

    The python features' models are fitted on every member at the cutoff first. Up to
    `engine.chunk_members` members, `feature_sql` runs as one query. Above, each
    source's aggregate is computed once (`staged_feature_sql`, into a table; only
    `members`' rows when given) and the final query joining them is read as an Arrow stream:
    DuckDB never holds the whole result (under its memory_limit a 1M-member cutoff does not
    fit), and each batch is finished on its own. More than `engine.chunk_members` members are
    joined chunk by chunk (ranges of sorted ids, each chunk's rows of every aggregate), so the
    batches still come in member_id order and the join's hash tables follow the chunk.
    """
    _point_views(con, relations, subset=False)
    population = con.execute(inline_ctes(python_inputs_sql(cutoff, engine.refunds_without_time))).df()
    models = _fit_python(population, cutoff)
    wanted = population["member_id"] if members is None else members["member_id"]
    rounds = _member_ranges(wanted, engine.stage_members, engine.chunk_members)
    chunks = sum(len(joins) for _, joins in rounds)
    if chunks > 1:
        logger.info("features at %s: %d members in %d round(s) of aggregates, %d chunks", cutoff, len(wanted), len(rounds), chunks)
    subset = members is not None
    if subset:
        con.register("_subset", members)
    if chunks == 1:  # one query, as Spark runs it: no tables to write (a handful for /score, or 100k)
        _point_views(con, relations, subset)
        sql = inline_ctes(feature_sql(cutoff, engine.refunds_without_time))
        return len(population), _FinishedBatches(iter([con.sql(sql).to_arrow_reader(batch_rows)]), cutoff, models)
    stages, final = staged_feature_sql(cutoff, engine.refunds_without_time)

    def readers() -> Iterator[object]:
        store = _stage_store(con, engine)
        try:
            for stage_range, join_ranges in rounds:
                started = time.perf_counter()
                _point_views(con, relations, subset, stage_range, MEMBER_TABLES)
                for source, stage in stages.items():
                    con.execute(f"CREATE OR REPLACE {store.table_kind} {store.schema}.{source}__stage AS {stage}")
                logger.debug("features at %s: aggregates in %.1fs", cutoff, time.perf_counter() - started)
                for member_range in join_ranges:
                    _point_views(con, relations, subset, member_range)
                    where = " AND ".join(_range_conditions(member_range)) or "TRUE"
                    for source in stages:
                        con.execute(
                            f"CREATE OR REPLACE TEMP VIEW {source} AS SELECT * FROM {store.schema}.{source}__stage WHERE {where}"
                        )
                    yield con.sql(final).to_arrow_reader(batch_rows)
        finally:  # the last stream is exhausted (or abandoned): free the aggregates
            with contextlib.suppress(duckdb.Error):
                for source in stages:
                    con.execute(f"DROP VIEW IF EXISTS {source}")
            store.close(con, [f"{source}__stage" for source in stages])

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
