"""End to end on a simulated brand: train + register, `koc rank` to files, and a real uvicorn server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from support.worlds import SIM_AS_OF, free_port, stop, train_simulated_store, wait_until_up
from typer.testing import CliRunner

from kocrank.cli import app

pytestmark = pytest.mark.slow

TOKEN = "uvicorn-test-token"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return train_simulated_store(tmp_path_factory.mktemp("store"))


def _rank(store, out: Path, *extra: str):
    data_dir, tracking_uri, _, _ = store
    args = ["rank", "--data", str(data_dir), "--as-of", SIM_AS_OF, "--top", "30", "--out", str(out),
            "--tracking-uri", tracking_uri, "--show", "3", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_koc_rank_writes_a_deterministic_list(store, tmp_path):
    first = _rank(store, tmp_path / "a", "--format", "csv")
    _rank(store, tmp_path / "b", "--format", "csv")
    assert (tmp_path / "a" / "a.csv").read_bytes() == (tmp_path / "b" / "b.csv").read_bytes()
    assert "expected productive KOCs" in first.output
    listed = pd.read_csv(tmp_path / "a" / "a.csv", dtype={"member_id": str}, encoding="utf-8-sig")
    assert len(listed) == 30 and listed["rank"].tolist() == list(range(1, 31))
    assert listed["member_id"].str.len().eq(7).all()  # simulator ids keep their leading zeros
    assert listed["reason_1_zh"].notna().all() and listed["reason_1_en"].str.contains("[a-z]").all()
    assert listed["exploration"].sum() == 3  # default exploration share 0.1
    meta = json.loads((tmp_path / "a" / "a.meta.json").read_text())
    assert meta["list_id"].startswith("20250101-") and meta["generated_by"]
    assert meta["model"]["name"] == "koc-potential" and meta["model"]["version"] == "1"
    assert meta["model"]["run_id"] == store[3].run_id
    assert meta["expected_productive"] == pytest.approx(listed["score"].sum(), abs=1e-5)
    assert set(meta["exclusions"]) == {"no_consent", "blacklisted", "active_koc", "cooldown"}


def test_koc_rank_xlsx_and_bad_out(store, tmp_path):
    _rank(store, tmp_path / "list")  # default formats: csv and xlsx
    assert sorted(p.name for p in (tmp_path / "list").iterdir()) == ["list.csv", "list.meta.json", "list.xlsx"]
    assert set(pd.read_excel(tmp_path / "list" / "list.xlsx", sheet_name=None)) == {"list", "summary"}
    data_dir, tracking_uri, _, _ = store
    bad = CliRunner().invoke(app, ["rank", "--data", str(data_dir), "--as-of", SIM_AS_OF, "--top", "5",
                                   "--out", str(tmp_path / "list.txt"), "--tracking-uri", tracking_uri])
    assert bad.exit_code == 2 and "a ranked list is a folder" in bad.output
    assert not (tmp_path / "list.txt").exists()


def test_real_uvicorn_server_over_http(store, tmp_path):
    data_dir, tracking_uri, data, _ = store
    port = free_port()
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "KOC_API_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "kocrank.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--tracking-uri", tracking_uri, "--data", str(data_dir), "--as-of", SIM_AS_OF, "--top", "20"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_until_up(f"{base}/health", process, timeout=90)
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/candidates").status_code == 401
            assert client.get("/candidates", headers={"Authorization": "Bearer wrong"}).status_code == 401
            body = client.get("/candidates", headers=auth).json()
            assert body["count"] == 20 and body["model_version"] == "1" and body["target"] == "if_invited"  # the default target
            docs = client.get("/docs", headers=auth)
            assert docs.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in docs.text
            assert client.get("/static/docs/swagger-ui-bundle.js").status_code == 200
            ids = data.members["member_id"].head(100).tolist()
            scored = client.post("/score", json={"member_ids": [*ids, "no-such-member"]}, headers=auth).json()
            assert scored["unknown_ids"] == ["no-such-member"] and len(scored["results"]) == 100
            assert client.get("/model", headers=auth).json()["version"] == "1"
            assert client.post("/reload", headers=auth).json()["reloaded"] is True
    finally:
        stop(process)
        log.close()
    assert process.poll() is not None
