"""Data contract v1: read a brand's data directory and enforce every rule of the contract.

Loading turns each table into canonical columns and dtypes (see docs/architecture.md):
ids are strings, timestamps are naive in the business time zone, bools are real bools.
Every rule violation is collected and raised together as one `ContractError` naming
table, column, rule, how many rows break it and a few example rows. Nothing is dropped
silently: exact duplicate rows are dropped and reported in `BrandData.warnings`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

logger = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "Asia/Shanghai"

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

    def fingerprint(self) -> dict[str, dict[str, object]]:
        """Row count and a content hash per table, for run tracking."""
        out: dict[str, dict[str, object]] = {}
        for name, df in self.tables.items():
            if name in self.absent:
                continue
            hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
            out[name] = {"rows": int(len(df)), "sha256": hashlib.sha256(hashed.tobytes()).hexdigest()}
        return out


# --------------------------------------------------------------------------- time


# an offset only counts after a time of day: "2024-01-01" ends in "-01" but is naive;
# "…T10:00Z", "…T10:00:00+08:00", "…T1000+0800" and "…T10+08" all carry one
_OFFSET = re.compile(r"[T ]\d{2}(?::?\d{2}){0,2}(?:\.\d+)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")


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
    text = series.astype("str").where(series.notna())
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


def _coerce(series: pd.Series, col: Col, timezone: str) -> tuple[pd.Series, pd.Series, str]:
    """Convert one column to its canonical dtype; return (values, unparseable mask, rule text)."""
    none = pd.Series(False, index=series.index)
    if col.kind in ("id", "str"):
        if pd.api.types.is_float_dtype(series.dtype):
            # ids exported as floats (1.0) lose their text form; render integers plainly
            as_int = series.dropna()
            if (as_int == as_int.round()).all() and (as_int.abs() < 2**53).all():
                series = series.astype("Int64")
        out = series.astype("str").where(series.notna())
        return out.astype("str"), none, "must be text"
    if col.kind in ("ts", "date"):
        out, bad = _to_local_naive(series, timezone)
        if col.kind == "date":
            out = out.dt.normalize()
        return out, bad, "must be an ISO 8601 timestamp" if col.kind == "ts" else "must be an ISO 8601 date"
    if col.kind in ("int", "nullable_int"):
        num = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = (series.notna() & num.isna()) | (num.notna() & ((num != num.round()) | (num.abs() >= 2**53)))
        out = num.where(~bad).round().astype("Int64")
        return out, bad, "must be an integer"
    if col.kind == "float":
        num = pd.to_numeric(series, errors="coerce").astype("float64")
        bad = (series.notna() & num.isna()) | (num.notna() & ~np.isfinite(num.fillna(0.0)))
        return num.where(~bad), bad, "must be a finite number"
    if col.kind == "bool":
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean"), none, "must be true or false"
        text = series.astype("str").str.strip().str.lower().where(series.notna())
        out = pd.Series(pd.NA, index=series.index, dtype="boolean")
        out[text.isin(_TRUE)] = True
        out[text.isin(_FALSE)] = False
        bad = text.notna() & out.isna()
        return out, bad, "must be true or false"
    raise AssertionError(col.kind)


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    return "null" if pd.isna(value) else str(value)


def _examples(df: pd.DataFrame, mask_or_index, limit: int = 3, column: str | None = None) -> tuple[str, ...]:
    rows = df.loc[mask_or_index].head(limit) if not isinstance(mask_or_index, pd.Index) else df.loc[mask_or_index[:limit]]
    shown_columns = list(df.columns[:5])
    if column is not None and column in df.columns and column not in shown_columns:
        shown_columns.append(column)  # the value that breaks the rule is always shown
    out = []
    for idx, row in rows.iterrows():
        shown = ", ".join(f"{k}={_show(row[k])}" for k in shown_columns)
        out.append(f"row {idx}: {shown}")
    return tuple(out)


# --------------------------------------------------------------------------- validation


_RULE_TEXT = {
    "not_nullable": "must not be null",
    "field_uniqueness": "must be unique",
}


def _pandera_schema(spec: TableSpec, member_ids: pd.Index | None, current_year: int) -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {}
    for col in spec.columns:
        checks: list[pa.Check] = []
        if col.ge is not None:
            checks.append(pa.Check.ge(col.ge, error=f"must be >= {col.ge:g}"))
        if col.le is not None:
            checks.append(pa.Check.le(col.le, error=f"must be <= {col.le:g}"))
        if col.name == "birth_year":
            checks.append(pa.Check.le(current_year, error=f"must be <= the current year ({current_year})"))
        if col.isin is not None:
            allowed = [int(v) for v in col.isin] if col.kind in ("int", "nullable_int") else list(col.isin)
            checks.append(pa.Check.isin(allowed, error=f"must be one of {', '.join(col.isin)}"))
        if col.member_ref and member_ids is not None:
            checks.append(pa.Check(lambda s, ids=member_ids: s.isin(ids), error="must exist in members.member_id"))
        columns[col.name] = pa.Column(
            None, checks=checks, nullable=col.nullable, unique=col.unique, required=not _may_be_left_out(col)
        )
    return pa.DataFrameSchema(columns, strict=False)


def _pandera_violations(
    spec: TableSpec, df: pd.DataFrame, schema: pa.DataFrameSchema, unparsed: Mapping[str, pd.Series]
) -> list[Violation]:
    try:
        schema.validate(df, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        out = []
        for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
            rule = _RULE_TEXT.get(str(check), str(check))
            idx = pd.Index(group["index"].dropna().astype("int64").unique())
            bad = unparsed.get(f"{spec.name}.{column}")
            if rule == _RULE_TEXT["not_nullable"] and bad is not None:
                idx = idx.difference(bad.index[bad])  # already reported as unparseable
                if not len(idx):
                    continue
            examples = _examples(df, idx, column=str(column)) if len(idx) else tuple(str(v) for v in group["failure_case"].head(3))
            out.append(Violation(spec.name, str(column), rule, int(len(idx) or len(group)), examples))
        return out
    return []


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


def _prepare(
    spec: TableSpec, raw: pd.DataFrame, timezone: str
) -> tuple[pd.DataFrame, list[Violation], dict[str, pd.Series]]:
    """Coerce one table to canonical dtypes.

    Returns the frame, the missing-column and parse violations, and per column the mask
    of rows whose value could not be parsed (those become null in the frame).
    """
    violations: list[Violation] = []
    unparsed: dict[str, pd.Series] = {}
    extra = [c for c in raw.columns if c not in spec.column_names]
    if extra:
        logger.debug("%s: ignoring extra columns %s", spec.name, extra)
    missing = [c.name for c in spec.columns if not _may_be_left_out(c) and c.name not in raw.columns]
    for name in missing:
        violations.append(Violation(spec.name, name, MISSING_COLUMN, len(raw)))
    if missing:
        return raw, violations, unparsed

    raw = raw.reset_index(drop=True)
    out = pd.DataFrame(index=raw.index)
    for col in spec.columns:
        if col.name not in raw.columns:
            if col.default is not None:
                out[col.name] = col.default
            else:
                out[col.name] = _canonical_empty(spec)[col.name].reindex(raw.index)
            continue
        values, bad, rule = _coerce(raw[col.name], col, timezone)
        if bad.any():
            violations.append(Violation(spec.name, col.name, rule, int(bad.sum()), _examples(raw, bad, column=col.name)))
            unparsed[col.name] = bad
        out[col.name] = values
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


def _drop_exact_duplicates(name: str, df: pd.DataFrame, raw: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Drop rows that repeat an earlier source row exactly (every column, as written) and say so."""
    dup = raw.reset_index(drop=True).duplicated(keep="first").to_numpy()
    if dup.any():
        note = f"{name}: dropped {int(dup.sum())} exact duplicate row(s)"
        logger.warning(note)
        notes.append(note)
        df = df.loc[~dup]  # keep the source row numbers for error examples
    return df


def from_frames(
    frames: Mapping[str, pd.DataFrame],
    timezone: str = DEFAULT_TIMEZONE,
    *,
    current_year: int | None = None,
    source: str | None = None,
) -> BrandData:
    """Validate in-memory tables against the contract and return them in canonical form."""
    check_timezone(timezone)
    current_year = current_year or dt.date.today().year
    notes: list[str] = []
    violations: list[Violation] = []
    unknown = sorted(set(frames) - set(TABLES))
    if unknown:
        logger.debug("ignoring tables outside the contract: %s", unknown)
    for name in REQUIRED_TABLES:
        if name not in frames:
            violations.append(Violation(name, None, "required table is missing", 0))
    if violations:
        raise ContractError(violations)

    prepared: dict[str, pd.DataFrame] = {}
    unparsed: dict[str, pd.Series] = {}  # rows whose value failed to parse, per "table.column"
    for name, spec in TABLES.items():
        if name not in frames:
            continue
        df, problems, bad = _prepare(spec, frames[name], timezone)
        violations += problems
        unparsed.update({f"{name}.{col}": mask for col, mask in bad.items()})
        if any(p.rule == MISSING_COLUMN for p in problems):
            continue  # nothing more can be checked on this table
        prepared[name] = _drop_exact_duplicates(name, df, frames[name], notes)

    # every table whose columns are all there is checked, so all problems are reported together
    members = prepared.get("members")
    member_ids = pd.Index(members["member_id"].dropna().unique()) if members is not None else None
    for name, df in prepared.items():
        spec = TABLES[name]
        found = _pandera_violations(spec, df, _pandera_schema(spec, member_ids, current_year), unparsed)
        violations += found
    for name in ("labels", "truth"):
        if name in prepared:
            clash = prepared[name].duplicated(["member_id", "as_of"], keep=False)
            if clash.any():
                rule = "must be unique per (member_id, as_of)"
                violations.append(Violation(name, "member_id", rule, int(clash.sum()), _examples(prepared[name], clash)))
    if violations:
        raise ContractError(violations)

    events = prepared.get("events")
    if events is not None and len(events):
        unknown_types = ~events["event_type"].isin((*EVENT_TYPES, OTHER_EVENT))
        if unknown_types.any():
            values = sorted(events.loc[unknown_types, "event_type"].unique())[:5]
            note = f"events.event_type: {int(unknown_types.sum())} row(s) with types outside the contract counted as 'other' (e.g. {values})"
            logger.warning(note)
            notes.append(note)
            events = events.copy()
            events.loc[unknown_types, "event_type"] = OTHER_EVENT
            prepared["events"] = events

    tables = {}
    for name, spec in TABLES.items():
        tables[name] = _finalise(spec, prepared[name]) if name in prepared else _canonical_empty(spec)
    absent = frozenset(n for n in TABLES if n not in prepared)
    for name in sorted(absent - {"labels", "truth"}):
        notes.append(f"{name}: table absent — its feature group counts as no activity")
    return BrandData(tables=tables, absent=absent, timezone=timezone, source=source, warnings=tuple(notes))


def _read_table(path: Path) -> pd.DataFrame:
    """One table file as a frame; an unreadable file is a contract violation, not a crash."""
    name = path.name.split(".")[0]
    try:
        if path.suffix == ".csv":
            # everything as text: ids keep leading zeros; each column is coerced by its spec
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        rule = "file is empty: a CSV needs at least its header row"
    except UnicodeDecodeError as err:
        rule = f"file is not UTF-8 text (byte {err.start}); re-export it as UTF-8"
    except (pd.errors.ParserError, OSError, ValueError) as err:
        rule = f"file cannot be read: {err}"
    raise ContractError([Violation(name, None, rule, 0, (str(path),))])


def check_timezone(timezone: str) -> str:
    """The time zone name, if the system knows it (raises ValueError otherwise)."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {timezone!r}: use an IANA name such as Asia/Shanghai") from err
    return timezone


def table_files(path: str | Path) -> dict[str, Path]:
    """The contract table files in a data directory; raises if a table is given twice."""
    root = Path(path)
    if not root.is_dir():
        raise ContractError([Violation("<data dir>", None, f"{root} is not a directory", 0)])
    found: dict[str, Path] = {}
    clashes = []
    for name in TABLES:
        candidates = [root / f"{name}.{ext}" for ext in ("parquet", "csv") if (root / f"{name}.{ext}").exists()]
        if len(candidates) > 1:
            clashes.append(Violation(name, None, "table given twice (both .parquet and .csv)", 0, tuple(map(str, candidates))))
        elif candidates:
            found[name] = candidates[0]
    if clashes:
        raise ContractError(clashes)
    return found


def load_data(
    path: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    *,
    current_year: int | None = None,
    tables: Iterable[str] | None = None,
) -> BrandData:
    """Read and validate a data directory of `<table>.parquet|csv` files."""
    files = table_files(path)
    wanted = set(tables) if tables is not None else set(TABLES)
    frames = {name: _read_table(p) for name, p in files.items() if name in wanted | set(REQUIRED_TABLES)}
    return from_frames(frames, timezone, current_year=current_year, source=str(path))


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
