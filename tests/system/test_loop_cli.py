"""The monthly loop through the real CLI: rank --issue (twice refused), outcomes, monitor, compare."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kocrank.cli import app
from serving.issued import IssuedStore, default_store_path

pytestmark = pytest.mark.slow


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, result.output


def test_issue_outcomes_monitor_compare(trained_store, tmp_path):
    data_dir, uri, _, _ = trained_store
    for as_of in ("2024-09-01", "2024-12-01"):
        code, out = run("rank", "--data", str(data_dir), "--as-of", as_of, "--top", "40", "--tracking-uri", uri,
                        "--issue", "--show", "0", "--out", str(tmp_path / f"list_{as_of}"))
        assert code == 0, out
        assert f"issued list koc-{as_of}" in out and "control group 2" in out
    code, out = run("rank", "--data", str(data_dir), "--as-of", "2024-09-01", "--top", "40", "--tracking-uri", uri,
                    "--issue", "--show", "0", "--out", str(tmp_path / "again"))
    assert code == 1 and "already issued" in out
    store = IssuedStore(default_store_path(uri))
    assert list(store.lists()["list_id"]) == ["koc-2024-09-01", "koc-2024-12-01"]

    code, out = run("outcomes", "--data", str(data_dir), "--tracking-uri", uri, "--out", str(tmp_path / "outcomes.json"))
    assert code == 0, out
    rows = {row["list_id"]: row for row in json.loads((tmp_path / "outcomes.json").read_text())}
    september, december = rows["koc-2024-09-01"], rows["koc-2024-12-01"]
    assert september["matured"] and not december["matured"]
    # the simulator invites by its own rule, so the list's status says how many were actually sent
    assert september["status"] in ("not sent",) or september["status"].startswith(("partly sent", "sent"))
    assert december["expected_productive"] > 0 and december["precision"] is None

    code, out = run("monitor", "--data", str(data_dir), "--as-of", "2024-12-01", "--tracking-uri", uri,
                    "--out", str(tmp_path / "monitor.html"), "--no-log")
    assert code in (0, 1), out
    assert ("retrain recommended" in out) == (code == 1)
    page = (tmp_path / "monitor.html").read_text()
    assert "feature drift vs training reference" in page and "data:image/png;base64," in page

    code, out = run("compare", "--challenger", "1", "--data", str(data_dir), "--tracking-uri", uri)
    if september["sent"] < 0.9 * september["invited"]:  # the simulator, not the list, chose who was invited
        assert code == 1 and "no off-policy evidence" in out
    else:  # the champion against itself: no win
        assert code == 0 and "does not win" in out, out
