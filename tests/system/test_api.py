"""The FastAPI app in-process: auth, validation, batch limit, filters, reload and start-up refusal."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from support.worlds import AS_OF, build_world, fake_loaded
from typer.testing import CliRunner

from serving.api import (
    RankingService,
    ServeConfigError,
    ServeSettings,
    check_serve_settings,
    create_app,
    score_body_limit,
)
from serving.config import RankConfig
from serving.model_store import IncompatibleModelError

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeRegistry:
    """Loader + alias resolver whose champion version the test can move."""

    def __init__(self) -> None:
        self.version = "1"
        self.loads = 0

    def load(self, uri: str, tracking_uri: str | None) -> object:
        self.loads += 1
        return fake_loaded(version=self.version)

    def resolve(self, uri: str, tracking_uri: str | None) -> tuple[str, str]:
        return self.version, f"run{self.version}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ManualRunner:
    """Background runner that queues tasks until the test runs them (deterministic alias checks)."""

    def __init__(self) -> None:
        self.tasks: list = []

    def __call__(self, task) -> None:
        self.tasks.append(task)

    def run_all(self) -> None:
        while self.tasks:
            self.tasks.pop(0)()


@pytest.fixture(scope="module")
def world():
    return build_world()


def _client(world, registry=None, clock=None, background=None, **rank_overrides):
    registry = registry or FakeRegistry()
    rank = RankConfig(score_batch_limit=3, exploration_share=0.0, default_top=10, alias_check_seconds=30, **rank_overrides)
    settings = ServeSettings(api_token=TOKEN, as_of=AS_OF, rank=rank)
    service = RankingService(settings, loader=registry.load, data=world, version_resolver=registry.resolve,
                             clock=clock or FakeClock(), background=background or ManualRunner())
    return TestClient(create_app(settings, service))


@pytest.fixture(scope="module")
def client(world):
    with _client(world) as test_client:
        yield test_client


def test_health_is_open_everything_else_needs_the_token(client):
    assert client.get("/health").json() == {"status": "ok", "model_loaded": True, "ranking_available": True}
    for method, path, body in (("get", "/model", None), ("get", "/candidates", None), ("get", "/docs", None),
                               ("get", "/openapi.json", None),
                               ("post", "/score", {"member_ids": ["c001"]}), ("post", "/reload", None)):
        assert client.request(method, path, json=body).status_code == 401
        wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/model", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/model", headers=AUTH).status_code == 200


def test_model_card(client):
    card = client.get("/model", headers=AUTH).json()
    assert card["name"] == "koc-potential" and card["version"] == "1" and card["alias"] == "champion"
    assert card["run_id"] == "run1" and card["test_metrics"] == {"test_precision_at_100": 0.5}
    assert card["trained_at"]
    assert card["target"] == "observed" and "productive KOC" in card["score_meaning"]


def test_candidates_and_filters(client):
    body = client.get("/candidates", headers=AUTH).json()
    assert body["k"] == 10 and body["count"] == 10 and body["total"] == 10 and body["as_of"].startswith("2026-06-01")
    assert body["target"] == "observed" and body["list_id"].startswith("20260601-")
    ranks = [c["rank"] for c in body["candidates"]]
    assert ranks == list(range(1, 11))
    assert body["expected_productive"] == pytest.approx(sum(c["score"] for c in body["candidates"]))
    assert all(len(c["reasons"]) >= 1 for c in body["candidates"])
    first = body["candidates"][0]["reasons"][0]
    assert first["feature"] and first["zh"] and first["en"] and " / " not in first["en"]
    page = client.get("/candidates", params={"offset": 4, "limit": 3}, headers=AUTH).json()
    assert [c["rank"] for c in page["candidates"]] == [5, 6, 7] and page["total"] == 10 and page["offset"] == 4
    top3 = client.get("/candidates", params={"top": 3}, headers=AUTH).json()
    assert [c["member_id"] for c in top3["candidates"]] == [c["member_id"] for c in body["candidates"][:3]]
    tier_b = client.get("/candidates", params={"tier": "B"}, headers=AUTH).json()["candidates"]
    assert all(c["tier"] == "B" for c in tier_b)
    wanted = body["candidates"][-1]["city_tier"]
    city = client.get("/candidates", params={"city_tier": wanted}, headers=AUTH).json()["candidates"]
    assert len(city) == sum(c["city_tier"] == wanted for c in body["candidates"])
    assert city and all(c["city_tier"] == wanted for c in city)
    assert client.get("/candidates", params={"tier": "Z"}, headers=AUTH).status_code == 422
    assert client.get("/candidates", params={"top": 0}, headers=AUTH).status_code == 422


def test_score_known_unknown_and_ineligible(client):
    response = client.post("/score", json={"member_ids": ["c003", "ghost", "m_black"]}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["unknown_ids"] == ["ghost"]
    by_id = {r["member_id"]: r for r in body["results"]}
    assert by_id["c003"]["eligible"] and by_id["c003"]["exclusions"] == [] and by_id["c003"]["tier"] in "ABC"
    assert 0.0 < by_id["c003"]["score"] < 1.0 and by_id["c003"]["reasons"]
    assert not by_id["m_black"]["eligible"] and "blacklisted" in by_id["m_black"]["exclusions"]
    assert by_id["m_black"]["tier"] is None and by_id["m_black"]["percentile"] is None


def test_score_validation_and_batch_limit(client):
    for bad in ({"ids": ["c001"]}, {"member_ids": []}, {"member_ids": "c001"}, {"member_ids": [""]},
                {"member_ids": ["c001"], "extra": 1}):
        assert client.post("/score", json=bad, headers=AUTH).status_code == 422, bad
    assert client.post("/score", content=b"not json", headers={**AUTH, "content-type": "application/json"}).status_code == 422
    # a body that is not UTF-8 cannot be read: 400, as the schema says (found by schemathesis)
    unreadable = client.post("/score", content=b"\xff\xfe\x80", headers={**AUTH, "content-type": "application/json"})
    assert unreadable.status_code == 400
    assert "400" in client.get("/openapi.json", headers=AUTH).json()["paths"]["/score"]["post"]["responses"]
    too_many = client.post("/score", json={"member_ids": ["c001", "c002", "c003", "c004"]}, headers=AUTH)
    assert too_many.status_code == 413 and too_many.json()["detail"] == "at most 3 member ids per request, got 4"
    # the limit is part of the request schema
    schema = client.get("/openapi.json", headers=AUTH).json()["components"]["schemas"]["ScoreRequest"]
    assert schema["properties"]["member_ids"]["maxItems"] == 3
    # a body far beyond what 3 ids can take is refused before it is parsed as JSON
    huge = b'{"member_ids": [' + b" " * score_body_limit(3) + b'"c001"]}'
    response = client.post("/score", content=huge, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413
    # ... also when it arrives without a Content-Length (chunked)
    chunks = (b'{"member_ids": [' + b" " * 1000 if i == 0 else b" " * 1000 for i in range(score_body_limit(3) // 1000 + 2))
    response = client.post("/score", content=chunks, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413
    # long but legitimate bodies (three 128-character ids, escaped) are accepted
    long_ids = ["\u00e9" * 128, "c002", "c003"]
    ok = client.post("/score", json={"member_ids": long_ids}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["unknown_ids"] == [long_ids[0]]


def test_openapi_docs_are_served_behind_the_token_with_local_assets(client):
    import re

    for page in ("/docs", "/redoc"):
        docs = client.get(page, headers=AUTH)
        assert docs.status_code == 200
        assets = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", docs.text)
        assets += re.findall(r"url: '([^']+)'", docs.text)
        assert len(assets) >= 3 and not [a for a in assets if "://" in a or a.startswith("//")], assets  # no CDN
        for asset in assets:
            fetched = client.get(asset, headers=AUTH)
            assert fetched.status_code == 200 and len(fetched.content) > 100, (page, asset)
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert {"/health", "/model", "/candidates", "/score", "/reload"} <= set(spec["paths"])
    assert "401" in spec["paths"]["/candidates"]["get"]["responses"]
    assert {"401", "413"} <= set(spec["paths"]["/score"]["post"]["responses"])


def test_public_docs_setting_opens_only_the_docs(world):
    settings = ServeSettings(api_token=TOKEN, as_of=AS_OF, public_docs=True, rank=RankConfig(default_top=3))
    registry = FakeRegistry()
    service = RankingService(settings, loader=registry.load, data=world, version_resolver=registry.resolve)
    with TestClient(create_app(settings, service)) as client:
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
        assert client.get("/candidates").status_code == 401


def test_candidates_as_csv_and_xlsx_downloads(client, tmp_path):
    csv_response = client.get("/candidates", params={"format": "csv", "tier": "A"}, headers=AUTH)
    assert csv_response.status_code == 200 and csv_response.content.startswith(b"\xef\xbb\xbf")
    assert "attachment" in csv_response.headers["content-disposition"]
    listed = client.get("/candidates", params={"tier": "A"}, headers=AUTH).json()
    (tmp_path / "c.csv").write_bytes(csv_response.content)
    import pandas as pd

    back = pd.read_csv(tmp_path / "c.csv", dtype={"member_id": str}, encoding="utf-8-sig")
    assert back["member_id"].tolist() == [c["member_id"] for c in listed["candidates"]]
    xlsx = client.get("/candidates", params={"format": "xlsx"}, headers=AUTH)
    (tmp_path / "c.xlsx").write_bytes(xlsx.content)
    assert set(pd.read_excel(tmp_path / "c.xlsx", sheet_name=None)) == {"list", "summary"}


def test_reload_and_alias_check_pick_up_a_new_champion(world):
    registry, clock, runner = FakeRegistry(), FakeClock(), ManualRunner()
    with _client(world, registry, clock, runner) as client:
        assert registry.loads == 1
        assert client.post("/reload", params={"force": False}, headers=AUTH).json() == {
            "reloaded": False, "previous_version": "1", "version": "1"}
        registry.version = "2"
        # within the check interval the old model keeps serving and no check is started
        clock.now += 10
        assert client.get("/model", headers=AUTH).json()["version"] == "1"
        assert runner.tasks == []
        # after it, a request starts one check in the background and is answered from the old ranking
        clock.now += 30
        assert client.get("/model", headers=AUTH).json()["version"] == "1"
        assert client.get("/candidates", headers=AUTH).json()["model_version"] == "1"
        assert len(runner.tasks) == 1 and registry.loads == 1
        runner.run_all()
        assert registry.loads == 2
        assert client.get("/model", headers=AUTH).json()["version"] == "2"
        assert client.get("/candidates", headers=AUTH).json()["model_version"] == "2"
        # the interval counts from the end of the last check
        assert runner.tasks == []
        registry.version = "3"
        assert client.post("/reload", headers=AUTH).json() == {"reloaded": True, "previous_version": "2", "version": "3"}


def test_alias_check_ranks_in_a_thread_while_requests_are_answered(world):
    """The re-rank after an alias move happens off the request thread; the old ranking serves meanwhile."""
    registry, clock = FakeRegistry(), FakeClock()
    release, loading = threading.Event(), threading.Event()
    plain_load = registry.load

    def slow_load(uri, tracking_uri):
        if registry.loads >= 1:  # start-up loads at once; the reload waits for the test
            loading.set()
            assert release.wait(10)
        return plain_load(uri, tracking_uri)

    registry.load = slow_load
    settings = ServeSettings(api_token=TOKEN, as_of=AS_OF,
                             rank=RankConfig(exploration_share=0.0, default_top=10, alias_check_seconds=30))
    service = RankingService(settings, loader=registry.load, data=world, version_resolver=registry.resolve, clock=clock)
    with TestClient(create_app(settings, service)) as client:
        registry.version = "2"
        clock.now += 31
        try:
            started = time.monotonic()
            assert client.get("/candidates", headers=AUTH).json()["model_version"] == "1"
            assert loading.wait(10)  # the check is now loading the new model in its thread
            assert client.post("/score", json={"member_ids": ["c003"]}, headers=AUTH).json()["model_version"] == "1"
            assert client.get("/model", headers=AUTH).json()["version"] == "1"
            assert time.monotonic() - started < 5  # no request waited for the reload
        finally:
            release.set()
        assert service.wait_for_alias_check(10)
        assert client.get("/candidates", headers=AUTH).json()["model_version"] == "2"


def test_incompatible_model_is_refused_and_the_old_one_keeps_serving(world):
    registry, clock, runner = FakeRegistry(), FakeClock(), ManualRunner()
    plain_load = registry.load

    def load(uri, tracking_uri):
        if registry.version == "2":
            raise IncompatibleModelError("model v2 was trained on feature set version 0.9.0 ...; retrain with `koc train`")
        return plain_load(uri, tracking_uri)

    registry.load = load
    with _client(world, registry, clock, runner) as client:
        registry.version = "2"
        refused = client.post("/reload", headers=AUTH)
        assert refused.status_code == 409 and "retrain" in refused.json()["detail"]
        clock.now += 31
        client.get("/model", headers=AUTH)
        runner.run_all()  # the background check fails, logs, and leaves the old model in place
        assert client.get("/model", headers=AUTH).json()["version"] == "1"
        assert client.get("/candidates", headers=AUTH).json()["model_version"] == "1"


def test_refuses_unsafe_settings():
    with pytest.raises(ServeConfigError, match="KOC_API_TOKEN"):
        check_serve_settings(ServeSettings())
    with pytest.raises(ServeConfigError, match="KOC_API_TOKEN"):
        create_app(ServeSettings(api_token=""))
    with pytest.raises(ServeConfigError, match="only whitespace"):
        check_serve_settings(ServeSettings(api_token=" \t\n "))
    with pytest.raises(ServeConfigError, match="loopback"):
        check_serve_settings(ServeSettings(host="0.0.0.0", insecure_local=True))
    with pytest.raises(ServeConfigError, match="loopback"):
        check_serve_settings(ServeSettings(host="10.1.2.3", insecure_local=True, api_token=TOKEN))
    for host in ("127.0.0.1", "::1", "localhost"):
        check_serve_settings(ServeSettings(host=host, insecure_local=True))
    check_serve_settings(ServeSettings(host="0.0.0.0", api_token=TOKEN))


def test_insecure_local_needs_no_token(world):
    settings = ServeSettings(insecure_local=True, as_of=AS_OF, rank=RankConfig(default_top=5))
    registry = FakeRegistry()
    service = RankingService(settings, loader=registry.load, data=world, version_resolver=registry.resolve)
    with TestClient(create_app(settings, service)) as client:
        assert client.get("/candidates").json()["count"] == 5


def test_serve_command_refuses_to_start_without_token(monkeypatch):
    from kocrank.cli import app

    monkeypatch.delenv("KOC_API_TOKEN", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2 and "error (usage)" in result.output and "KOC_API_TOKEN" in result.output
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--insecure-local", "--port", "1"])
    assert result.exit_code == 2 and "loopback" in result.output
    monkeypatch.setenv("KOC_API_TOKEN", "   ")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2 and "only whitespace" in result.output
