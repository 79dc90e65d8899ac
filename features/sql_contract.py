"""Contract validation in DuckDB SQL, straight over a typed Parquet file: the table never enters pandas.

`koc ingest` and `koc validate` (`features.store`) send every Parquet file (or folder of
part files) whose contract columns already have their canonical physical types through here: ids and text as strings (or integer ids),
timestamps as TIMESTAMP (naive business time) or TIMESTAMP WITH TIME ZONE, dates as DATE
or TIMESTAMP, numbers as integers or floats, booleans as BOOLEAN. That is how a warehouse
export and `koc simulate` write them. Each rule is one condition in a DuckDB query over the
file, which returns per rule the count and the first few row numbers; only those example rows
are read back (with pyarrow, as `pd.read_parquet` would read them) to show their values. The
table then goes from the file into the store in one `CREATE TABLE ... AS SELECT`.

The rules, counts, messages, examples, notes and stored values are those of the pandas path
in `features.contract` (a fuzz test holds them equal on random typed files). That path still
reads CSV files and any column that needs parsing: text timestamps, numbers written as text,
floats or decimals as ids, nested or exotic columns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.contract import (
    CANONICAL_DTYPES,
    EVENT_TYPES,
    MISSING_COLUMN,
    OTHER_EVENT,
    PARSE_RULES,
    ROW,
    Col,
    Locate,
    TableSpec,
    TimeBounds,
    Violation,
    _examples,
    _literal,
    _may_be_left_out,
    _q,
    _row_label,
    _shorten,
    _sql_rules,
    _value_rule_texts,
    duplicate_rows_query,
    duplicates_note,
    row_hashes,
    unknown_events_note,
)

logger = logging.getLogger(__name__)

INTEGERS = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"})
# the physical types each column kind is read from in SQL; anything else goes to the pandas path
NATIVE: dict[str, frozenset[str]] = {
    "id": INTEGERS | {"VARCHAR"},
    "str": INTEGERS | {"VARCHAR"},
    "ts": frozenset({"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE"}),
    "date": frozenset({"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE"}),
    "int": INTEGERS,
    "nullable_int": INTEGERS,
    "float": INTEGERS | {"FLOAT", "DOUBLE"},
    "bool": frozenset({"BOOLEAN"}),
}
ALL_NULL = '"NULL"'  # a column of nulls only, as pyarrow writes an object column without a value
SQL_TYPES = {
    "id": "VARCHAR", "str": "VARCHAR", "ts": "TIMESTAMP", "date": "TIMESTAMP",
    "int": "BIGINT", "nullable_int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN",
}  # fmt: skip
# what a file may hold that SQL reads otherwise than pandas, found while checking: the table then
# goes through the pandas path (never out of memory or I/O errors: those are the run's)
UNREADABLE = (
    duckdb.ConversionException, duckdb.BinderException, duckdb.InvalidInputException, duckdb.NotImplementedException,
    pa.ArrowException, ValueError, OverflowError,
)  # fmt: skip
EXACT_FLOAT = 2**53  # the pandas path reads integers through float64: beyond this they are not exact
CHECKED_DTYPES = {"int": "Int64", "bool": "boolean"}  # dtypes of the rule checks' frame where not canonical yet
KNOWN_EVENTS = ", ".join(_literal(v) for v in (*EVENT_TYPES, OTHER_EVENT))  # as an SQL list
FINGERPRINT_ROWS = 1_000_000  # rows hashed per chunk when fingerprinting a stored table


@dataclass(frozen=True)
class ParquetTable:
    """A Parquet file, or a folder of part files, the SQL path can check: columns, DuckDB types, rows.

    A folder (`events.parquet/part-0.parquet`, … as Spark writes it) is read in the order
    `pd.read_parquet` reads it, its files sorted by name; row numbers run on across files.
    """

    path: Path
    columns: tuple[str, ...]
    types: Mapping[str, str]
    rows: int
    files: tuple[Path, ...] = ()  # the part files of a folder, in reading order
    offsets: tuple[int, ...] = ()  # the row number each part file starts at
    float_ints: tuple[str, ...] = ()  # integer columns `pd.read_parquet` reads as float64 (they hold nulls)

    @property
    def source(self) -> str:
        """The rows as SQL, with `file_row_number` the row's number in the whole table."""
        if not self.files:
            return f"read_parquet({_literal(str(self.path))}, file_row_number = true)"
        names = ", ".join(_literal(str(f)) for f in self.files)
        start = " ".join(f"WHEN {_literal(str(f))} THEN {o}" for f, o in zip(self.files, self.offsets, strict=True))
        return (
            f"(SELECT * EXCLUDE (filename, file_row_number), file_row_number + CASE filename {start} END AS file_row_number"
            f" FROM read_parquet([{names}], filename = true, file_row_number = true))"
        )


def _part_files(folder: Path) -> list[Path] | None:
    """The Parquet files of a table folder in pyarrow's reading order, or None when the SQL path
    should not read it: subfolders (hive partitions add columns), files that are not Parquet."""
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: str(p)):
        if entry.name.startswith((".", "_")):  # _SUCCESS, .crc: pyarrow skips them too
            continue
        if entry.is_dir() or entry.suffix != ".parquet":
            return None
        found.append(entry)
    return found or None


def plan(spec: TableSpec, path: Path) -> ParquetTable | None:
    """The file (or folder of part files) as a `ParquetTable` when every contract column in it has a
    native type, else None."""
    if path.suffix != ".parquet" or any(c in str(path) for c in "*?[{"):
        return None  # DuckDB would read a path with glob characters as a pattern
    files = _part_files(path) if path.is_dir() else [path]
    if files is None:
        return None
    try:
        parquets = [pq.ParquetFile(f) for f in files]
        metadata, schemas = [p.metadata for p in parquets], [p.schema_arrow for p in parquets]
        with duckdb.connect() as con:
            described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_literal(str(files[0]))})").fetchall()
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the pandas path's reader
        return None
    if any(not schema.equals(schemas[0]) for schema in schemas):
        return None  # parts that disagree: the pandas path reports what pyarrow makes of them
    names = tuple(schemas[0].names)
    types = {row[0]: row[1] for row in described}
    reserved = {"file_row_number", "filename", ROW}
    if len(set(names)) != len(names) or tuple(types) != names or {n.lower() for n in names} & reserved:
        return None  # repeated or reserved column names: the pandas path knows how to report them
    if any(isinstance(i, str) for i in (schemas[0].pandas_metadata or {}).get("index_columns", [])):
        return None  # a stored pandas index: pd.read_parquet makes it the index, not a column
    if any(t.endswith("]") or t.startswith(("STRUCT", "MAP", "UNION")) for t in types.values()):
        return None  # nested columns: the pandas path compares them by their text for duplicates
    for col in spec.columns:
        if col.name in types and types[col.name] not in NATIVE[col.kind] | {ALL_NULL}:
            return None
    if any(_float_in_pandas(metadata, schemas[0], n, lossy=True) for n, t in types.items() if t in INTEGERS):
        return None  # pandas reads these integers as float64 and loses digits: its answer, not SQL's
    floats = tuple(n for n, t in types.items() if t in INTEGERS and _float_in_pandas(metadata, schemas[0], n, lossy=False))
    if not path.is_dir():
        return ParquetTable(path, names, types, metadata[0].num_rows, float_ints=floats)
    sizes = [m.num_rows for m in metadata]
    offsets = tuple(int(v) for v in np.cumsum([0, *sizes[:-1]]))
    return ParquetTable(path, names, types, sum(sizes), tuple(files), offsets, float_ints=floats)


def _float_in_pandas(metadata: list[pq.FileMetaData], schema, name: str, lossy: bool) -> bool:
    """Whether `pd.read_parquet` reads integer column `name` as float64: it holds a null and no
    pandas metadata asks for a nullable integer dtype. With `lossy`, also a value of 2^53 or more
    (float64 is not exact there), by the row groups' statistics (no statistics: assumed so)."""
    described = {c.get("name"): c for c in (schema.pandas_metadata or {}).get("columns", [])}
    if str(described.get(name, {}).get("numpy_type", "")).startswith(("Int", "UInt")):
        return False
    index = schema.names.index(name)
    nulls = big = False
    for meta in metadata:
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(index).statistics
            if stats is None or not stats.has_null_count:
                return True  # unknown: with `lossy` the table goes to the pandas path
            nulls |= stats.null_count > 0
            if stats.has_min_max:
                big |= max(abs(int(stats.min)), abs(int(stats.max))) >= EXACT_FLOAT
    return nulls and (big or not lossy)


def _parsed(col: Col, table: ParquetTable, timezone: str) -> tuple[str, str | None]:
    """(SQL value in the canonical type, SQL condition of a value the pandas path cannot parse, or None)."""
    c, kind = f"s.{_q(col.name)}", table.types.get(col.name)
    if kind is None:  # left out: the contract's default, else nulls
        default = "NULL" if col.default is None else str(col.default).upper() if col.kind == "bool" else _literal(str(col.default))
        return f"CAST({default} AS {SQL_TYPES[col.kind]})", None
    if col.kind in ("ts", "date"):
        if kind == "TIMESTAMP WITH TIME ZONE":
            return f"timezone({_literal(timezone)}, {c})", None
        return f"CAST({c} AS TIMESTAMP)", None
    if col.kind in ("int", "nullable_int"):
        bad = f"abs(CAST({c} AS DOUBLE)) >= {EXACT_FLOAT}"
        return f"CASE WHEN {bad} THEN NULL ELSE CAST({c} AS BIGINT) END", bad
    if col.kind == "float":
        bad = f"isinf(CAST({c} AS DOUBLE))"
        return f"CASE WHEN isnan(CAST({c} AS DOUBLE)) OR {bad} THEN NULL ELSE CAST({c} AS DOUBLE) END", bad
    return f"CAST({c} AS {SQL_TYPES[col.kind]})", None


def _value_conditions(col: Col, value: str, floor_ts: pd.Timestamp, latest_ts: pd.Timestamp) -> list[tuple[str, str]]:
    """The single-value rules of `features.contract._value_rules` as SQL conditions, in its order."""
    texts = _value_rule_texts(col, floor_ts, latest_ts)
    if col.kind == "id":
        return [(texts[0], rf"regexp_matches({value}, '^[\t\n\x0b\x0c\r\x1c-\x1f\x85\pZ]|[\t\n\x0b\x0c\r\x1c-\x1f\x85\pZ]$')")]
    if col.kind not in ("ts", "date"):
        return []
    floor = f"TIMESTAMP '{floor_ts:%Y-%m-%d %H:%M:%S.%f}'"
    latest = f"TIMESTAMP '{latest_ts:%Y-%m-%d %H:%M:%S.%f}'"
    found = [(texts[-2], f"{value} < {floor}"), (texts[-1], f"{value} > {latest}")]
    if col.kind == "date":
        found.insert(0, (texts[0], f"{value} <> date_trunc('day', {value})"))
    return found


def example_rows(table: ParquetTable, rows: list[int]) -> pd.DataFrame:
    """The table's rows at these positions, every column, read as `pd.read_parquet` reads them."""
    parts, start = [], 0
    for file in table.files or (table.path,):
        parquet = pq.ParquetFile(file)
        for group in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            inside = [r for r in rows if start <= r < start + size]
            if inside:
                frame = parquet.read_row_group(group).to_pandas()
                parts.append(frame.iloc[[r - start for r in inside]].set_axis(inside))
            start += size
    if not parts:
        return pd.DataFrame()
    # one row group (or part) may hold none of a column's nulls; the whole file read holds them
    return pd.concat(parts).astype({c: "float64" for c in table.float_ints})


class TableStats(NamedTuple):
    """A valid table's rows, the range of its time column and its latest timestamp of any column."""

    rows: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    latest: pd.Timestamp | None


def table_stats(con: duckdb.DuckDBPyConnection, spec: TableSpec, view: str) -> TableStats:
    """Rows, first and last of the table's time column (`as_of` for labels and truth), latest timestamp."""
    time_col = spec.time_column or "as_of"
    stamps = [c.name for c in spec.columns if c.kind == "ts"]
    latest = f"greatest({', '.join(f'max({_q(c)})' for c in stamps)})" if stamps else "NULL"
    rows, first, last, end = con.execute(f"SELECT count(*), min({_q(time_col)}), max({_q(time_col)}), {latest} FROM {view}").fetchall()[0]
    stamp = lambda v: None if v is None else pd.Timestamp(v).as_unit("us")  # noqa: E731
    return TableStats(int(rows), stamp(first), stamp(last), stamp(end))


class SqlChecker:
    """Checks contract tables from Parquet files on one DuckDB connection and stores them there.

    With `store=False` (`koc validate`) a valid table is not stored: `stats` keeps its rows and
    time range instead.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, timezone: str, bounds: TimeBounds, current_year: int, store: bool = True) -> None:
        self.con, self.timezone, self.bounds, self.current_year, self.store = con, timezone, bounds, current_year, store
        self.fingerprints: dict[str, dict[str, object]] = {}
        self.stats: dict[str, TableStats] = {}

    def check(
        self, spec: TableSpec, table: ParquetTable, locate: Locate, with_members: bool, write: bool
    ) -> tuple[list[Violation], list[Violation], list[str], list[str]] | None:
        """(problems, rule violations, notes, late notes) of one table, as `contract._validate` collects them.

        Members' ids go into the temp table `_member_ids` for the other tables' reference
        checks; with `write` and no violation the canonical table is created in the store.
        None when the file holds what SQL cannot read as pandas does (a date past year 9999, a
        time zone DuckDB's ICU lacks): the table then goes through the pandas path.
        """
        try:
            found = self._check(spec, table, locate, with_members)
        except UNREADABLE as err:
            for view in ("t", "_parsed"):
                self.con.execute(f"DROP VIEW IF EXISTS {view}")
            if spec.name == "members":
                self.con.execute("DROP TABLE IF EXISTS _member_ids")
            logger.warning("%s: checked in pandas instead of SQL (%s: %s)", spec.name, type(err).__name__, _shorten(str(err), 200))
            return None
        problems, broken, notes = found
        late: list[str] = []
        if write and not problems and not broken:
            late = self._unknown_events(spec)
            if self.store:
                self._write(spec)
            else:
                self.stats[spec.name] = table_stats(self.con, spec, "t")
        self.con.execute("DROP VIEW IF EXISTS t")
        self.con.execute("DROP VIEW IF EXISTS _parsed")
        return problems, broken, notes, late

    def _check(
        self, spec: TableSpec, table: ParquetTable, locate: Locate, with_members: bool
    ) -> tuple[list[Violation], list[Violation], list[str]]:
        """The checks of `check`, leaving the canonical rows in the temp view `t`."""
        locate = locate or _row_label
        con = self.con
        missing = [c.name for c in spec.columns if not _may_be_left_out(c) and c.name not in table.types]
        if missing:
            present = _shorten(", ".join(table.columns), 200)
            return [Violation(spec.name, n, MISSING_COLUMN, table.rows, (f"columns present: {present}",)) for n in missing], [], []

        parsed = {col.name: _parsed(col, table, self.timezone) for col in spec.columns}
        values = ", ".join(f"{value} AS {_q(name)}" for name, (value, _) in parsed.items())
        bad = ", ".join(f"coalesce({cond}, false) AS {_q('__unparsed_' + name)}" for name, (_, cond) in parsed.items() if cond)
        con.execute(f"CREATE OR REPLACE TEMP VIEW _parsed AS SELECT s.file_row_number AS {ROW}, {values}{', ' + bad if bad else ''} FROM {table.source} s")

        # problems: values that cannot be parsed, then the single-value rules, column by column (every row)
        conditions: list[tuple[str, str, str]] = []
        latest = self.bounds.latest(self.timezone)  # once per table, as the pandas path takes it
        for col in spec.columns:
            cond = parsed[col.name][1]
            if col.name not in table.types:
                continue
            if cond:
                conditions.append((col.name, PARSE_RULES[col.kind], f"{_q('__unparsed_' + col.name)}"))
            conditions += [(col.name, text, f) for text, f in _value_conditions(col, _q(col.name), self.bounds.floor, latest)]
        problems = self._violations(spec, table, conditions, "_parsed", "", locate)

        notes: list[str] = []
        dups = 0 if spec.name == "truth" else self._mark_duplicates(table)
        if dups:
            notes.append(duplicates_note(spec.name, dups))
        kept = f" WHERE {ROW} NOT IN (SELECT {ROW} FROM _dups)" if dups else ""
        normalised = ", ".join(
            f"date_trunc('day', {_q(c.name)}) AS {_q(c.name)}" if c.kind == "date" else _q(c.name) for c in spec.columns
        )
        flags = "".join(f", {_q('__unparsed_' + n)}" for n, (_, cond) in parsed.items() if cond)
        con.execute(f"CREATE OR REPLACE TEMP VIEW t AS SELECT {ROW}, {normalised}{flags} FROM _parsed{kept}")
        if spec.name == "members":
            con.execute("CREATE OR REPLACE TEMP TABLE _member_ids AS SELECT DISTINCT member_id FROM t")

        unparsed = [n for n, (_, cond) in parsed.items() if cond]
        rules, joins = _sql_rules(spec, self.current_year, unparsed, with_members)
        broken = self._violations(spec, table, [(r.column, r.text, r.condition) for r in rules], "t", " ".join(joins), locate)

        return problems, broken, notes

    def _violations(
        self, spec: TableSpec, table: ParquetTable, conditions: list[tuple[str, str, str]], view: str, joins: str, locate: Locate, limit: int = 3
    ) -> list[Violation]:
        """Count each condition's rows on `view` and show the first few, as the pandas path does.

        The examples of `_parsed` (values that do not parse or break a single-value rule) show
        the file's row as written; those of `t` (the rule checks) show the canonical row.
        """
        if not conditions:
            return []
        selects = ", ".join(f"count(*) FILTER (WHERE {c}), min(t.{ROW}, {limit}) FILTER (WHERE {c})" for _, _, c in conditions)
        (found,) = self.con.execute(f"SELECT {selects} FROM {view} t {joins}").fetchall()
        hits = [(i, int(found[2 * i]), sorted(found[2 * i + 1] or [])) for i in range(len(conditions)) if found[2 * i]]
        if not hits:
            return []
        wanted = sorted({r for _, _, shown in hits for r in shown})
        if view == "_parsed":
            rows = example_rows(table, wanted)
        else:  # the dtypes of the pandas path's frame before `_finalise`: nullable ints and bools
            columns = ", ".join(_q(c.name) for c in spec.columns)
            picked = self.con.execute(f"SELECT {ROW}, {columns} FROM t WHERE {ROW} IN ({', '.join(map(str, wanted))})").df()
            dtypes = {c.name: CHECKED_DTYPES.get(c.kind, CANONICAL_DTYPES[c.kind]) for c in spec.columns}
            rows = picked.set_index(ROW).astype(dtypes)
        return [
            Violation(spec.name, conditions[i][0], conditions[i][1], count, _examples(rows, pd.Index(shown), limit, column=conditions[i][0], locate=locate))
            for i, count, shown in hits
        ]

    def _mark_duplicates(self, table: ParquetTable) -> int:
        """Rows repeating an earlier row exactly (every column as written) into `_dups`; how many."""
        keys = ", ".join(
            f"CASE WHEN NOT isnan(s.{_q(n)}) THEN s.{_q(n)} END" if table.types[n] in ("FLOAT", "DOUBLE") else f"s.{_q(n)}"
            for n in table.columns
        )  # NaN is null to the pandas path, and so to its duplicate check
        query = duplicate_rows_query(f"{table.source} s", keys, "s.file_row_number")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE _dups AS {query}")
        return int(self.con.execute("SELECT count(*) FROM _dups").fetchall()[0][0])

    def _unknown_events(self, spec: TableSpec) -> list[str]:
        """The note `contract._count_unknown_events_as_other` gives, from SQL."""
        if spec.name != "events":
            return []
        count, values = self.con.execute(
            f"SELECT count(*), list(DISTINCT event_type ORDER BY event_type)[:5] FROM t WHERE event_type NOT IN ({KNOWN_EVENTS})"
        ).fetchall()[0]
        return [unknown_events_note(int(count), list(values))] if count else []

    def _write(self, spec: TableSpec) -> None:
        """The canonical table into the store, in file order, with the contract's defaults."""
        columns = []
        for col in spec.columns:
            c = _q(col.name)
            if col.kind == "bool":
                c = f"coalesce({c}, {'true' if col.default else 'false'}) AS {c}"
            elif spec.name == "events" and col.name == "event_type":
                c = f"CASE WHEN {c} IN ({KNOWN_EVENTS}) THEN {c} ELSE {_literal(OTHER_EVENT)} END AS {c}"
            columns.append(c)
        # in file order, as the pandas path keeps it (and the fingerprint hashes it): without the
        # ORDER BY, DuckDB stored the 1M world's events out of order after the checks
        self.con.execute(f"CREATE TABLE {_q(spec.name)} AS SELECT {', '.join(columns)} FROM t ORDER BY {ROW}")
        self.fingerprints[spec.name] = self.fingerprint(spec.name)
        logger.info("ingested %s in SQL: %d rows", spec.name, self.fingerprints[spec.name]["rows"])

    def fingerprint(self, name: str) -> dict[str, object]:
        """`BrandData.fingerprint` of a stored table, hashed in chunks (the same bytes, a bounded memory)."""
        from features.store import _canonical

        digest, rows = hashlib.sha256(), 0
        cursor = self.con.execute(f"SELECT * FROM {_q(name)}")
        while True:
            chunk = cursor.fetch_df_chunk(FINGERPRINT_ROWS // 2048)
            if chunk.empty:
                break
            digest.update(row_hashes(_canonical(chunk, name)))
            rows += len(chunk)
        return {"rows": rows, "sha256": digest.hexdigest()}

