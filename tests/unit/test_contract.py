"""Contract loading and validation: every rule family is enforced with a clear message."""

from __future__ import annotations

import pandas as pd
import pytest

from features.contract import ContractError, from_frames, load_data, parse_as_of, summary


def _members(**overrides):
    base = {
        "member_id": ["000123", "000456", "789"],
        "joined_at": ["2024-01-01", "2024-02-01 09:30:00", "2024-03-01"],
        "birth_year": [1990, None, 1985],
        "gender": ["F", "M", None],
        "city_tier": [1, 3, None],
        "channel": ["store", "ads", None],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def _orders(**overrides):
    base = {
        "order_id": ["o1", "o2", "o3"],
        "member_id": ["000123", "000123", "000456"],
        "ordered_at": ["2024-04-01 10:00:00", "2024-05-01 10:00:00", "2024-05-02 12:00:00"],
        "amount": [99.0, 150.5, 20.0],
        "category": ["skincare", "makeup", None],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def _violations(frames, **kw):
    with pytest.raises(ContractError) as info:
        from_frames(frames, current_year=2026, **kw)
    return info.value.violations, str(info.value)


def test_valid_minimal_world_loads_with_canonical_dtypes():
    data = from_frames({"members": _members(), "orders": _orders()}, current_year=2026)
    assert data.members["member_id"].tolist() == ["000123", "000456", "789"]
    assert str(data.members["joined_at"].dtype) == "datetime64[us]"
    assert data.members["marketing_consent"].tolist() == [True, True, True]
    assert data.orders["refunded"].tolist() == [False, False, False]
    assert str(data.members["city_tier"].dtype) == "Int64"
    assert data.absent == {"events", "posts", "referrals", "program", "social", "labels", "truth"}
    assert len(data.events) == 0 and list(data.events.columns) == ["member_id", "event_at", "event_type", "campaign_id"]
    assert any("events: table absent" in w for w in data.warnings)
    assert data.data_end == pd.Timestamp("2024-05-02 12:00:00")


def test_missing_required_table():
    violations, text = _violations({"members": _members()})
    assert violations[0].table == "orders" and "required table is missing" in text


def test_missing_required_column_names_table_and_column():
    violations, text = _violations({"members": _members(), "orders": _orders().drop(columns=["amount"])})
    assert (violations[0].table, violations[0].column, violations[0].rule) == ("orders", "amount", "required column is missing")


def test_unique_ids():
    violations, text = _violations({"members": _members(member_id=["1", "1", "2"]), "orders": _orders(member_id=["1", "1", "2"])})
    v = violations[0]
    assert (v.table, v.column, v.rule, v.count) == ("members", "member_id", "must be unique", 2)
    assert "row 0" in text and "member_id='1'" in text


def test_non_null_timestamp():
    violations, _ = _violations({"members": _members(joined_at=["2024-01-01", None, "2024-01-01"]), "orders": _orders()})
    assert [(v.table, v.column, v.rule, v.count) for v in violations] == [("members", "joined_at", "must not be null", 1)]


def test_unparseable_timestamp():
    violations, text = _violations({"members": _members(), "orders": _orders(ordered_at=["2024-04-01", "yesterday", "2024-05-02"])})
    assert (violations[0].column, violations[0].rule, violations[0].count) == ("ordered_at", "must be an ISO 8601 timestamp", 1)
    assert "yesterday" in text


def test_ranges_and_allowed_values():
    frames = {
        "members": _members(birth_year=[1850, 2030, 1990], gender=["F", "X", None], city_tier=[0, 7, 2]),
        "orders": _orders(amount=[-1.0, 5.0, 6.0]),
    }
    violations, text = _violations(frames)
    found = {(v.table, v.column, v.rule) for v in violations}
    assert ("members", "birth_year", "must be >= 1900") in found
    assert ("members", "birth_year", "must be <= the current year (2026)") in found
    assert ("members", "gender", "must be one of F, M, U") in found
    assert ("members", "city_tier", "must be >= 1") in found
    assert ("members", "city_tier", "must be <= 6") in found
    assert ("orders", "amount", "must be >= 0") in found


def test_unknown_member_reference():
    violations, text = _violations({"members": _members(), "orders": _orders(member_id=["000123", "999", "000456"])})
    v = violations[0]
    assert (v.table, v.column, v.rule, v.count) == ("orders", "member_id", "must exist in members.member_id", 1)
    assert "member_id='999'" in text


def test_optional_table_rules_checked():
    posts = pd.DataFrame(
        {
            "post_id": ["p1", "p2"],
            "member_id": ["000123", "000123"],
            "posted_at": ["2024-05-01", "2024-05-03"],
            "platform": ["xhs", "tiktok"],
            "likes_7d": [10, -3],
            "comments_7d": [1, 0],
            "saves_7d": [None, 2],
        }
    )
    program = pd.DataFrame({"member_id": ["000123"], "event_at": ["2024-05-01"], "status": ["promoted"]})
    violations, _ = _violations({"members": _members(), "orders": _orders(), "posts": posts, "program": program})
    found = {(v.table, v.column, v.rule) for v in violations}
    assert ("posts", "platform", "must be one of xhs, douyin, weibo, wechat, other") in found
    assert ("posts", "likes_7d", "must be >= 0") in found
    assert ("program", "status", "must be one of invited, declined, enrolled, upgraded, eliminated, blacklisted") in found


def test_labels_must_be_binary_and_unique_per_cutoff():
    labels = pd.DataFrame({"member_id": ["000123", "000123", "000456"], "as_of": ["2024-06-01"] * 3, "label": [1, 0, 2]})
    violations, _ = _violations({"members": _members(), "orders": _orders(), "labels": labels})
    found = {(v.table, v.column, v.rule) for v in violations}
    assert ("labels", "label", "must be one of 0, 1") in found
    assert ("labels", "member_id", "must be unique per (member_id, as_of)") in found


def test_unknown_event_types_become_other_and_duplicates_are_reported():
    events = pd.DataFrame(
        {
            "member_id": ["000123"] * 3,
            "event_at": ["2024-05-01 10:00"] * 3,
            "event_type": ["share", "share", "lottery"],
        }
    )
    data = from_frames({"members": _members(), "orders": _orders(), "events": events}, current_year=2026)
    assert data.events["event_type"].tolist() == ["share", "other"]
    assert "events: dropped 1 exact duplicate row(s)" in data.warnings
    assert any("counted as 'other'" in w and "lottery" in w for w in data.warnings)


def test_time_zone_applied_to_aware_timestamps_only():
    orders = _orders(ordered_at=["2024-04-01T02:00:00Z", "2024-04-01T10:00:00+08:00", "2024-04-01 10:00:00"])
    data = from_frames({"members": _members(), "orders": orders}, current_year=2026)
    assert data.orders["ordered_at"].tolist() == [pd.Timestamp("2024-04-01 10:00:00")] * 3
    ny = from_frames({"members": _members(), "orders": orders}, timezone="America/New_York", current_year=2026)
    assert ny.orders["ordered_at"].iloc[0] == pd.Timestamp("2024-03-31 22:00:00")
    assert ny.orders["ordered_at"].iloc[2] == pd.Timestamp("2024-04-01 10:00:00")


def test_parse_as_of_is_local_midnight():
    assert parse_as_of("2026-06-01") == pd.Timestamp("2026-06-01 00:00:00")
    assert parse_as_of("2026-05-31T16:00:00Z", "Asia/Shanghai") == pd.Timestamp("2026-06-01 00:00:00")


def test_csv_ids_keep_leading_zeros(tmp_path):
    _members().to_csv(tmp_path / "members.csv", index=False)
    _orders().to_csv(tmp_path / "orders.csv", index=False)
    data = load_data(tmp_path, current_year=2026)
    assert data.members["member_id"].tolist() == ["000123", "000456", "789"]
    assert data.orders["member_id"].tolist() == ["000123", "000123", "000456"]
    assert data.members["birth_year"].tolist()[0] == 1990
    assert summary(data).set_index("table").loc["orders", "rows"] == 3


def test_parquet_and_csv_give_the_same_tables(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_csv_members, from_csv_orders = _members(), _orders()
    from_csv_members.to_csv(tmp_path / "a" / "members.csv", index=False)
    from_csv_orders.to_csv(tmp_path / "a" / "orders.csv", index=False)
    from_csv_members.to_parquet(tmp_path / "b" / "members.parquet")
    from_csv_orders.to_parquet(tmp_path / "b" / "orders.parquet")
    a, b = load_data(tmp_path / "a", current_year=2026), load_data(tmp_path / "b", current_year=2026)
    for name in ("members", "orders"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert a.fingerprint() == b.fingerprint()


def test_table_given_twice_is_an_error(tmp_path):
    _members().to_csv(tmp_path / "members.csv", index=False)
    _members().to_parquet(tmp_path / "members.parquet")
    _orders().to_csv(tmp_path / "orders.csv", index=False)
    with pytest.raises(ContractError, match="table given twice"):
        load_data(tmp_path)


def test_marketing_consent_false_is_kept():
    data = from_frames(
        {"members": _members(marketing_consent=["true", "false", None]), "orders": _orders()}, current_year=2026
    )
    assert data.members["marketing_consent"].tolist() == [True, False, True]


def test_all_violations_are_reported_together():
    frames = {
        "members": _members(member_id=["1", "1", "2"], gender=["F", "X", None]),
        "orders": _orders(member_id=["1", "NOBODY", "2"], amount=[-1.0, 5.0, 6.0], ordered_at=["2024-04-01", "yesterday", "2024-05-02"]),
        "events": pd.DataFrame({"member_id": ["1"], "event_type": ["share"]}),  # no event_at column
    }
    violations, _ = _violations(frames)
    found = {(v.table, v.column, v.rule) for v in violations}
    assert found == {
        ("members", "member_id", "must be unique"),
        ("members", "gender", "must be one of F, M, U"),
        ("orders", "ordered_at", "must be an ISO 8601 timestamp"),
        ("orders", "member_id", "must exist in members.member_id"),
        ("orders", "amount", "must be >= 0"),
        ("events", "event_at", "required column is missing"),
    }  # the unparseable ordered_at is not reported a second time as null


def test_odd_inputs_become_violations_not_crashes():
    orders = _orders(
        ordered_at=["2024-04-01T1000+0800", "2024-04-01T10+08:00", "2024-04-01T25:99"],
        amount=["inf", "12.5", "7"],
    )
    members = _members(birth_year=["1e30", "1990", None])
    violations, _ = _violations({"members": members, "orders": orders})
    found = {(v.table, v.column, v.rule, v.count) for v in violations}
    assert found == {
        ("members", "birth_year", "must be an integer", 1),
        ("orders", "ordered_at", "must be an ISO 8601 timestamp", 1),
        ("orders", "amount", "must be a finite number", 1),
    }


def test_compact_offsets_are_converted():
    orders = _orders(ordered_at=["2024-04-01T0200Z", "2024-04-01T1000+0800", "2024-04-01T02:00:00z"])
    data = from_frames({"members": _members(), "orders": orders}, current_year=2026)
    assert data.orders["ordered_at"].tolist() == [pd.Timestamp("2024-04-01 10:00:00")] * 3


def test_duplicates_are_judged_on_every_source_column():
    events = pd.DataFrame(
        {
            "member_id": ["000123"] * 3,
            "event_at": ["2024-05-01 10:00"] * 3,
            "event_type": ["share"] * 3,
            "event_id": ["e1", "e2", "e2"],  # the brand's own id: rows 1 and 2 are distinct events
        }
    )
    data = from_frames({"members": _members(), "orders": _orders(), "events": events}, current_year=2026)
    assert len(data.events) == 2
    assert "events: dropped 1 exact duplicate row(s)" in data.warnings


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    from features.io import write_frame

    old = os.umask(0o022)
    try:
        path = write_frame(_members(), tmp_path / "members.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unreadable_files_are_contract_violations(tmp_path):
    _members().to_csv(tmp_path / "members.csv", index=False)
    (tmp_path / "orders.csv").write_text("")
    with pytest.raises(ContractError, match="orders: file is empty"):
        load_data(tmp_path)
    (tmp_path / "orders.csv").write_bytes("order_id,member_id,ordered_at,amount\no1,000123,2024-01-01,9\n备注".encode("gbk"))
    with pytest.raises(ContractError, match="orders: file is not UTF-8"):
        load_data(tmp_path)


def test_unknown_time_zone_is_refused():
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        from_frames({"members": _members(), "orders": _orders()}, timezone="Mars/Olympus")
