"""The ops page without a browser: sessions, CSRF, decisions, the member card and the activation log."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from support.worlds import AS_OF, build_world, fake_loaded

from serving.api import RankingService, ServeSettings, create_app
from serving.config import RankConfig
from serving.ops.activation import ActivationLog

TOKEN = "ops-token-0123456789abcdef"


@pytest.fixture
def ops(tmp_path):
    log_path = tmp_path / "activation_log.jsonl"
    settings = ServeSettings(api_token=TOKEN, as_of=AS_OF, activation_log=log_path,
                             rank=RankConfig(default_top=8, exploration_share=0.0, alias_check_seconds=0))
    service = RankingService(settings, loader=lambda uri, tracking: fake_loaded(), data=build_world())
    with TestClient(create_app(settings, service), follow_redirects=False) as client:
        yield client, service, log_path


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(client) -> str:
    token = csrf_of(client.get("/ops/login").text)
    response = client.post("/ops/login", data={"name": "Lin", "token": TOKEN, "csrf": token})
    assert response.status_code == 303 and response.headers["location"] == "/ops/list"
    return csrf_of(client.get("/ops/list").text)


def test_pages_need_a_session_and_forms_need_the_csrf_token(ops):
    client, service, log_path = ops
    assert client.get("/ops/list").headers["location"] == "/ops/login"
    assert client.get("/candidates").status_code == 401  # no session, no token
    page = client.get("/ops/login")
    # a login form posted without (or with another page's) CSRF token is refused
    assert client.post("/ops/login", data={"name": "Lin", "token": TOKEN, "csrf": "forged"}).status_code == 403
    wrong = client.post("/ops/login", data={"name": "Lin", "token": "nope", "csrf": csrf_of(page.text)})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    csrf = login(client)
    assert client.get("/candidates").status_code == 200  # the session opens the API in the browser
    member = service.ranking().candidates["member_id"].iloc[0]
    forged = client.post("/ops/decide", data={"action": "approve", "member_id": member, "csrf": "forged"})
    assert forged.status_code == 403 and not log_path.exists()
    ok = client.post("/ops/decide", data={"action": "approve", "member_id": member, "csrf": csrf})
    assert ok.status_code == 303
    assert client.post("/ops/export", data={"format": "csv", "csrf": "forged"}).status_code == 403
    assert [r["action"] for r in ActivationLog(log_path).records()] == ["approve"]
    # signing out ends the session
    assert client.post("/ops/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/ops/list").headers["location"] == "/ops/login"


def test_decisions_filters_card_and_export(ops):
    client, service, log_path = ops
    csrf = login(client)
    result = service.ranking()
    ids = result.candidates["member_id"].tolist()
    # an exclusion needs a reason; members must be on the list
    no_reason = client.post("/ops/decide", data={"action": "exclude", "member_id": ids[0], "csrf": csrf})
    assert "needs+a+reason" in no_reason.headers["location"] and not log_path.exists()
    assert client.post("/ops/decide", data={"action": "approve", "member_id": "ghost", "csrf": csrf}).status_code == 400
    client.post("/ops/decide", data={"action": "approve", "member_id": ids[:3], "csrf": csrf})
    client.post("/ops/decide", data={"action": "exclude", "member_id": ids[1], "reason": "works for a competitor",
                                     "csrf": csrf})
    decisions = ActivationLog(log_path).decisions(result.meta["list_id"])
    assert {m: d["status"] for m, d in decisions.items()} == {ids[0]: "approved", ids[1]: "excluded", ids[2]: "approved"}
    approved_page = client.get("/ops/list", params={"decision": "approved"}).text
    assert approved_page.count('name="member_id"') == 2
    tier = result.candidates["tier"].iloc[0]
    filtered = client.get("/ops/list", params={"tier": tier, "min_score": "0"}).text
    assert filtered.count('name="member_id"') == int((result.candidates["tier"] == tier).sum())
    card = client.get(f"/ops/member/{ids[1]}").text
    assert "Value breakdown" in card and "works for a competitor" in card and "Recent activity" in card
    assert client.get("/ops/member/ghost").status_code == 404
    export = client.post("/ops/export", data={"format": "csv", "csrf": csrf})
    assert export.status_code == 200 and export.content.startswith(b"\xef\xbb\xbf")
    exported = [line.split(",")[1].strip('"') for line in export.content.decode("utf-8-sig").splitlines()[1:]]
    assert sorted(exported) == sorted([ids[0], ids[2]])
    last = ActivationLog(log_path).records()[-1]
    assert last["action"] == "export" and last["who"] == "Lin" and sorted(last["member_ids"]) == sorted(exported)


def test_activation_log_survives_a_torn_last_line(tmp_path):
    log = ActivationLog(tmp_path / "log.jsonl", clock=lambda: "2026-06-01T00:00:00+00:00")
    log.append("approve", "Lin", "L1", ["a", "b"])
    with open(tmp_path / "log.jsonl", "ab") as fh:  # a write cut short by a crash
        fh.write(b'{"action": "approve", "who": "Li')
    assert [r["member_ids"] for r in log.records()] == [["a", "b"]]
    log.append("exclude", "Lin", "L1", ["b"], reason="duplicate account")
    lines = (tmp_path / "log.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["action"] == "exclude" and len(log.records()) == 2
    assert log.decisions("L1") == {
        "a": {"status": "approved", "who": "Lin", "at": "2026-06-01T00:00:00+00:00", "reason": None},
        "b": {"status": "excluded", "who": "Lin", "at": "2026-06-01T00:00:00+00:00", "reason": "duplicate account"},
    }
    with pytest.raises(ValueError, match="needs a reason"):
        log.append("exclude", "Lin", "L1", ["a"])
