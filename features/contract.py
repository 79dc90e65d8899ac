"""Data contract v1: read a brand's data directory and enforce every rule of the contract.

Loading turns each table into canonical columns and dtypes (see docs/architecture.md):
ids are strings, timestamps are naive in the business time zone, bools are real bools.
Every rule violation is collected and raised together as one `ContractError` naming
table, column, rule, how many rows break it and a few example rows. Nothing is dropped
silently: exact duplicate rows are dropped and reported in `BrandData.warnings`.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "Asia/Shanghai"
# No brand's CRM holds real activity before this: an order "dated" 0001-01-01 or 1960 is a
# placeholder or a broken export, and would stretch monthly cutoffs over centuries.
DEFAULT_TIME_FLOOR = pd.Timestamp("2000-01-01")
# A timestamp may lie at most this far after the export time (clock skew between systems).
EXPORT_SLACK = pd.Timedelta(days=1)
# Longest value text shown in an example: a 5 MB id must not flood the terminal.
SHOW_CHARS = 60

EVENT_TYPES = (
    "campaign_join",
    "trial_apply",
    "trial_feedback",
    "group_message",
    "checkin",
    "survey",
    "content_like",
    "content_comment",
    "share",
    "referral_invite",
)
OTHER_EVENT = "other"
PLATFORMS = ("xhs", "douyin", "weibo", "wechat", "other")
PROGRAM_STATUSES = ("invited", "declined", "enrolled", "upgraded", "eliminated", "blacklisted")
GENDERS = ("F", "M", "U")

Kind = Literal["id", "str", "ts", "date", "int", "nullable_int", "float", "bool"]


@dataclass(frozen=True)
class Col:
    """One contract column: its kind, whether it may be null and whether it may be left out."""

    name: str
    kind: Kind
    nullable: bool = False
    optional: bool = False
    default: object = None
    unique: bool = False
    member_ref: bool = False
    ge: float | None = None
    le: float | None = None
    isin: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Col, ...]
    required: bool = False
    time_column: str | None = None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _may_be_left_out(col: Col) -> bool:
    """Optional columns, and nullable ones: a column left out is a column of nulls."""
    return col.optional or col.nullable


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "members",
            (
                Col("member_id", "id", unique=True),
                Col("joined_at", "ts"),
                Col("birth_year", "nullable_int", nullable=True, ge=1900),
                Col("gender", "str", nullable=True, isin=GENDERS),
                Col("city_tier", "nullable_int", nullable=True, ge=1, le=6),
                Col("channel", "str", nullable=True),
                Col("marketing_consent", "bool", nullable=True, optional=True, default=True),
            ),
            required=True,
            time_column="joined_at",
        ),
        TableSpec(
            "orders",
            (
                Col("order_id", "id", unique=True),
                Col("member_id", "id", member_ref=True),
                Col("ordered_at", "ts"),
                Col("amount", "float", ge=0),
                Col("category", "str", nullable=True),
                Col("refunded", "bool", nullable=True, optional=True, default=False),
                Col("refunded_at", "ts", nullable=True, optional=True),  # v1.1: refunds point in time
            ),
            required=True,
            time_column="ordered_at",
        ),
        TableSpec(
            "events",
            (
                Col("member_id", "id", member_ref=True),
                Col("event_at", "ts"),
                Col("event_type", "str"),
                Col("campaign_id", "id", nullable=True, optional=True),
            ),
            time_column="event_at",
        ),
        TableSpec(
            "posts",
            (
                Col("post_id", "id", unique=True),
                Col("member_id", "id", member_ref=True),
                Col("posted_at", "ts"),
                Col("platform", "str", isin=PLATFORMS),
                Col("likes_7d", "nullable_int", nullable=True, ge=0),
                Col("comments_7d", "nullable_int", nullable=True, ge=0),
                Col("saves_7d", "nullable_int", nullable=True, ge=0),
                Col("campaign_id", "id", nullable=True, optional=True),
            ),
            time_column="posted_at",
        ),
        TableSpec(
            "referrals",
            (
                Col("referrer_id", "id", member_ref=True),
                Col("referred_at", "ts"),
                Col("referee_id", "id", nullable=True, optional=True),
                Col("referee_joined_at", "ts", nullable=True, optional=True),
                Col("referee_first_order_at", "ts", nullable=True, optional=True),
            ),
            time_column="referred_at",
        ),
        TableSpec(
            "program",
            (
                Col("member_id", "id", member_ref=True),
                Col("event_at", "ts"),
                Col("status", "str", isin=PROGRAM_STATUSES),
            ),
            time_column="event_at",
        ),
        TableSpec(
            "social",
            (
                Col("member_id", "id", member_ref=True),
                Col("platform", "str", isin=PLATFORMS),
                Col("followers", "int", ge=0),
                Col("observed_at", "ts"),
            ),
            time_column="observed_at",
        ),
        TableSpec(
            "labels",
            (
                Col("member_id", "id", member_ref=True),
                Col("as_of", "date"),
                Col("label", "int", isin=("0", "1")),
            ),
        ),
        TableSpec(
            "truth",
            (
                Col("member_id", "id"),
                Col("as_of", "date"),
                Col("p_productive_if_invited", "float", ge=0, le=1),
                Col("p_productive_if_not_invited", "float", ge=0, le=1, optional=True, nullable=True),
                Col("p_invited", "float", ge=0, le=1, optional=True, nullable=True),
                Col("p_accept_if_invited", "float", ge=0, le=1, optional=True, nullable=True),
                Col("p_productive_if_accepted", "float", ge=0, le=1, optional=True, nullable=True),
                Col("p_productive_after_decline", "float", ge=0, le=1, optional=True, nullable=True),
            ),
        ),
    )
}
REQUIRED_TABLES = tuple(name for name, spec in TABLES.items() if spec.required)


@dataclass(frozen=True)
class Violation:
    """One broken rule: where, what, how many rows and a few examples."""

    table: str
    column: str | None
    rule: str
    count: int
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        text = f"{where}: {self.rule}" + (f" — {self.count} row(s) break it" if self.count else "")
        if self.examples:
            text += "; e.g. " + " | ".join(self.examples)
        return text


class ContractError(ValueError):
    """The data breaks the contract. `violations` lists every broken rule."""

    def __init__(self, violations: Iterable[Violation]):
        self.violations = list(violations)
        lines = [f"data contract violated ({len(self.violations)} problem(s)):"]
        lines += [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class BrandData:
    """A brand's validated tables in canonical form (see docs/architecture.md)."""

    tables: Mapping[str, pd.DataFrame]
    absent: frozenset[str]
    timezone: str = DEFAULT_TIMEZONE
    source: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    members = property(lambda self: self.tables["members"])
    orders = property(lambda self: self.tables["orders"])
    events = property(lambda self: self.tables["events"])
    posts = property(lambda self: self.tables["posts"])
    referrals = property(lambda self: self.tables["referrals"])
    program = property(lambda self: self.tables["program"])
    social = property(lambda self: self.tables["social"])
    labels = property(lambda self: self.tables["labels"])
    truth = property(lambda self: self.tables["truth"])

    @property
    def data_end(self) -> pd.Timestamp:
        """The latest timestamp observed in any behavioural table (business time)."""
        latest = []
        for name, spec in TABLES.items():
            for col in spec.columns:
                if col.kind == "ts" and len(self.tables[name]):
                    value = self.tables[name][col.name].max()
                    if pd.notna(value):
                        latest.append(value)
        if not latest:
            raise ContractError([Violation("members", "joined_at", "the data holds no timestamps", 0)])
        return max(latest)

    def rows_at(self, table: str, as_of: pd.Timestamp) -> pd.DataFrame:
        """The rows of a per-cutoff table (`labels`, `truth`) at one `as_of`; a store reads only those."""
        frame = self.tables[table]
        return frame.loc[frame["as_of"] == as_of].reset_index(drop=True)

    def rows_and_first(self, table: str, column: str) -> tuple[int, pd.Timestamp | None]:
        """(rows of `table`, earliest `column` value or None): a store answers in SQL, loading nothing."""
        frame = self.tables[table]
        first = frame[column].min() if len(frame) else None
        return int(len(frame)), None if first is None or pd.isna(first) else pd.Timestamp(first)

    def latest(self, table: str, column: str) -> pd.Timestamp | None:
        """The latest `column` value of `table` (None when empty): a store answers in SQL, loading nothing."""
        last = self.tables[table][column].max()
        return None if pd.isna(last) else pd.Timestamp(last)

    def fingerprint(self) -> dict[str, dict[str, object]]:
        """Row count and a content hash per table, for run tracking."""
        return {name: table_fingerprint(df) for name, df in self.tables.items() if name not in self.absent}


def row_hashes(df: pd.DataFrame) -> bytes:
    """One 64-bit hash per row, as bytes: a table's fingerprint hashes them in row order (so a
    table hashed in chunks of rows gets the same fingerprint as hashed whole)."""
    return pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()


def table_fingerprint(df: pd.DataFrame) -> dict[str, object]:
    """Row count and content hash of one canonical table."""
    return {"rows": int(len(df)), "sha256": hashlib.sha256(row_hashes(df)).hexdigest()}


# --------------------------------------------------------------------------- time


# an offset only counts after a time of day: "2024-01-01" ends in "-01" but is naive;
# "…T10:00Z", "…T10:00:00+08:00", "…T1000+0800" and "…T10+08" all carry one
_OFFSET = re.compile(r"[T ]\d{2}(?::?\d{2}){0,2}(?:\.\d+)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")


def _as_text(series: pd.Series) -> pd.Series:
    """Values as text (nulls kept); bytes are decoded leniently instead of raising."""
    if series.dtype == object:
        series = series.map(lambda v: v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v)
    return series.astype("str").where(series.notna())


def _parse_times(text: pd.Series, aware: bool, timezone: str) -> pd.Series:
    """Parse ISO 8601 strings; unparseable values become NaT (never an exception)."""

    def one(value: str) -> pd.Timestamp:
        try:
            ts = pd.Timestamp(value)
        except (ValueError, OverflowError):
            return pd.NaT
        if (ts.tzinfo is not None) != aware:
            return pd.NaT
        return ts.tz_convert(timezone).tz_localize(None) if aware else ts

    try:
        if aware:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
            return parsed.dt.tz_convert(timezone).dt.tz_localize(None).astype("datetime64[us]")
        return pd.to_datetime(text, format="ISO8601", errors="coerce").astype("datetime64[us]")
    except (ValueError, TypeError, OverflowError):
        # mixed or unusual forms: value by value (slow path, only for odd inputs)
        return pd.Series([one(v) for v in text], index=text.index, dtype="datetime64[us]")


def parse_as_of(value: str | dt.date | dt.datetime | pd.Timestamp, timezone: str = DEFAULT_TIMEZONE) -> pd.Timestamp:
    """A cutoff as a naive business-time timestamp; a bare date means local midnight."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(timezone).tz_localize(None)
    return ts.as_unit("us")


def _to_local_naive(series: pd.Series, timezone: str) -> tuple[pd.Series, pd.Series]:
    """Parse a timestamp column into naive business time; also return a mask of unparseable values."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        out = series.dt.tz_convert(timezone).dt.tz_localize(None)
        return out.astype("datetime64[us]"), pd.Series(False, index=series.index)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return series.astype("datetime64[us]"), pd.Series(False, index=series.index)
    text = _as_text(series)
    text = text.str.strip().replace("", None).str.replace(r"(?<=\d)z$", "Z", regex=True)
    has_offset = text.str.contains(_OFFSET, na=False)
    out = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us]")
    naive = text.notna() & ~has_offset
    if naive.any():
        out[naive] = _parse_times(text[naive], aware=False, timezone=timezone)
    if has_offset.any():
        out[has_offset] = _parse_times(text[has_offset], aware=True, timezone=timezone)
    bad = text.notna() & out.isna()
    return out, bad


# --------------------------------------------------------------------------- coercion


_TRUE = {"true", "1", "t", "yes", "y"}
_FALSE = {"false", "0", "f", "no", "n"}


# what a value of each column kind must be, when it cannot be read as one
PARSE_RULES = {
    "id": "must be text", "str": "must be text", "ts": "must be an ISO 8601 timestamp",
    "date": "must be an ISO 8601 date", "int": "must be an integer", "nullable_int": "must be an integer",
    "float": "must be a finite number", "bool": "must be true or false",
}  # fmt: skip


def _coerce(series: pd.Series, col: Col, timezone: str) -> tuple[pd.Series, pd.Series, str]:
    """Convert one column to its canonical dtype; return (values, unparseable mask, rule text)."""
    none = pd.Series(False, index=series.index)
    if col.kind in ("id", "str"):
        if pd.api.types.is_float_dtype(series.dtype):
            # ids exported as floats (1.0) lose their text form; render integers plainly
            as_int = series.dropna()
            if (as_int == as_int.round()).all() and (as_int.abs() < 2**53).all():
                series = series.astype("Int64")
        return _as_text(series).astype("str"), none, PARSE_RULES[col.kind]
    if col.kind in ("ts", "date"):
        out, bad = _to_local_naive(series, timezone)  # a date's time of day is checked by _value_rules
        return out, bad, PARSE_RULES[col.kind]
    if col.kind in ("int", "nullable_int"):
        num = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = (series.notna() & num.isna()) | (num.notna() & ((num != num.round()) | (num.abs() >= 2**53)))
        out = num.where(~bad).round().astype("Int64")
        return out, bad, PARSE_RULES[col.kind]
    if col.kind == "float":
        num = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = (series.notna() & num.isna()) | (num.notna() & ~np.isfinite(num.fillna(0.0)))
        return num.where(~bad), bad, PARSE_RULES[col.kind]
    if col.kind == "bool":
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean"), none, PARSE_RULES[col.kind]
        text = _as_text(series).str.strip().str.lower()
        out = pd.Series(pd.NA, index=series.index, dtype="boolean")
        out[text.isin(_TRUE)] = True
        out[text.isin(_FALSE)] = False
        bad = text.notna() & out.isna()
        return out, bad, PARSE_RULES[col.kind]
    raise AssertionError(col.kind)


def _shorten(text: str, limit: int = SHOW_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _show(value: object) -> str:
    if isinstance(value, str):
        return _shorten(repr(value))
    try:
        return "null" if pd.isna(value) else _shorten(str(value))
    except (TypeError, ValueError, ArithmeticError):  # array-like cells from odd Parquet columns, Decimal("sNaN")
        return _shorten(str(value))


Locate = Callable[[int], str]


def _row_label(index: int) -> str:
    return f"row {index}"


def _examples(
    df: pd.DataFrame, mask_or_index, limit: int = 3, column: str | None = None, locate: Locate = _row_label
) -> tuple[str, ...]:
    """A few rows breaking a rule, each with where it is (file line or row) and its values."""
    rows = df.loc[mask_or_index].head(limit) if not isinstance(mask_or_index, pd.Index) else df.loc[mask_or_index[:limit]]
    shown_columns = list(df.columns[:5])
    if column is not None and column in df.columns and column not in shown_columns:
        shown_columns.append(column)  # the value that breaks the rule is always shown
    out = []
    for idx, row in rows.iterrows():
        shown = ", ".join(f"{k}={_show(row[k])}" for k in shown_columns)
        out.append(f"{locate(int(idx))}: {shown}")
    return tuple(out)


# --------------------------------------------------------------------------- validation


ROW = "__row"  # the source row number (frame index) carried into SQL for examples
PAIR_UNIQUE = ("labels", "truth")  # tables with one row per (member_id, as_of)


def _q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class _Rule:
    """One contract rule as SQL: `condition` is true on the rows (alias t) that break it."""

    column: str
    text: str
    condition: str


def _sql_rules(spec: TableSpec, current_year: int, unparsed: Iterable[str], with_members: bool) -> tuple[list[_Rule], list[str]]:
    """The rules of one table as SQL conditions, and the joins they need (uniqueness, members)."""
    rules: list[_Rule] = []
    joins: list[str] = []
    for i, col in enumerate(spec.columns):
        c = f"t.{_q(col.name)}"
        if not col.nullable:
            # a value that failed to parse is already reported as such, not again as null
            skip = f" AND NOT t.{_q('__unparsed_' + col.name)}" if col.name in unparsed else ""
            rules.append(_Rule(col.name, "must not be null", f"{c} IS NULL{skip}"))
        if col.unique:
            joins.append(f"LEFT JOIN (SELECT {_q(col.name)} AS k FROM t GROUP BY 1 HAVING count(*) > 1) u{i} ON {c} = u{i}.k")
            rules.append(_Rule(col.name, "must be unique", f"u{i}.k IS NOT NULL"))
        if col.ge is not None:
            rules.append(_Rule(col.name, f"must be >= {col.ge:g}", f"{c} < {col.ge!r}"))
        if col.le is not None:
            rules.append(_Rule(col.name, f"must be <= {col.le:g}", f"{c} > {col.le!r}"))
        if col.name == "birth_year":
            rules.append(_Rule(col.name, f"must be <= the current year ({current_year})", f"{c} > {current_year}"))
        if col.isin is not None:
            allowed = ", ".join(v if col.kind in ("int", "nullable_int") else _literal(v) for v in col.isin)
            rules.append(_Rule(col.name, f"must be one of {', '.join(col.isin)}", f"{c} NOT IN ({allowed})"))
        if col.member_ref and with_members:
            # existence as an anti-join: no Python loop over id strings
            joins.append(f"LEFT JOIN (SELECT DISTINCT member_id AS k FROM _member_ids) m{i} ON {c} = m{i}.k")
            rules.append(_Rule(col.name, "must exist in members.member_id", f"{c} IS NOT NULL AND m{i}.k IS NULL"))
    if spec.name in PAIR_UNIQUE:
        joins.append(
            "LEFT JOIN (SELECT member_id, as_of FROM t GROUP BY ALL HAVING count(*) > 1) p"
            " ON t.member_id = p.member_id AND t.as_of = p.as_of"
        )
        rules.append(_Rule("member_id", "must be unique per (member_id, as_of)", "p.member_id IS NOT NULL"))
    return rules, joins


def _rule_violations(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    df: pd.DataFrame,
    unparsed: Mapping[str, pd.Series],
    current_year: int,
    locate: Locate,
    with_members: bool,
    limit: int = 3,
) -> list[Violation]:
    """Check every rule of one table in one DuckDB pass: per rule the count and the first rows."""
    view = df.assign(**{ROW: df.index.to_numpy(dtype="int64")})
    for col, mask in unparsed.items():
        view[f"__unparsed_{col}"] = mask.reindex(df.index, fill_value=False).to_numpy(dtype=bool)
    rules, joins = _sql_rules(spec, current_year, unparsed, with_members)
    if not rules:
        return []
    con.register("t", view)
    try:
        selects = ", ".join(
            f"count(*) FILTER (WHERE {r.condition}), min(t.{ROW}, {limit}) FILTER (WHERE {r.condition})" for r in rules
        )
        (found,) = con.execute(f"SELECT {selects} FROM t {' '.join(joins)}").fetchall()
    finally:
        con.unregister("t")
    out = []
    for i, rule in enumerate(rules):
        count, rows = found[2 * i], found[2 * i + 1]
        if count:
            examples = _examples(df, pd.Index(sorted(rows)), limit, column=rule.column, locate=locate)
            out.append(Violation(spec.name, rule.column, rule.text, int(count), examples))
    return out


def duplicate_rows_query(source: str, keys: str, row: str) -> str:
    """SQL giving, as `__row`, the row number `row` of each row of `source` that repeats an earlier
    row on every one of `keys`. Only rows whose hash repeats are compared column by column: the
    window never holds the whole table."""
    return f"""
        WITH repeated AS (SELECT hash({keys}) AS h FROM {source} GROUP BY 1 HAVING count(*) > 1)
        SELECT {ROW} FROM (
            SELECT {row} AS {ROW}, row_number() OVER (PARTITION BY {keys} ORDER BY {row}) AS n
            FROM {source} WHERE hash({keys}) IN (SELECT h FROM repeated)
        ) WHERE n > 1"""


def _exact_duplicates(con: duckdb.DuckDBPyConnection, raw: pd.DataFrame) -> np.ndarray:
    """Positions of rows that repeat an earlier row exactly (every source column, as written)."""
    if raw.empty or not len(raw.columns):
        return np.zeros(0, dtype="int64")
    names = [f"c{i}" for i in range(raw.shape[1])]  # source headers may be empty, repeated or odd
    frame = raw.set_axis(names, axis=1).reset_index(drop=True)
    for name in names:
        dtype, types = frame[name].dtype, pd.api.types
        plain = types.is_bool_dtype(dtype) or types.is_datetime64_any_dtype(dtype) or types.is_string_dtype(dtype)
        plain = plain or (types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype))
        if types.is_object_dtype(dtype) or not plain:  # mixed, nested or exotic values DuckDB cannot scan: their text
            frame[name] = frame[name].map(repr).astype("str")
    frame[ROW] = np.arange(len(frame), dtype="int64")
    con.register("raw", frame)
    try:
        query = duplicate_rows_query("raw", ", ".join(_q(n) for n in names), ROW)
        return np.sort(np.asarray(con.execute(query).fetchnumpy()[ROW], dtype="int64"))
    finally:
        con.unregister("raw")


# the pandas dtype each column kind has after loading (docs/architecture.md)
CANONICAL_DTYPES = {
    "id": "str",
    "str": "str",
    "ts": "datetime64[us]",
    "date": "datetime64[us]",
    "int": "int64",
    "nullable_int": "Int64",
    "float": "float64",
    "bool": "bool",
}


def _canonical_empty(spec: TableSpec) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series(dtype=CANONICAL_DTYPES[c.kind]) for c in spec.columns})


MISSING_COLUMN = "required column is missing"


class ContractConfig(BaseModel):
    """`[contract]` in the config file: the plausible time range of the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time_floor: dt.date = Field(DEFAULT_TIME_FLOOR.date(), description="no timestamp may be earlier (business time)")
    export_time: dt.datetime | None = Field(
        None, description="when the brand exported the data; no timestamp may be more than a day later (default: now)"
    )


@dataclass(frozen=True)
class TimeBounds:
    """The plausible time range: no timestamp before `floor` or after `export_time + 1 day`.

    Both are naive business time. `export_time` is when the brand exported the data; when
    the brand does not say, it is the moment of validation (data cannot come from the future).
    """

    floor: pd.Timestamp = DEFAULT_TIME_FLOOR
    export_time: pd.Timestamp | None = None

    @classmethod
    def parse(cls, floor: pd.Timestamp | str, export_time: pd.Timestamp | str | None, timezone: str) -> TimeBounds:
        return cls(parse_as_of(floor, timezone), None if export_time is None else parse_as_of(export_time, timezone))

    def latest(self, timezone: str) -> pd.Timestamp:
        export = self.export_time
        if export is None:
            export = pd.Timestamp.now(tz=timezone).tz_localize(None)
        return (export + EXPORT_SLACK).as_unit("us")


def _value_rule_texts(col: Col, floor: pd.Timestamp, latest: pd.Timestamp) -> list[str]:
    """The texts of the single-value rules on a column, in the order they are checked."""
    if col.kind == "id":
        return ["must not start or end with whitespace (ids are compared exactly)"]
    if col.kind not in ("ts", "date"):
        return []
    bounds = [f"must not be before {floor:%Y-%m-%d} (the time floor)", f"must not be after the export time plus one day ({latest:%Y-%m-%d %H:%M})"]
    return (["must be a date without a time of day"] if col.kind == "date" else []) + bounds


def _value_rules(
    spec: TableSpec, col: Col, values: pd.Series, latest: pd.Timestamp, floor: pd.Timestamp
) -> list[tuple[str, pd.Series]]:
    """Rules on single parsed values: ids without padding, dates without a time, plausible times."""
    masks: list[pd.Series] = []
    if col.kind == "id":
        masks.append(values.notna() & (values.str.len() != values.str.strip().str.len()))
    if col.kind in ("ts", "date"):
        if col.kind == "date":
            masks.append(values.notna() & (values != values.dt.normalize()))
        masks += [values < floor, values > latest]
    found = zip(_value_rule_texts(col, floor, latest), masks, strict=True)
    return [(rule, mask) for rule, mask in found if mask.any()]


def _prepare(
    spec: TableSpec, raw: pd.DataFrame, timezone: str, bounds: TimeBounds, locate: Locate = _row_label
) -> tuple[pd.DataFrame, list[Violation], dict[str, pd.Series]]:
    """Coerce one table to canonical dtypes and check the rules on single values.

    Returns the frame, the missing-column, parse and value violations, and per column the
    mask of rows whose value could not be parsed (those become null in the frame).
    """
    violations: list[Violation] = []
    unparsed: dict[str, pd.Series] = {}
    extra = [c for c in raw.columns if c not in spec.column_names]
    if extra:
        logger.debug("%s: ignoring extra columns %s", spec.name, extra)
    missing = [c.name for c in spec.columns if not _may_be_left_out(c) and c.name not in raw.columns]
    present = _shorten(", ".join(map(str, raw.columns)), 200)
    for name in missing:
        violations.append(Violation(spec.name, name, MISSING_COLUMN, len(raw), (f"columns present: {present}",)))
    if missing:
        return raw, violations, unparsed

    raw = raw.reset_index(drop=True)
    latest = bounds.latest(timezone)
    out = pd.DataFrame(index=raw.index)
    for col in spec.columns:
        if col.name not in raw.columns:
            if col.default is not None:
                out[col.name] = col.default
            else:
                out[col.name] = _canonical_empty(spec)[col.name].reindex(raw.index)
            continue
        try:
            values, bad, rule = _coerce(raw[col.name], col, timezone)
        except (TypeError, ValueError, ArithmeticError) as err:  # objects no file holds (in-memory frames)
            rule = f"holds values that cannot be read as {col.kind} ({type(err).__name__})"
            violations.append(Violation(spec.name, col.name, rule, len(raw), (_show(raw[col.name].iloc[0]),)))
            unparsed[col.name] = pd.Series(True, index=raw.index)
            out[col.name] = _canonical_empty(spec)[col.name].reindex(raw.index)
            continue
        if bad.any():
            violations.append(Violation(spec.name, col.name, rule, int(bad.sum()), _examples(raw, bad, column=col.name, locate=locate)))
            unparsed[col.name] = bad
        for value_rule, mask in _value_rules(spec, col, values, latest, bounds.floor):
            violations.append(Violation(spec.name, col.name, value_rule, int(mask.sum()), _examples(raw, mask, column=col.name, locate=locate)))
        out[col.name] = values.dt.normalize() if col.kind == "date" else values
    return out, violations, unparsed


def _finalise(spec: TableSpec, df: pd.DataFrame) -> pd.DataFrame:
    """Apply the contract's defaults and documented row policies to a valid table."""
    df = df.reset_index(drop=True)
    for col in spec.columns:
        if col.kind == "bool":
            df[col.name] = df[col.name].fillna(col.default if col.default is not None else False).astype("bool")
        elif col.kind == "int":
            df[col.name] = df[col.name].astype("int64")
    return df


def duplicates_note(table: str, count: int) -> str:
    """The note (also logged) for exact duplicate rows dropped from `table`."""
    note = f"{table}: dropped {count} exact duplicate row(s)"
    logger.warning(note)
    return note


def unknown_events_note(count: int, first: list[str]) -> str:
    """The note (also logged) for event types outside the contract, counted as `other`."""
    note = f"events.event_type: {count} row(s) with types outside the contract counted as 'other' (e.g. {first})"
    logger.warning(note)
    return note


def _drop_exact_duplicates(
    con: duckdb.DuckDBPyConnection, name: str, df: pd.DataFrame, raw: pd.DataFrame, notes: list[str]
) -> pd.DataFrame:
    """Drop rows that repeat an earlier source row exactly and say so (not for `truth`: never used)."""
    if name == "truth":
        return df
    dup = _exact_duplicates(con, raw)
    if len(dup):
        notes.append(duplicates_note(name, len(dup)))
        df = df.drop(index=df.index[dup])  # keep the source row numbers for error examples
    return df


def from_frames(
    frames: Mapping[str, pd.DataFrame],
    timezone: str = DEFAULT_TIMEZONE,
    *,
    current_year: int | None = None,
    source: str | None = None,
    time_floor: pd.Timestamp | str = DEFAULT_TIME_FLOOR,
    export_time: pd.Timestamp | str | None = None,
) -> BrandData:
    """Validate in-memory tables against the contract and return them in canonical form.

    Timestamps must lie in [`time_floor`, `export_time` + 1 day]; `export_time` defaults to
    now (both are read in the business time zone, like any naive timestamp).
    """
    bounds = TimeBounds.parse(time_floor, export_time, timezone)
    sources = {name: (lambda df=df: df) for name, df in frames.items()}
    return _validate(sources, timezone, current_year=current_year, source=source, bounds=bounds, locators={})


TableSink = Callable[[str, pd.DataFrame], None]
# checks one table in SQL where it can (`features.sql_contract`): (spec, with_members, write) to
# (problems, rule violations, notes, late notes), or None for the pandas path
SqlCheck = Callable[[TableSpec, bool, bool], tuple[list[Violation], list[Violation], list[str], list[str]] | None]


def _validate(
    sources: dict[str, Callable[[], pd.DataFrame | Violation]],
    timezone: str,
    *,
    current_year: int | None,
    source: str | None,
    bounds: TimeBounds,
    locators: Mapping[str, Locate],
    sink: TableSink | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    in_sql: SqlCheck | None = None,
) -> BrandData:
    """Read each source in turn (a frame, or the violation saying why it cannot be read), validate, canonicalise.

    Tables are handled one at a time, `members` first (the others' member ids are checked
    against it): each raw table is let go once its table is validated. Each canonical
    table goes to `sink` when one is given (it is then not kept: the returned
    `BrandData.tables` is empty), else into the returned `BrandData`. With `in_sql` (and its
    DuckDB connection `con`), a table it accepts is checked in SQL instead, and stored there
    by `koc ingest`, never read into pandas: the same rules, messages and notes.
    """
    check_timezone(timezone)
    current_year = current_year or dt.date.today().year
    notes: list[str] = []
    late_notes: list[str] = []
    problems: list[Violation] = []  # missing columns, unreadable files, unparseable and implausible values
    broken: list[Violation] = []  # the SQL rules (null, unique, ranges, member existence)
    unknown = sorted(set(sources) - set(TABLES))
    if unknown:
        logger.debug("ignoring tables outside the contract: %s", unknown)
    missing_tables = [Violation(name, None, "required table is missing", 0) for name in REQUIRED_TABLES if name not in sources]
    if missing_tables:
        raise ContractError(missing_tables)

    kept: dict[str, pd.DataFrame] = {}
    keep = sink or kept.__setitem__
    prepared: set[str] = set()
    own = con is None
    con = duckdb.connect() if con is None else con
    try:
        for name, spec in TABLES.items():  # members comes first
            if name not in sources:
                continue
            read = sources.pop(name)
            with_members = "members" in prepared or name == "members"
            done = in_sql(spec, with_members, not (problems or broken)) if in_sql else None
            if done is not None:
                found, rules, table_notes, table_late = done
                problems += found
                broken += rules
                notes += table_notes
                late_notes += table_late
                if not any(p.rule == MISSING_COLUMN for p in found):
                    prepared.add(name)
                continue
            raw = read()
            if isinstance(raw, Violation):  # unreadable: reported with the rest, the other files still checked
                problems.append(raw)
                continue
            df, found, unparsed = _prepare(spec, raw, timezone, bounds, locators.get(name, _row_label))
            problems += found
            if any(p.rule == MISSING_COLUMN for p in found):
                continue  # nothing more can be checked on this table
            df = _drop_exact_duplicates(con, name, df, raw, notes)
            del raw
            if name == "members":
                con.register("_member_ids", df[["member_id"]].copy())
            locate = locators.get(name, _row_label)
            broken += _rule_violations(con, spec, df, unparsed, current_year, locate, with_members)
            prepared.add(name)
            if problems or broken:
                continue  # the load fails: no need to keep or write the table
            if name == "events":
                df = _count_unknown_events_as_other(df, late_notes)
            keep(name, _finalise(spec, df))
            del df
    finally:
        if own:
            con.close()
    if problems or broken:
        raise ContractError(problems + broken)

    notes += late_notes
    absent = frozenset(n for n in TABLES if n not in prepared)
    for name in sorted(absent):
        keep(name, _canonical_empty(TABLES[name]))
    tables = {name: kept[name] for name in TABLES} if sink is None else {}
    for name in sorted(absent - {"labels", "truth"}):
        notes.append(f"{name}: table absent — its feature group counts as no activity")
    return BrandData(tables=tables, absent=absent, timezone=timezone, source=source, warnings=tuple(notes))


def _count_unknown_events_as_other(events: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Event types outside the contract become `other`, reported once."""
    if not len(events):
        return events
    unknown_types = ~events["event_type"].isin((*EVENT_TYPES, OTHER_EVENT))
    if unknown_types.any():
        values = sorted(events.loc[unknown_types, "event_type"].unique())[:5]
        notes.append(unknown_events_note(int(unknown_types.sum()), values))
        events = events.copy()
        events.loc[unknown_types, "event_type"] = OTHER_EVENT
    return events


def _first_bad_utf8(path: Path) -> tuple[int, int, bytes]:
    """Line number, file byte offset and the bytes around the first invalid UTF-8 sequence."""
    offset = 0
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return line_no, offset + err.start, line[err.start : err.start + 8]
            offset += len(line)
    return 0, offset, b""


def _repeated_contract_columns(name: str, path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])
    spec = TABLES[name].column_names if name in TABLES else []
    return [c for c in spec if header.count(c) > 1]


def _read_table(path: Path) -> pd.DataFrame | Violation:
    """One table file as a frame, or the violation saying why it cannot be read."""
    name = path.name.split(".")[0]
    try:
        if path.suffix == ".csv":
            # everything as text: ids keep leading zeros; each column is coerced by its spec;
            # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column name
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
            twice = _repeated_contract_columns(name, path)
            if twice:  # pandas would quietly rename the second one "<name>.1"
                return Violation(name, twice[0], "column given twice in the header", 0, (str(path),))
            return frame
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        rule = "file is empty: a CSV needs at least its header row"
    except UnicodeDecodeError:
        line, offset, found = _first_bad_utf8(path)
        rule = f"file is not UTF-8 text: line {line}, byte {offset} starts {found!r}; re-export it as UTF-8"
    except Exception as err:  # noqa: BLE001 - any reader failure is the file's fault, reported not raised
        rule = f"file cannot be read ({type(err).__name__}): {_shorten(str(err), 300)}"
    return Violation(name, None, rule, 0, (str(path),))


def _csv_line_locator(path: Path) -> Locate:
    """Map a CSV record index (0-based, header excluded) to its line in the file, lazily.

    Only called for the few example rows of a violation; quoted fields may span lines, so
    the file is walked with the csv module rather than assuming one record per line.
    """
    starts: list[int] = []

    def locate(index: int) -> str:
        if index >= len(starts):
            starts.clear()
            limit = csv.field_size_limit(2**31 - 1)  # a 5 MB cell is data to report, not a reason to fail
            try:
                with path.open(encoding="utf-8-sig", newline="") as fh:
                    reader = csv.reader(fh)
                    next(reader, None)  # header
                    line = reader.line_num
                    for row in reader:
                        if row:  # pandas skips blank lines
                            starts.append(line + 1)
                        line = reader.line_num
                        if len(starts) > index:
                            break
            except (csv.Error, UnicodeDecodeError, OSError):
                pass  # fall back to the record number below
            finally:
                csv.field_size_limit(limit)
        return f"{path.name} line {starts[index]}" if index < len(starts) else f"{path.name} record {index + 1}"

    return locate


def _parquet_row_locator(path: Path) -> Locate:
    return lambda index: f"{path.name} row {index}"


def check_timezone(timezone: str) -> str:
    """The time zone name, if the system knows it (raises ValueError otherwise)."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {timezone!r}: use an IANA name such as Asia/Shanghai") from err
    return timezone


def table_files(path: str | Path) -> dict[str, Path]:
    """The contract table files in a data directory; raises if a table is given twice or dangles."""
    root = Path(path)
    if not root.is_dir():
        raise ContractError([Violation("<data dir>", None, f"{root} is not a directory", 0)])
    found: dict[str, Path] = {}
    problems = []
    for name in TABLES:
        present = [root / f"{name}.{ext}" for ext in ("parquet", "csv") if (root / f"{name}.{ext}").is_symlink() or (root / f"{name}.{ext}").exists()]
        dangling = [p for p in present if not p.exists()]
        for link in dangling:
            target = os.readlink(link)
            problems.append(Violation(name, None, f"file is a symbolic link to {target}, which does not exist", 0, (str(link),)))
        if len(present) > 1:
            problems.append(Violation(name, None, "table given twice (both .parquet and .csv)", 0, tuple(map(str, present))))
        elif present and not dangling:
            found[name] = present[0]
    if problems:
        raise ContractError(problems)
    return found


def load_sources(
    path: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    *,
    tables: Iterable[str] | None = None,
    time_floor: pd.Timestamp | str = DEFAULT_TIME_FLOOR,
    export_time: pd.Timestamp | str | None = None,
) -> tuple[dict[str, Callable[[], pd.DataFrame | Violation]], dict[str, Locate], TimeBounds]:
    """The table readers (each reads its file when called), example locators and time bounds of a data directory."""
    files = table_files(path)
    wanted = set(tables) if tables is not None else set(TABLES)
    sources: dict[str, Callable[[], pd.DataFrame | Violation]] = {}
    locators: dict[str, Locate] = {}
    for name, file in files.items():
        if name in wanted | set(REQUIRED_TABLES):
            sources[name] = lambda file=file: _read_table(file)  # read when its turn comes: one raw table in memory
            locators[name] = _csv_line_locator(file) if file.suffix == ".csv" else _parquet_row_locator(file)
    return sources, locators, TimeBounds.parse(time_floor, export_time, timezone)


def load_data(
    path: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    *,
    current_year: int | None = None,
    tables: Iterable[str] | None = None,
    time_floor: pd.Timestamp | str = DEFAULT_TIME_FLOOR,
    export_time: pd.Timestamp | str | None = None,
) -> BrandData:
    """Read and validate a data directory of `<table>.parquet|csv` files.

    Every unreadable file is reported (not only the first); example rows name the file and
    its line (CSV) or row (Parquet). See `from_frames` for the time bounds. A DuckDB file
    written by `koc ingest` (`features.store`) is opened instead of read.
    """
    if Path(path).suffix == ".duckdb" and Path(path).is_file():
        from features.store import open_store  # the store module builds on this one

        stored = open_store(path)
        if stored.timezone != timezone:
            logger.warning("%s was ingested in time zone %s, not %s: its tables keep %s", path, stored.timezone, timezone, stored.timezone)
        return stored
    sources, locators, bounds = load_sources(path, timezone, tables=tables, time_floor=time_floor, export_time=export_time)
    return _validate(sources, timezone, current_year=current_year, source=str(path), bounds=bounds, locators=locators)


def summary(data: BrandData) -> pd.DataFrame:
    """Rows and time range per table, for `koc validate`."""
    rows = []
    for name, spec in TABLES.items():
        df = data.tables[name]
        time_col = spec.time_column or ("as_of" if "as_of" in df.columns else None)
        first = df[time_col].min() if time_col and len(df) else None
        last = df[time_col].max() if time_col and len(df) else None
        rows.append(
            {
                "table": name,
                "status": "absent" if name in data.absent else "ok",
                "rows": int(len(df)),
                "from": first,
                "to": last,
            }
        )
    return pd.DataFrame(rows)


def canonical_columns(name: str) -> list[str]:
    return TABLES[name].column_names
