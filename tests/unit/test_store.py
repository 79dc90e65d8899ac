"""The on-disk store: `koc ingest` writes the validated tables to DuckDB; features run on it unchanged."""

from __future__ import annotations

import pandas as pd
import pytest
from support.worlds import AS_OF
from typer.testing import CliRunner

from features.build import EngineConfig, build_features, write_features
from features.contract import ContractError, load_data
from features.io import write_tables
from features.store import StoredBrandData, ingest, open_store
from kocrank.cli import app

CUTOFFS = [AS_OF - pd.Timedelta(days=60), AS_OF]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, hand_world):
    folder = tmp_path_factory.mktemp("store") / "data"
    write_tables({n: hand_world.tables[n] for n in hand_world.tables if n not in hand_world.absent}, folder)
    return folder


@pytest.fixture(scope="module")
def stored(data_dir) -> StoredBrandData:
    return ingest(data_dir, data_dir.parent / "brand.duckdb", export_time="2026-07-01")


def test_store_holds_the_same_tables_as_loading(data_dir, stored):
    loaded = load_data(data_dir, export_time="2026-07-01")
    reopened = open_store(stored.path)

    assert reopened.tables._read == {}  # nothing read until asked for
    for name in loaded.tables:
        pd.testing.assert_frame_equal(reopened.tables[name], loaded.tables[name])
    assert reopened.absent == loaded.absent and reopened.warnings == loaded.warnings
    assert reopened.fingerprint() == loaded.fingerprint()
    assert reopened.data_end == loaded.data_end
    for table, column in [("orders", "ordered_at"), ("posts", "posted_at"), ("program", "event_at")]:
        assert reopened.rows_and_first(table, column) == loaded.rows_and_first(table, column)
        assert reopened.latest(table, column) == loaded.latest(table, column) == loaded.tables[table][column].max()
    fresh = open_store(stored.path)
    assert fresh.rows_and_first("orders", "ordered_at")[0] == len(loaded.orders) and fresh.tables._read == {}
    assert load_data(stored.path).path == stored.path  # --data accepts the .duckdb file


@pytest.mark.slow
def test_features_on_the_store_equal_in_memory_and_stream_to_parquet(data_dir, stored, tmp_path):
    loaded = load_data(data_dir, export_time="2026-07-01")
    expected = build_features(loaded, CUTOFFS)

    pd.testing.assert_frame_equal(build_features(stored, CUTOFFS), expected)
    written = write_features(stored, CUTOFFS, tmp_path / "f.parquet", EngineConfig(memory_limit="500MB"), batch_rows=20)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), expected)
    assert written == {"rows": len(expected), "members": expected["member_id"].nunique(), "cutoffs": 2}
    assert stored.tables._read == {}  # the SQL ran on the database, no pandas copies of the inputs
    rows = expected.loc[[3, 5, len(expected) - 1], ["member_id", "as_of"]]
    pd.testing.assert_frame_equal(
        build_features(stored, None, rows=rows), expected.loc[sorted(rows.index)].reset_index(drop=True)
    )


def test_ingest_reports_violations_and_leaves_the_target_alone(data_dir, tmp_path):
    broken = tmp_path / "broken"
    members = pd.read_parquet(data_dir / "members.parquet").assign(member_id=" m1")
    write_tables({"members": members, "orders": pd.read_parquet(data_dir / "orders.parquet")}, broken)
    target = tmp_path / "brand.duckdb"
    target.write_text("previous")

    with pytest.raises(ContractError, match=r"members.member_id: must be unique") as err:
        ingest(broken, target)
    assert "members.member_id: must not start or end with whitespace" in str(err.value)
    assert "orders.member_id: must exist in members.member_id" in str(err.value)
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brand.duckdb", "broken"]
    with pytest.raises(ContractError, match="not a kocrank store"):
        open_store(target)


@pytest.mark.slow
def test_cli_ingest_then_features_from_the_store(data_dir, tmp_path):
    runner = CliRunner()
    db = tmp_path / "brand.duckdb"
    result = runner.invoke(app, ["ingest", "--data", str(data_dir), "--out", str(db), "--export-time", "2026-07-01"])
    assert result.exit_code == 0, result.output
    assert "members 48" in result.output

    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["features", "--db", str(db), "--as-of", "2026-06-01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = build_features(load_data(data_dir, export_time="2026-07-01"), AS_OF)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)


def test_trial_categories_query_the_store_without_reading_orders(data_dir, stored):
    from serving.rank import trial_categories

    loaded = load_data(data_dir, export_time="2026-07-01")
    fresh = open_store(stored.path)
    for rule in ("count", "drop"):
        expected = trial_categories(loaded.orders, AS_OF, 365, rule)
        assert not expected.empty
        pd.testing.assert_frame_equal(trial_categories(fresh, AS_OF, 365, rule), expected)
        pd.testing.assert_frame_equal(trial_categories(loaded, AS_OF, 365, rule), expected)
    assert fresh.tables._read == {}


def test_feature_batches_own_their_text_columns():
    """A text column read zero-copy from DuckDB's Arrow result would keep the whole batch (every
    feature column) in memory; `_owned_strings` copies text into new buffers, numbers untouched."""
    import duckdb

    from features.build import _owned_strings

    con = duckdb.connect()
    batch = next(iter(con.sql("SELECT 'm' || i::VARCHAR AS member_id, i * 1.5 AS x FROM range(1000) t(i)").to_arrow_reader(500)))
    owned = _owned_strings(batch)

    assert owned.equals(batch)
    before, after = batch.column(0).buffers(), owned.column(0).buffers()
    assert all(a.address != b.address for a, b in zip(after[1:], before[1:], strict=True) if a is not None)
    assert owned.column(1).buffers()[1].address == batch.column(1).buffers()[1].address


@pytest.mark.slow
def test_rows_at_one_cutoff_read_only_that_cutoff(small_sim_world, tmp_path):
    folder = tmp_path / "sim"
    write_tables({n: small_sim_world.tables[n] for n in small_sim_world.tables if n not in small_sim_world.absent}, folder)
    stored = ingest(folder, tmp_path / "sim.duckdb")
    loaded = load_data(folder)
    cutoff = pd.Timestamp(sorted(loaded.truth["as_of"].unique())[3])

    at = stored.rows_at("truth", cutoff)
    expected = loaded.rows_at("truth", cutoff)
    assert len(at) == (loaded.truth["as_of"] == cutoff).sum() > 0
    key = ["member_id"]
    pd.testing.assert_frame_equal(at.sort_values(key, ignore_index=True), expected.sort_values(key, ignore_index=True))
    assert stored.tables._read == {}  # no whole-table read


def test_a_store_written_before_an_optional_column_existed_reads_it_as_missing(small_sim_world, tmp_path):
    """The truth gained the invitation's paths after bench stores were ingested: such a store still
    serves `koc train` (the paths read as missing), while a store without a required column is refused."""
    import duckdb

    folder = tmp_path / "sim"
    write_tables({n: small_sim_world.tables[n] for n in small_sim_world.tables if n not in small_sim_world.absent}, folder)
    stored = ingest(folder, tmp_path / "sim.duckdb")
    cutoff = pd.Timestamp(sorted(small_sim_world.truth["as_of"].unique())[3])
    with duckdb.connect(stored.path) as con:
        con.execute('ALTER TABLE truth DROP COLUMN p_accept_if_invited')
    old = open_store(stored.path)
    at = old.rows_at("truth", cutoff)
    assert at["p_accept_if_invited"].isna().all() and at["p_accept_if_invited"].dtype == "float64"
    assert at["p_productive_if_invited"].notna().all()
    assert old.tables["truth"]["p_accept_if_invited"].isna().all()
    with duckdb.connect(stored.path) as con:
        con.execute("ALTER TABLE truth DROP COLUMN p_productive_if_invited")
    with pytest.raises(ValueError, match=r"table truth: the store lacks required column\(s\) \['p_productive_if_invited'\]"):
        open_store(stored.path).rows_at("truth", cutoff)


@pytest.mark.parametrize("world", ["hand", "simulated"])
def test_labels_and_outcomes_in_sql_on_the_store_equal_the_pandas_rules(world, stored, hand_world, small_sim_world, tmp_path):
    """On a store, training's labels, eligibility and outcomes are one DuckDB query; it gives the
    rows (eligible members only), values, dtypes and order of `labels_for` + `outcomes_for`."""
    from features.labels import LabelConfig, labels_for
    from features.targets import labels_and_outcomes, outcomes_for

    if world == "hand":
        store, cutoffs = stored, [AS_OF - pd.Timedelta(days=d) for d in (120, 60, 30, 0)]
    else:
        folder = tmp_path / "sim"
        write_tables({n: small_sim_world.tables[n] for n in small_sim_world.tables if n not in small_sim_world.absent}, folder)
        store = ingest(folder, tmp_path / "sim.duckdb", export_time="2026-07-01")
        cutoffs = list(pd.date_range("2024-04-01", periods=8, freq="MS"))
    loaded = load_data(store.path)
    in_memory = load_data(store.path)
    cfg = LabelConfig(horizon_days=60, cooldown_days=45)
    expected = outcomes_for(in_memory, labels_for(in_memory, cutoffs, cfg), cfg)
    sql = labels_and_outcomes(loaded, cutoffs, cfg)

    assert loaded.tables._read == {}  # nothing read into pandas
    pd.testing.assert_frame_equal(sql, expected)
    # in batches of cutoffs (a large brand under a memory_limit; here one query per cutoff): the same
    # rows, values and order
    batched = labels_and_outcomes(loaded, cutoffs, cfg, EngineConfig(label_rows=1))
    pd.testing.assert_frame_equal(batched, expected)
    if world == "simulated":  # the hand world has no programme outcomes at these cutoffs
        assert min(int(expected[c].sum()) for c in ["label", "invited", "accepted", "enrolled", "productive"]) > 0
    # every exclusion rule left someone out at some cutoff
    assert len(expected) < sum(int((in_memory.members["joined_at"] < c).sum()) for c in cutoffs)


def test_cutoff_batches_pack_consecutive_cutoffs_under_the_pair_budget():
    from features.targets import cutoff_batches

    assert cutoff_batches([3, 3, 3, 3], 6) == [slice(0, 2), slice(2, 4)]
    assert cutoff_batches([5, 9, 1, 1, 4], 6) == [slice(0, 1), slice(1, 2), slice(2, 5)]  # a cutoff above it alone
    assert cutoff_batches([2, 2], 100) == [slice(0, 2)]
    assert cutoff_batches([], 10) == []
