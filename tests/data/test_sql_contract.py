"""Contract validation in SQL (`koc ingest` over typed Parquet) gives what the pandas path gives.

Hypothesis draws small worlds of typed Parquet files near the contract's edges: padded, empty
and integer ids, references that exist or not, timestamps naive and with an offset on both
sides of the time floor and the export time, dates with a time of day, integers beyond 2^53,
NaN and infinite amounts, null booleans, unknown event types, exact duplicate rows and left-out
columns; some tables are a folder of two part files, as Spark writes them. `ingest` checks
every such file in DuckDB SQL without reading it into pandas; `load_data` reads it into
pandas. Both must raise the same `ContractError`, to the last example, or return the same
tables, notes and fingerprints.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.contract import (
    EVENT_TYPES,
    GENDERS,
    PLATFORMS,
    PROGRAM_STATUSES,
    TABLES,
    Col,
    ContractError,
    load_data,
    summary,
)
from features.sql_contract import plan
from features.store import check_files, ingest, open_store

pytestmark = pytest.mark.slow

EXPORT = "2030-01-01"
IDS = ["A1", "B2", "C3", " A1", "B2\u3000", ""]
WORDS = [*PLATFORMS, *PROGRAM_STATUSES, *GENDERS, *EVENT_TYPES[:3], "zzz"]
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
naive = st.datetimes(min_value=dt.datetime(1999, 12, 31), max_value=dt.datetime(2030, 1, 3))
midnights = st.dates(min_value=dt.date(1999, 12, 31), max_value=dt.date(2030, 1, 3)).map(
    lambda d: dt.datetime.combine(d, dt.time())
)


def _physical(col: Col, clean: bool) -> dict[str, st.SearchStrategy]:
    """Per physical type a column of this kind may have in the file: the strategy of one value.

    `clean` keeps to values the contract accepts (ids and references from the members' pool,
    allowed words, in-range numbers, times inside the bounds), so whole worlds load.
    """
    kind, name = col.kind, col.name
    if kind == "id" and name.endswith("_id"):
        if clean:
            return {"str": st.sampled_from(IDS[:3])}
        return {"str": st.sampled_from(IDS), "Int64": st.sampled_from([1, 2, 3])}
    if kind in ("id", "str"):
        return {"str": st.sampled_from(list(col.isin) if clean and col.isin else WORDS)}
    if kind in ("ts", "date"):
        times = st.one_of(naive, midnights) if kind == "date" and not clean else midnights if kind == "date" else naive
        if clean:
            times = times.filter(lambda t: dt.datetime(2000, 1, 2) <= t <= dt.datetime(2029, 12, 31))
        return {"naive": times, "aware": times.map(lambda t: t.replace(tzinfo=SHANGHAI)), "date": times.map(lambda t: t.date())}
    if kind in ("int", "nullable_int"):
        valid = [v for v in (0, 1, 2, 6, 1990) if (col.ge is None or v >= col.ge) and (col.le is None or v <= col.le)]
        valid = [v for v in valid if col.isin is None or str(v) in col.isin]
        return {"Int64": st.sampled_from(valid if clean else [-1, 0, 1, 2, 6, 7, 1990, 2031, 2**53 + 1])}
    if kind == "float":
        valid = [v for v in (0.0, 0.5, 0.75, 99.9) if col.le is None or v <= col.le]
        return {"float64": st.sampled_from(valid + [float("nan")] if clean else [0.0, 0.5, 99.9, -1.0, float("nan"), float("inf")])}
    return {"boolean": st.booleans()}


@st.composite
def typed_table(draw, name: str, clean: bool) -> pd.DataFrame:
    spec = TABLES[name]
    n = 3 if clean and name == "members" else draw(st.integers(min_value=0, max_value=5))
    columns = {}
    for col in spec.columns:
        if draw(st.integers(0, 11)) == 11 and not (clean and not (col.optional or col.nullable)):
            continue  # now and then a column is left out (a missing required one is an error)
        types = _physical(col, clean)
        physical = draw(st.sampled_from(sorted(types)))
        may_be_null = col.nullable or not clean
        cells = [draw(st.one_of(st.none(), types[physical]) if may_be_null else types[physical]) for _ in range(n)]
        if clean and col.unique:  # distinct ids: members' from the pool, others numbered
            cells = (IDS[:3] if name == "members" else [f"{name}{i}" for i in range(n)])[:n]
            physical = "str"
        if physical == "naive":
            columns[col.name] = pd.Series(pd.to_datetime(cells), dtype="datetime64[us]")
        elif physical == "aware":
            columns[col.name] = pd.Series(pd.to_datetime(cells, utc=True), dtype="datetime64[us, UTC]").dt.tz_convert("Asia/Shanghai")
        elif physical == "date":
            columns[col.name] = pd.Series(cells, dtype=object)
        else:
            columns[col.name] = pd.Series(cells, dtype=physical)
    frame = pd.DataFrame(columns, index=range(n))
    if clean and name in ("labels", "truth") and n:
        frame = frame.drop_duplicates(["member_id", "as_of"]) if {"member_id", "as_of"} <= set(frame.columns) else frame
    if n and draw(st.booleans()):  # an exact duplicate row
        frame = pd.concat([frame, frame.iloc[[draw(st.integers(0, len(frame) - 1))]]], ignore_index=True)
    return frame


@st.composite
def typed_world(draw) -> dict[str, tuple[pd.DataFrame, int | None]]:
    """Per table its frame and, now and then, where to split it into a folder of two part files."""
    clean = draw(st.booleans())
    names = [n for n in TABLES if n in ("members", "orders") or draw(st.integers(0, 2)) > 0]
    out = {}
    for name in names:
        frame = draw(typed_table(name, clean))
        out[name] = (frame, draw(st.one_of(st.none(), st.integers(0, len(frame)))))
    return out


def _write_typed(frame: pd.DataFrame, path: Path, split: int | None) -> None:
    """One Parquet file, or a folder of two part files (as Spark writes a table) split at `split`."""
    if split is None:
        frame.to_parquet(path, index=False)
        return
    table = pa.Table.from_pandas(frame, preserve_index=False)
    path.mkdir()
    (path / "_SUCCESS").touch()
    pq.write_table(table.slice(0, split), path / "part-00000.parquet")
    pq.write_table(table.slice(split), path / "part-00001.parquet")


def _outcome(call):
    try:
        return call()
    except ContractError as err:
        return str(err)


def _same_outcome(root: Path, tmp: Path, **kwargs) -> None:
    """`ingest` and `load_data` raise the same error, or give the same tables, notes and fingerprints."""
    expected = _outcome(lambda: load_data(root, export_time=EXPORT, current_year=2026, **kwargs))
    got = _outcome(lambda: ingest(root, tmp / "brand.duckdb", export_time=EXPORT, current_year=2026, **kwargs))
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
        return
    stored = open_store(got.path)
    for name in TABLES:
        pd.testing.assert_frame_equal(stored.tables[name], expected.tables[name])
    assert (stored.absent, stored.warnings) == (expected.absent, expected.warnings)
    assert stored.fingerprint() == expected.fingerprint()


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(world=typed_world())
def test_ingest_in_sql_equals_the_pandas_path(world):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for name, (frame, split) in world.items():
            _write_typed(frame, root / f"{name}.parquet", split)
        in_sql = [plan(TABLES[name], root / f"{name}.parquet") is not None for name, (frame, _) in world.items() if len(frame.columns)]
        assert all(in_sql)  # every table with a column is checked in SQL (DuckDB reads no file without one)

        _same_outcome(root, Path(tmp))


def test_mixed_directory_checks_typed_files_in_sql_and_the_rest_in_pandas(hand_world, tmp_path, caplog):
    """A CSV table and a Parquet table with text timestamps go through pandas, the typed ones
    through SQL; the store equals loading, and a reference error found across the two paths is
    reported the same."""
    from features.io import write_tables

    root = tmp_path / "data"
    write_tables({n: hand_world.tables[n] for n in hand_world.tables if n not in hand_world.absent}, root)
    members = pd.read_parquet(root / "members.parquet")
    (root / "members.parquet").unlink()
    members.to_csv(root / "members.csv", index=False)
    orders = pd.read_parquet(root / "orders.parquet")
    orders.assign(ordered_at=orders["ordered_at"].dt.strftime("%Y-%m-%dT%H:%M:%S")).to_parquet(root / "orders.parquet", index=False)
    assert plan(TABLES["orders"], root / "orders.parquet") is None and plan(TABLES["events"], root / "events.parquet") is not None

    with caplog.at_level("INFO", logger="features.sql_contract"):
        stored = ingest(root, tmp_path / "brand.duckdb", export_time="2026-07-01")
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "features.sql_contract"] == [
        f"ingested {n} in SQL" for n in TABLES if n not in ("members", "orders") and n not in hand_world.absent
    ]
    loaded = load_data(root, export_time="2026-07-01")
    for name in TABLES:
        pd.testing.assert_frame_equal(open_store(stored.path).tables[name], loaded.tables[name])
    assert stored.fingerprint() == loaded.fingerprint()
    every_table_in_pandas = ingest(root, tmp_path / "pandas.duckdb", export_time="2026-07-01", in_sql=False)
    assert every_table_in_pandas.fingerprint() == stored.fingerprint()
    checked = check_files(root, export_time="2026-07-01")  # `koc validate`: the same checks, no table kept
    pd.testing.assert_frame_equal(checked.summary(), summary(loaded))
    assert (checked.data_end, checked.members, checked.warnings) == (loaded.data_end, len(loaded.members), loaded.warnings)
    from_store = check_files(stored.path)  # `koc validate --data brand.duckdb`: the store's summary
    pd.testing.assert_frame_equal(from_store.summary(), summary(loaded))
    assert (from_store.data_end, from_store.warnings) == (loaded.data_end, loaded.warnings)

    events = pd.read_parquet(root / "events.parquet")
    events.loc[[1, 4], "member_id"] = "nobody"
    events.to_parquet(root / "events.parquet", index=False)
    with pytest.raises(ContractError) as from_sql:
        ingest(root, tmp_path / "other.duckdb", export_time="2026-07-01")
    with pytest.raises(ContractError) as from_pandas:
        load_data(root, export_time="2026-07-01")
    assert "events.member_id: must exist in members.member_id — 2 row(s) break it; e.g. events.parquet row 1:" in str(from_sql.value)
    assert str(from_sql.value) == str(from_pandas.value)
    with pytest.raises(ContractError) as from_check:
        check_files(root, export_time="2026-07-01")
    assert str(from_check.value) == str(from_pandas.value)
    assert not (tmp_path / "other.duckdb").exists()


def _members_orders(members: pd.DataFrame | None = None, orders: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    members = members if members is not None else pd.DataFrame(
        {"member_id": ["M0", "M1", "M2"], "joined_at": pd.to_datetime(["2020-01-01", "2020-02-01", "2020-03-01"]).astype("datetime64[us]")}
    )
    orders = orders if orders is not None else pd.DataFrame(
        {
            "order_id": ["O0", "O1"], "member_id": ["M0", "M1"], "amount": [1.0, 2.0],
            "ordered_at": pd.to_datetime(["2021-01-01", "2021-01-02"]).astype("datetime64[us]"),
        }
    )  # fmt: skip
    return {"members": members, "orders": orders}


def _write_frames(frames: dict[str, pd.DataFrame], root: Path, **to_parquet) -> None:
    root.mkdir(parents=True)
    for name, frame in frames.items():
        frame.to_parquet(root / f"{name}.parquet", **to_parquet)


def test_files_sql_reads_otherwise_than_pandas_go_through_pandas(tmp_path):
    """Found in review: each of these made the SQL path answer differently from the pandas path
    (or crash). `plan` now sends them to pandas, or the check falls back when DuckDB refuses."""
    world = _members_orders()
    # a stored pandas index (after a filter), and a named one that holds member_id
    indexed = {**world, "members": pd.concat([world["members"], world["members"].iloc[[1]]]).set_axis([10, 11, 12, 13])}
    _write_frames(indexed, tmp_path / "index")
    assert plan(TABLES["members"], tmp_path / "index" / "members.parquet") is None
    _same_outcome(tmp_path / "index", tmp_path)
    _write_frames({**world, "members": world["members"].set_index("member_id")}, tmp_path / "named")
    _same_outcome(tmp_path / "named", tmp_path)

    # an extra column named like DuckDB's row-number column; a nested one
    _write_frames({**world, "orders": world["orders"].assign(FILE_ROW_NUMBER=1, tags=[[1.0], [1.0]])}, tmp_path / "odd", index=False)
    assert plan(TABLES["orders"], tmp_path / "odd" / "orders.parquet") is None
    _same_outcome(tmp_path / "odd", tmp_path)

    # integers pandas reads as float64 (a null, no pandas metadata) and beyond 2^53: pandas's digits
    events = pa.table({"member_id": ["M0", "M1", "M2"], "event_at": pa.array([dt.datetime(2021, 1, 1)] * 3, pa.timestamp("us")),
                       "event_type": ["share"] * 3, "campaign_id": pa.array([5, None, 2**60 + 1], pa.int64())})  # fmt: skip
    _write_frames(world, tmp_path / "big")
    pq.write_table(events, tmp_path / "big" / "events.parquet")
    assert plan(TABLES["events"], tmp_path / "big" / "events.parquet") is None
    _same_outcome(tmp_path / "big", tmp_path)

    # a folder whose name DuckDB would read as a glob pattern
    _write_frames(world, tmp_path / "brand*")
    _write_frames(_members_orders(world["members"].assign(member_id=["X0", "X1", "X2"])), tmp_path / "brand_old")
    _same_outcome(tmp_path / "brand*", tmp_path)


def test_a_table_duckdb_cannot_read_as_pandas_does_falls_back_to_pandas(tmp_path, caplog):
    """A date past year 9999 (pandas reports the file as unreadable) and a time zone name the
    system knows but DuckDB's ICU does not: the table is checked in pandas, with a warning."""
    world = _members_orders()
    members = pa.table({"member_id": ["M0", "M1"], "joined_at": pa.array([dt.date(2020, 1, 1), 3_000_000], pa.date32())})
    _write_frames({"orders": world["orders"]}, tmp_path / "far")
    pq.write_table(members, tmp_path / "far" / "members.parquet")
    with caplog.at_level("WARNING", logger="features.sql_contract"):
        _same_outcome(tmp_path / "far", tmp_path)
    assert any("members: checked in pandas instead of SQL (ValueError" in r.getMessage() for r in caplog.records)

    aware = world["members"].assign(joined_at=world["members"]["joined_at"].dt.tz_localize("UTC"))
    _write_frames({**world, "members": aware}, tmp_path / "zone")
    if Path("/usr/share/zoneinfo/posix/Asia/Shanghai").exists():
        _same_outcome(tmp_path / "zone", tmp_path, timezone="posix/Asia/Shanghai")
