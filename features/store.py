"""A brand's validated data in one DuckDB database file: ingest once, read on disk afterwards.

`ingest` validates a data directory with the contract (`features.contract`, the same rules
and messages as `load_data`), one table at a time, and writes each canonical table into a
DuckDB database as soon as it is validated, so only one table is ever in memory. The file
appears atomically (temporary file + rename) and only when the whole contract holds.

`open_store` returns a `StoredBrandData`: a `BrandData` whose tables stay in the database.
The feature pipeline (`features.build`) runs its SQL on them directly; a pandas frame is
read only when some consumer asks for `data.tables[name]` (and then kept).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from features.contract import (
    CANONICAL_DTYPES,
    DEFAULT_TIME_FLOOR,
    DEFAULT_TIMEZONE,
    TABLES,
    BrandData,
    ContractError,
    TableSpec,
    Violation,
    _validate,
    check_timezone,
    load_sources,
    table_files,
    table_fingerprint,
)
from features.io import atomic_path

if TYPE_CHECKING:
    from features.build import EngineConfig
    from features.sql_contract import SqlChecker, TableStats

logger = logging.getLogger(__name__)

META_TABLE = "_kocrank_meta"
STORE_FORMAT = 1


def _check_into(
    con: duckdb.DuckDBPyConnection,
    data_dir: str | Path,
    timezone: str,
    *,
    current_year: int | None,
    time_floor: pd.Timestamp | str,
    export_time: pd.Timestamp | str | None,
    engine: EngineConfig | None,
    in_sql: bool,
    store: bool,
) -> tuple[BrandData, SqlChecker]:
    """Validate `data_dir` on `con`; with `store`, each valid table is created in `con`'s database,
    else only its row count and time range are kept (`SqlChecker.stats`). Raises `ContractError`."""
    from features.build import EngineConfig
    from features.sql_contract import SqlChecker, plan, table_stats

    check_timezone(timezone)
    sources, locators, bounds = load_sources(data_dir, timezone, time_floor=time_floor, export_time=export_time)
    files = table_files(data_dir)
    plans = {name: plan(TABLES[name], files[name]) for name in sources if in_sql and name in TABLES}
    checker = SqlChecker(con, timezone, bounds, current_year or dt.date.today().year, store=store)
    _limit(con, engine or EngineConfig())

    def check(spec: TableSpec, with_members: bool, write: bool):
        table = plans.get(spec.name)
        return None if table is None else checker.check(spec, table, locators.get(spec.name), with_members, write)

    def sink(name: str, df: pd.DataFrame) -> None:
        con.register("_frame", df)
        try:
            if store:
                checker.fingerprints[name] = table_fingerprint(df)
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _frame')
                logger.info("ingested %s: %d rows", name, len(df))
            else:
                checker.stats[name] = table_stats(con, TABLES[name], "_frame")
        finally:
            con.unregister("_frame")

    checked = _validate(
        sources, timezone, current_year=current_year, source=str(data_dir), bounds=bounds,
        locators=locators, sink=sink, con=con, in_sql=check,
    )
    return checked, checker


def ingest(
    data_dir: str | Path,
    out: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    *,
    current_year: int | None = None,
    time_floor: pd.Timestamp | str = DEFAULT_TIME_FLOOR,
    export_time: pd.Timestamp | str | None = None,
    engine: EngineConfig | None = None,
    in_sql: bool = True,
) -> StoredBrandData:
    """Validate `data_dir` and write its canonical tables to the DuckDB file `out`.

    Raises `ContractError` exactly as `load_data` does; `out` is then left as it was.
    Typed Parquet files are checked and copied in DuckDB SQL (`features.sql_contract`), so
    they never enter pandas, under `engine`'s threads, memory limit and spill folder; CSV
    files and columns that need parsing go through pandas one table at a time. `in_sql=False`
    sends every table through pandas.
    """
    target = Path(out)
    with atomic_path(target) as tmp:
        tmp.unlink()  # DuckDB creates the file itself (an empty file is not a database)
        con = duckdb.connect(str(tmp))
        try:
            checked, checker = _check_into(
                con, data_dir, timezone, current_year=current_year, time_floor=time_floor,
                export_time=export_time, engine=engine, in_sql=in_sql, store=True,
            )
            meta = {
                "format": STORE_FORMAT,
                "timezone": timezone,
                "absent": sorted(checked.absent),
                "warnings": list(checked.warnings),
                "source": str(data_dir),
                "fingerprint": {k: v for k, v in checker.fingerprints.items() if k not in checked.absent},
            }
            con.execute(f"CREATE TABLE {META_TABLE} AS SELECT ? AS meta", [json.dumps(meta)])
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return open_store(target)


@dataclass(frozen=True)
class CheckedFiles:
    """What `check_files` found in a valid data directory: per table rows and times, and the notes."""

    timezone: str
    absent: frozenset[str]
    warnings: tuple[str, ...]
    stats: Mapping[str, TableStats]

    @property
    def members(self) -> int:
        return self.stats["members"].rows

    @property
    def data_end(self) -> pd.Timestamp:
        """The latest timestamp in any behavioural table, as `BrandData.data_end` gives it."""
        latest = [s.latest for s in self.stats.values() if s.latest is not None]
        if not latest:
            raise ContractError([Violation("members", "joined_at", "the data holds no timestamps", 0)])
        return max(latest)

    def summary(self) -> pd.DataFrame:
        """Rows and time range per table, as `contract.summary` gives them."""
        return pd.DataFrame(
            [
                {"table": name, "status": "absent" if name in self.absent else "ok", "rows": s.rows, "from": s.first, "to": s.last}
                for name, s in self.stats.items()
            ]
        )


def check_files(
    data_dir: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    *,
    current_year: int | None = None,
    time_floor: pd.Timestamp | str = DEFAULT_TIME_FLOOR,
    export_time: pd.Timestamp | str | None = None,
    engine: EngineConfig | None = None,
) -> CheckedFiles:
    """`koc validate`: the checks of `ingest` (typed Parquet in SQL), keeping no table.

    Raises `ContractError` exactly as `ingest` and `load_data` do; otherwise returns each
    table's row count and time range, the data end and the notes. A store written by `koc
    ingest` was checked then: its summary is read from it.
    """
    from features.sql_contract import table_stats

    if is_store(data_dir):
        stored = open_store(data_dir)
        with duckdb.connect(stored.path, read_only=True) as con:
            stats = {name: table_stats(con, spec, f'"{name}"') for name, spec in TABLES.items()}
        return CheckedFiles(stored.timezone, stored.absent, stored.warnings, stats)
    con = duckdb.connect(":memory:")
    try:
        checked, checker = _check_into(
            con, data_dir, timezone, current_year=current_year, time_floor=time_floor,
            export_time=export_time, engine=engine, in_sql=True, store=False,
        )
    finally:
        con.close()
    stats = {name: checker.stats[name] for name in TABLES}
    return CheckedFiles(timezone, checked.absent, checked.warnings, stats)


def _limit(con: duckdb.DuckDBPyConnection, engine: EngineConfig) -> None:
    """`engine`'s threads, memory limit and spill folder; rows keep their file order (the default)."""
    from features.build import configure

    configure(con, engine)
    con.execute("SET preserve_insertion_order = true")


def _canonical(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Rows of `table` read from the database, in the contract's canonical dtypes.

    A store written before the contract gained an optional column lacks it: it reads as missing
    values, as an absent optional column of a file does. A required column missing means the store
    is not one `koc ingest` wrote for this contract.
    """
    columns = TABLES[table].columns
    lacking = [c for c in columns if c.name not in frame.columns]
    required = [c.name for c in lacking if not c.optional]
    if required:
        raise ValueError(
            f"table {table}: the store lacks required column(s) {required}; run `koc ingest` again to rebuild it"
        )
    if lacking:
        frame = frame.assign(**{c.name: pd.Series(index=frame.index, dtype=CANONICAL_DTYPES[c.kind]) for c in lacking})
    return frame.astype({c.name: CANONICAL_DTYPES[c.kind] for c in columns})


class _StoredTables(Mapping[str, pd.DataFrame]):
    """The contract tables of a store, each read into pandas on first access and then kept."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._read: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in TABLES:
            raise KeyError(name)
        if name not in self._read:
            with duckdb.connect(self._path, read_only=True) as con:
                frame = con.execute(f'SELECT * FROM "{name}"').df()
            self._read[name] = _canonical(frame, name)
        return self._read[name]

    def __iter__(self) -> Iterator[str]:
        return iter(TABLES)

    def __len__(self) -> int:
        return len(TABLES)


@dataclass(frozen=True)
class StoredBrandData(BrandData):
    """`BrandData` whose tables live in a DuckDB database written by `ingest` (`path`)."""

    path: str = ""
    stored_fingerprint: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    @property
    def data_end(self) -> pd.Timestamp:
        """The latest timestamp observed in any behavioural table, from the database."""
        parts = [
            f'SELECT MAX("{col.name}") AS t FROM "{name}"'
            for name, spec in TABLES.items()
            for col in spec.columns
            if col.kind == "ts"
        ]
        with duckdb.connect(self.path, read_only=True) as con:
            (latest,) = con.execute(f"SELECT MAX(t) FROM ({' UNION ALL '.join(parts)})").fetchone()
        if latest is None:
            raise ContractError([Violation("members", "joined_at", "the data holds no timestamps", 0)])
        return pd.Timestamp(latest).as_unit("us")

    def rows_at(self, table: str, as_of: pd.Timestamp) -> pd.DataFrame:
        """The rows of `table` at one `as_of`, queried from the database (the simulator's `truth`
        holds 14.6M rows at 1M members: reading it whole for one cutoff took 2 GB)."""
        if table in self.tables._read:
            return super().rows_at(table, as_of)
        if table not in TABLES or "as_of" not in {c.name for c in TABLES[table].columns}:
            raise KeyError(f"{table} has no as_of column")
        with duckdb.connect(self.path, read_only=True) as con:
            frame = con.execute(f'SELECT * FROM "{table}" WHERE as_of = ?', [pd.Timestamp(as_of).to_pydatetime()]).df()
        return _canonical(frame, table).reset_index(drop=True)

    @staticmethod
    def _check_column(table: str, column: str) -> None:
        """A KeyError unless `table.column` is in the contract (names go into SQL text)."""
        if table not in TABLES or column not in {c.name for c in TABLES[table].columns}:
            raise KeyError(f"{table}.{column}")

    def rows_and_first(self, table: str, column: str) -> tuple[int, pd.Timestamp | None]:
        """(rows of `table`, earliest `column`), from the database: the table is not read into pandas."""
        self._check_column(table, column)
        with duckdb.connect(self.path, read_only=True) as con:
            rows, first = con.execute(f'SELECT count(*), MIN("{column}") FROM "{table}"').fetchone()
        return int(rows), None if first is None else pd.Timestamp(first).as_unit("us")

    def latest(self, table: str, column: str) -> pd.Timestamp | None:
        """The latest `column` of `table`, from the database (posts hold 9M rows at 1M members)."""
        if table in self.tables._read:
            return super().latest(table, column)
        self._check_column(table, column)
        with duckdb.connect(self.path, read_only=True) as con:
            (last,) = con.execute(f'SELECT MAX("{column}") FROM "{table}"').fetchone()
        return None if last is None else pd.Timestamp(last).as_unit("us")

    def fingerprint(self) -> dict[str, dict[str, object]]:
        """Computed once at ingest (the same values `BrandData.fingerprint` gives in memory)."""
        return {name: dict(value) for name, value in self.stored_fingerprint.items()}

    def row_counts(self, names: Iterable[str] | None = None) -> dict[str, int]:
        with duckdb.connect(self.path, read_only=True) as con:
            return {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in (names or TABLES)}


def is_store(path: str | Path) -> bool:
    """Whether `path` is a DuckDB database file (by suffix; directories are data dirs)."""
    return Path(path).suffix == ".duckdb" and not Path(path).is_dir()


def open_store(path: str | Path) -> StoredBrandData:
    """The brand data in a database written by `ingest` (read only; nothing is loaded yet)."""
    target = Path(path)
    if not target.is_file():
        raise ContractError([Violation("<store>", None, f"{target} is not a file (run `koc ingest` first)", 0)])
    try:
        with duckdb.connect(str(target), read_only=True) as con:
            (text,) = con.execute(f"SELECT meta FROM {META_TABLE}").fetchone()
    except duckdb.Error as err:
        rule = f"not a kocrank store written by `koc ingest` ({type(err).__name__}: {err})"
        raise ContractError([Violation("<store>", None, rule, 0, (str(target),))]) from err
    meta = json.loads(text)
    if meta.get("format") != STORE_FORMAT:
        rule = f"store format {meta.get('format')} is not {STORE_FORMAT}: run `koc ingest` again"
        raise ContractError([Violation("<store>", None, rule, 0, (str(target),))])
    return StoredBrandData(
        tables=_StoredTables(str(target)),
        absent=frozenset(meta["absent"]),
        timezone=meta["timezone"],
        source=meta["source"],
        warnings=tuple(meta["warnings"]),
        path=str(target),
        stored_fingerprint=meta["fingerprint"],
    )
