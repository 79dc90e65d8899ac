"""The hand-built world the ranking and API tests share is valid and complete."""

from support.worlds import SPECIAL, build_world


def test_world_is_valid_and_has_every_special_member():
    data = build_world(n_crowd=5)
    assert set(SPECIAL) <= set(data.members["member_id"])
    assert data.members["member_id"].dtype == "str"


