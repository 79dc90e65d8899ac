"""Subset builds: features for chosen `(member_id, as_of)` pairs equal the same rows of the full build."""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.build import build_features

pytestmark = pytest.mark.slow

CUTOFFS = [pd.Timestamp("2024-06-01"), pd.Timestamp("2024-10-01")]


@pytest.fixture(scope="module")
def full(small_sim_world) -> pd.DataFrame:
    return build_features(small_sim_world, CUTOFFS)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_subsets_equal_the_full_build(small_sim_world, full, data):
    members = small_sim_world.members["member_id"].tolist()
    chosen = data.draw(st.lists(st.sampled_from(members), min_size=1, max_size=60, unique=True), label="members")
    at = data.draw(st.lists(st.sampled_from(CUTOFFS), min_size=len(chosen), max_size=len(chosen)), label="cutoffs")
    rows = pd.DataFrame({"member_id": chosen, "as_of": at})

    subset = build_features(small_sim_world, None, rows=rows)

    expected = full.merge(rows, on=["member_id", "as_of"]).sort_values(["as_of", "member_id"], ignore_index=True)
    pd.testing.assert_frame_equal(subset, expected)  # exact, BG/NBD included


def test_subset_drops_members_not_joined_and_keeps_bgnbd(small_sim_world, full):
    buyers = full.loc[full["bgnbd_p_alive"].notna() & (full["as_of"] == CUTOFFS[1]), "member_id"].head(3).tolist()
    rows = pd.DataFrame({"member_id": [*buyers, "no_such_member"], "as_of": CUTOFFS[1]})

    subset = build_features(small_sim_world, [CUTOFFS[1]], rows=rows)

    assert subset["member_id"].tolist() == sorted(buyers)
    assert subset["bgnbd_p_alive"].notna().all()
    empty = build_features(small_sim_world, None, rows=rows.iloc[:0])
    assert empty.empty and list(empty.columns) == list(full.columns)
    assert (empty.dtypes == full.dtypes).all()
    with pytest.raises(ValueError, match="not in as_of"):
        build_features(small_sim_world, [CUTOFFS[0]], rows=rows)


def test_inlined_ctes_give_the_materialized_result(small_sim_world):
    """`inline_ctes` (what DuckDB runs) only changes how DuckDB plans: every value is the same."""
    import re

    from features.build import EngineConfig, _input_relations, _point_views, connect, feature_sql, inline_ctes

    sql = feature_sql(CUTOFFS[1])
    inlined = inline_ctes(sql)
    assert inlined.count("NOT MATERIALIZED") == len(re.findall(r"^\w+ AS \(", sql, flags=re.MULTILINE)) > 10
    con = connect(EngineConfig())
    try:
        _point_views(con, _input_relations(con, small_sim_world), subset=False)
        pd.testing.assert_frame_equal(con.sql(inlined).df(), con.sql(sql).df())
    finally:
        con.close()


def test_member_chunks_give_the_unchunked_result(small_sim_world, full, tmp_path, caplog):
    """`EngineConfig.chunk_members`: a cutoff computed chunk by chunk equals the one-query build,
    in row order too, for the full build, a subset build and the streamed Parquet file."""
    import logging

    from features.build import EngineConfig, _member_ranges, write_features

    chunked = EngineConfig(chunk_members=97, stage_members=296)  # rounds of aggregates, each joined in chunks
    with caplog.at_level(logging.INFO, logger="features.build"):
        whole = build_features(small_sim_world, CUTOFFS, chunked)
    messages = [record.getMessage() for record in caplog.records]
    rounds = [int(found[1]) for m in messages if (found := re.search(r"in (\d+) round\(s\) of aggregates", m))]
    assert rounds and min(rounds) > 1, messages  # it really computed rounds, each joined in chunks
    pd.testing.assert_frame_equal(whole, full)

    rows = full.loc[full.index % 3 == 0, ["member_id", "as_of"]].sample(frac=1.0, random_state=1)
    assert (rows.groupby("as_of").size() > 97).all()
    subset = build_features(small_sim_world, None, chunked, rows=rows)
    expected = full.merge(rows, on=["member_id", "as_of"]).sort_values(["as_of", "member_id"], ignore_index=True)
    pd.testing.assert_frame_equal(subset, expected)

    out = tmp_path / "chunked.parquet"
    write_features(small_sim_world, CUTOFFS, out, chunked, batch_rows=50)
    pd.testing.assert_frame_equal(pd.read_parquet(out), full, check_dtype=False, check_categorical=False)

    # ids deduplicated and sorted in code point order, chunks of 2: [a, ab], [b, c]
    assert _member_ranges(["b", "a", "c", "a", "ab"], 10, 2) == [((None, None), [(None, "b"), ("b", None)])]


def test_aggregates_kept_in_a_file_give_the_same_features_and_the_file_goes(small_sim_world, full, tmp_path, monkeypatch):
    """With a `temp_directory` a chunked cutoff's staged aggregates live in a database file there
    (they can then leave memory): the same rows, and the file is removed when the cutoff's stream
    ends. A few members (a subset within one chunk) run as one query, with no tables."""
    import features.build as build
    from features.build import EngineConfig, write_features

    stores: list[str | None] = []
    real = build._stage_store

    def recording(con, engine):
        store = real(con, engine)
        stores.append(store.path)
        return store

    monkeypatch.setattr(build, "_stage_store", recording)
    spill = tmp_path / "spill"
    engine = EngineConfig(chunk_members=97, stage_members=200, temp_directory=str(spill))
    pd.testing.assert_frame_equal(build_features(small_sim_world, CUTOFFS, engine), full)
    out = tmp_path / "features.parquet"
    write_features(small_sim_world, CUTOFFS, out, engine)
    pd.testing.assert_frame_equal(pd.read_parquet(out), full, check_dtype=False, check_categorical=False)
    assert spill.is_dir() and not list(spill.glob("kocrank-features-*"))
    assert stores and all(path is not None and path.startswith(str(spill)) for path in stores)
    stores.clear()
    rows = full.loc[full.index[:5], ["member_id", "as_of"]]
    subset = build_features(small_sim_world, None, engine, rows=rows)
    assert not stores  # a few members (one chunk): one query, no tables
    expected = full.merge(rows, on=["member_id", "as_of"]).sort_values(["as_of", "member_id"], ignore_index=True)
    pd.testing.assert_frame_equal(subset, expected)


def test_distinct_counts_computed_apart_equal_the_inline_aggregate(small_sim_world):
    """`_aggregate_ctes` computes a conditional COUNT(DISTINCT) apart and joins it on: every
    source's aggregate equals the one GROUP BY with the distinct counts inline, 0 included for a
    member with rows but none that count (e.g. events but no campaign join)."""
    from features.build import (
        EngineConfig,
        _aggregate_ctes,
        _input_relations,
        _Placeholders,
        _point_views,
        connect,
        split_distinct,
    )
    from features.registry import SOURCES, source_columns

    fill = _Placeholders(CUTOFFS[1], "count")
    rows = [f"{name} AS ({fill.fill(sql)})" for source in SOURCES for name, sql in source.rows]
    con = connect(EngineConfig())
    apart = 0
    try:
        _point_views(con, _input_relations(con, small_sim_world), subset=False)
        for source in SOURCES:
            columns = source_columns(source.name)
            if source.kind != "aggregate" or not columns:
                continue
            body = ", ".join(f"{fill.fill(sql)} AS {column}" for column, sql in columns.items())
            inline = con.sql(
                f"WITH {', '.join(rows)} SELECT {source.key} AS member_id, {body} "
                f"FROM {source.rows[-1][0]} GROUP BY {source.key} ORDER BY member_id"
            ).df()
            staged = con.sql(
                f"WITH {', '.join([*rows, *_aggregate_ctes(source, columns, fill)])} "
                f"SELECT member_id, {', '.join(columns)} FROM {source.name} ORDER BY member_id"
            ).df()
            pd.testing.assert_frame_equal(staged, inline)
            apart += sum(1 for sql in columns.values() if (parts := split_distinct(sql)) and parts[1] is not None)
            if source.name == "events_agg":
                assert (inline["campaigns_joined"] == 0).any() and (inline["campaigns_joined"] > 0).any()
    finally:
        con.close()
    assert apart >= 3  # the events' campaign and active-day counts


def test_split_distinct_reads_the_registry_forms():
    from features.build import split_distinct

    assert split_distinct("COUNT(DISTINCT platform)") == ("platform", None)
    assert split_distinct("COUNT(DISTINCT CASE WHEN a >= 1 THEN CAST(x AS DATE) END)") == ("CAST(x AS DATE)", "a >= 1")
    assert split_distinct("COUNT(CASE WHEN a THEN 1 END)") is None


def test_an_abandoned_stream_removes_its_aggregates_file(small_sim_world, tmp_path):
    """A build that fails mid-cutoff (its connection closed first, the stream dropped after) still
    deletes the database file of its aggregates."""
    import gc

    from features.build import EngineConfig, _cutoff_stream, _input_relations, connect

    spill = tmp_path / "spill"
    engine = EngineConfig(chunk_members=97, temp_directory=str(spill))
    con = connect(engine)
    _, stream = _cutoff_stream(con, _input_relations(con, small_sim_world), CUTOFFS[1], engine, None, 50)
    batches = iter(stream)
    assert len(next(batches)) == 50
    assert list(spill.glob("kocrank-features-*"))  # the aggregates are in their file
    con.close()
    del batches, stream
    gc.collect()
    assert not list(spill.glob("kocrank-features-*"))


def test_a_killed_runs_aggregates_file_is_removed_by_the_next_run_and_a_live_ones_is_kept(tmp_path):
    """`koc features` killed mid-cutoff (SIGKILL: no cleanup runs) leaves its aggregates file in
    the spill folder; the next store there removes it, because nobody holds its lock any more,
    while the file of a run still alive is kept."""
    import signal
    import subprocess
    import sys

    from features.build import EngineConfig, _stage_store, connect, sweep_stage_files

    spill = tmp_path / "spill"
    owner = (
        "import time\n"
        "from features.build import EngineConfig, _stage_store, connect\n"
        f"engine = EngineConfig(temp_directory={str(spill)!r})\n"
        "con = connect(engine)\n"
        "store = _stage_store(con, engine)\n"
        "con.execute('CREATE TABLE koc_stage.t AS SELECT range AS x FROM range(1000)')\n"
        "con.execute('CHECKPOINT koc_stage')\n"
        "print(store.path, flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    try:
        path = child.stdout.readline().strip()
        assert path.startswith(str(spill)) and os.path.exists(path)
        assert sweep_stage_files(str(spill), min_age_seconds=0) == []  # alive: kept
        assert os.path.exists(path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert os.path.exists(path)  # nothing cleaned up after a SIGKILL
    assert sweep_stage_files(str(spill), min_age_seconds=3600) == []  # too fresh to judge: left alone
    assert sweep_stage_files(str(spill), min_age_seconds=0) == [path]
    assert not list(spill.glob("kocrank-features-*"))

    # the sweep runs whenever a store opens in the folder; its own live file is not touched
    child = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    try:
        path = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    lock = path.removesuffix(".duckdb") + ".lock"
    os.utime(lock, (0, 0))  # killed long ago
    engine = EngineConfig(temp_directory=str(spill))
    con = connect(engine)
    try:
        store = _stage_store(con, engine)
        assert not os.path.exists(path) and not os.path.exists(lock)
        assert sweep_stage_files(str(spill), min_age_seconds=0) == []  # this process holds its own lock
        store.close(con, [])
    finally:
        con.close()
    assert not list(spill.glob("kocrank-features-*"))


def test_the_sweep_skips_lock_files_it_may_not_open(tmp_path, monkeypatch):
    """In a spill folder shared between users, another user's lock file (mode 0600) cannot be
    opened: the sweep leaves it to its owner instead of failing the feature build."""
    import features.build as build

    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "kocrank-features-theirs.lock").touch()
    (spill / "kocrank-features-theirs.duckdb").write_bytes(b"x")
    real_open = os.open

    def refuse(path, flags, *args):
        if str(path).endswith("theirs.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(build.os, "open", refuse)
    assert build.sweep_stage_files(str(spill), min_age_seconds=0) == []
    assert sorted(p.name for p in spill.iterdir()) == ["kocrank-features-theirs.duckdb", "kocrank-features-theirs.lock"]
    monkeypatch.setattr(build.os, "open", real_open)
    assert build.sweep_stage_files(str(spill), min_age_seconds=0) == [str(spill / "kocrank-features-theirs.duckdb")]
    assert not list(spill.iterdir())
