"""Subset builds: features for chosen `(member_id, as_of)` pairs equal the same rows of the full build."""

from __future__ import annotations

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

    from features.build import EngineConfig, member_chunks, write_features

    chunked = EngineConfig(chunk_members=97)
    with caplog.at_level(logging.INFO, logger="features.build"):
        whole = build_features(small_sim_world, CUTOFFS, chunked)
    assert any("chunks" in record.getMessage() for record in caplog.records)  # it really chunked
    pd.testing.assert_frame_equal(whole, full)

    rows = full.loc[full.index % 3 == 0, ["member_id", "as_of"]].sample(frac=1.0, random_state=1)
    assert (rows.groupby("as_of").size() > 97).all()
    subset = build_features(small_sim_world, None, chunked, rows=rows)
    expected = full.merge(rows, on=["member_id", "as_of"]).sort_values(["as_of", "member_id"], ignore_index=True)
    pd.testing.assert_frame_equal(subset, expected)

    out = tmp_path / "chunked.parquet"
    write_features(small_sim_world, CUTOFFS, out, chunked, batch_rows=50)
    pd.testing.assert_frame_equal(pd.read_parquet(out), full, check_dtype=False, check_categorical=False)

    parts = member_chunks(["b", "a", "c", "a", "ab"], 2)
    assert [p["member_id"].tolist() for p in parts] == [["a", "ab"], ["b", "c"]]
