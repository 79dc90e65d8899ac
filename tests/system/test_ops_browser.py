"""The ops page in a real browser: Playwright driving the system Chromium against a real uvicorn server.

Covers login (a wrong token first), filtering, a member card, approving, excluding with a
reason and exporting the approved list as .xlsx; checks the activation log; writes a
screenshot of the list page to `test-artifacts/ops_list.png` (and the member card beside it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import openpyxl
import pytest
from support.worlds import AS_OF, build_world, fake_loaded, free_port

from serving.api import RankingService, ServeSettings, create_app
from serving.config import RankConfig

CHROMIUM = os.environ.get("KOC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TOKEN = "browser-test-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A uvicorn server in a thread over the hand-built world (a fake model: fast start)."""
    import uvicorn

    log_path = tmp_path_factory.mktemp("ops") / "activation_log.jsonl"
    settings = ServeSettings(
        api_token=TOKEN, as_of=AS_OF, activation_log=log_path,
        rank=RankConfig(default_top=20, exploration_share=0.0, alias_check_seconds=0),
    )
    service = RankingService(settings, loader=lambda uri, tracking: fake_loaded(), data=build_world())
    port = free_port()
    config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="ops-test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).json().get("ranking_available"):
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        raise TimeoutError("the ops test server did not start")
    yield base, service, log_path
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_login_filter_card_approve_exclude_export(server, browser, tmp_path):
    base, service, log_path = server
    candidates = service.ranking().candidates
    list_id = service.ranking().meta["list_id"]
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900}, locale="en-US")
    page = context.new_page()

    # login: the list needs a session; a wrong token is refused
    page.goto(f"{base}/ops/list")
    assert page.url.endswith("/ops/login")
    page.fill("input[name=name]", "Ops Tester")
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert "wrong token" in page.inner_text("[role=alert]")
    page.fill("input[name=name]", "Ops Tester")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ops/list")
    assert page.locator("table.list tbody tr").count() == len(candidates)
    assert "signed in as Ops Tester" in page.inner_text("header")

    # filter by the most common tier of the list
    tier = candidates["tier"].value_counts().idxmax()
    page.select_option("select[name=tier]", tier)
    page.click("form.filters button[type=submit]")
    page.wait_for_url(f"**/ops/list?*tier={tier}*")
    tiers = page.locator("table.list tbody td span.tier").all_inner_texts()
    assert tiers and set(tiers) == {tier} and len(tiers) == int((candidates["tier"] == tier).sum())
    page.click("text=clear")

    # member card: scores, value breakdown, reasons, recent activity
    first = candidates["member_id"].iloc[0]
    page.click(f"a[href='/ops/member/{first}']")
    card = page.inner_text("main")
    assert f"Member {first}" in card and "Value breakdown" in card and "Why invite" in card
    assert "Recent activity" in card
    page.screenshot(path=str(tmp_path / "member.png"), full_page=True)
    page.go_back()

    # approve two, exclude one with a reason
    approve, exclude = list(candidates["member_id"].iloc[:2]), candidates["member_id"].iloc[2]
    for member_id in approve:
        page.check(f"input[name=member_id][value='{member_id}']")
    page.click("button[value=approve]")
    page.wait_for_load_state()
    page.check(f"input[name=member_id][value='{exclude}']")
    page.fill("input[name=reason]", "already a brand ambassador")
    page.click("button[value=exclude]")
    page.wait_for_load_state()
    assert "2 approved" in page.inner_text(".counts") and "1 excluded" in page.inner_text(".counts")
    for member_id in approve:
        assert page.locator(f"tr:has(input[value='{member_id}'])").get_attribute("class") == "approved"
    assert "already a brand ambassador" in page.inner_text(f"tr:has(input[value='{exclude}'])")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "ops_list.png"
    page.screenshot(path=str(screenshot), full_page=True)
    (tmp_path / "member.png").replace(ARTIFACTS / "ops_member.png")
    assert screenshot.stat().st_size > 10_000

    # export the approved members as .xlsx
    with page.expect_download() as download_info:
        page.click("button[value=xlsx]")
    exported = tmp_path / "approved.xlsx"
    download_info.value.save_as(exported)
    sheet = openpyxl.load_workbook(exported)["list"]
    assert sorted(row[1].value for row in sheet.iter_rows(min_row=2)) == sorted(approve)

    # the activation log holds who did what to which members of which list
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    assert [r["action"] for r in records] == ["approve", "exclude", "export"]
    assert all(r["who"] == "Ops Tester" and r["list_id"] == list_id for r in records)
    assert records[0]["member_ids"] == approve and records[1]["member_ids"] == [exclude]
    assert records[1]["reason"] == "already a brand ambassador"
    assert sorted(records[2]["member_ids"]) == sorted(approve) and records[2]["format"] == "xlsx"

    # the session opens /docs in the browser too, with its assets served locally
    page.goto(f"{base}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert "kocrank" in page.inner_text(".swagger-ui .info") and "/candidates" in page.inner_text(".swagger-ui")
    context.close()
