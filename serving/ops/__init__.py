"""The ops page: review the current list, approve or exclude members, export the approved list.

Server-rendered (FastAPI + Jinja2 templates, plain HTML forms, one stylesheet; no JavaScript
build). Mounted by `serving.api.create_app` under `/ops`:

- `/ops/login`: a name (recorded in the activation log) and the server's API token; on success
  a signed session cookie (`koc_ops`, HttpOnly, SameSite=Strict, 8 hours). The same session
  also opens `/docs` and the JSON API in the browser.
- `/ops/list`: the current ranked list with filters (tier, city tier, channel, minimum score,
  decision), check boxes and approve / exclude (with a reason) buttons.
- `/ops/member/{id}`: a member card: scores, value breakdown, reasons, recent activity.
- `/ops/export`: the approved members of the list as .xlsx or CSV.

Every form carries a per-session CSRF token checked on POST. Every approval, exclusion and
export is appended to the activation log (`serving.ops.activation`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd
from fastapi import FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from serving.ops.activation import ActivationLog
from serving.ops.cards import member_card

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "koc_ops"
SESSION_SECONDS = 8 * 3600
DECISION_FILTERS = ("approved", "excluded", "pending")


def session_secret(settings: Any) -> str:
    """Key that signs session cookies: the configured one, else derived from the API token (stable
    across restarts, changes when the token changes), else random (insecure-local, per process)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value()
    if settings.api_token is not None:
        token = settings.api_token.get_secret_value().encode()
        return hmac.new(token, b"kocrank ops session", hashlib.sha256).hexdigest()
    return secrets.token_hex(32)


def activation_log_path(settings: Any) -> Path:
    if settings.activation_log is not None:
        return Path(settings.activation_log)
    if settings.data_dir is not None:
        return Path(settings.data_dir).absolute().parent / "activation_log.jsonl"
    return Path("activation_log.jsonl").absolute()


def install_ops(app: FastAPI, settings: Any, service: Any) -> None:
    """Add the session middleware, the `/ops` pages and their static files to `app`."""
    app.add_middleware(
        SessionMiddleware, secret_key=session_secret(settings), session_cookie=SESSION_COOKIE,
        max_age=SESSION_SECONDS, same_site="strict", https_only=False,
    )
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/ops/static", StaticFiles(directory=HERE / "static"), name="ops-static")
    log = ActivationLog(activation_log_path(settings))
    app.state.activation_log = log
    expected = settings.api_token.get_secret_value() if settings.api_token else ""
    n_reasons = settings.rank.n_reasons

    def csrf_token(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return request.session["csrf"]

    def check_csrf(request: Request, given: str) -> None:
        if not secrets.compare_digest(str(request.session.get("csrf", "")), given or "-"):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the form has expired or did not come from this page; reload it")

    def user(request: Request) -> str | None:
        return request.session.get("user")

    def login_redirect() -> RedirectResponse:
        return RedirectResponse("/ops/login", status_code=status.HTTP_303_SEE_OTHER)

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"user": user(request), "csrf": csrf_token(request), **context}
        )

    @app.get("/ops", include_in_schema=False)
    def ops_home(request: Request) -> Response:
        return RedirectResponse("/ops/list" if user(request) else "/ops/login", status_code=status.HTTP_303_SEE_OTHER)

    @app.get("/ops/login", include_in_schema=False)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", error=None)

    @app.post("/ops/login", include_in_schema=False)
    def login(request: Request, name: str = Form(""), token: str = Form(""), csrf: str = Form("")) -> Response:
        check_csrf(request, csrf)
        name = name.strip()[:80]
        ok = secrets.compare_digest(token.encode(), expected.encode()) if expected else True
        if not ok or not name:
            error = "enter your name" if ok else "wrong token"
            logger.warning("ops login refused for %r: %s", name, error)
            response = page(request, "login.html", error=error)
            response.status_code = status.HTTP_401_UNAUTHORIZED
            return response
        request.session.clear()
        request.session.update({"user": name, "csrf": secrets.token_urlsafe(32)})
        return RedirectResponse("/ops/list", status_code=status.HTTP_303_SEE_OTHER)

    @app.post("/ops/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")) -> Response:
        check_csrf(request, csrf)
        request.session.clear()
        return login_redirect()

    @app.get("/ops/list", include_in_schema=False)
    def list_page(
        request: Request,
        tier: str = "",
        city_tier: str = "",
        channel: str = "",
        min_score: str = "",
        decision: str = "",
    ) -> Response:
        if not user(request):
            return login_redirect()
        result = service.ranking()
        list_id = result.meta["list_id"]
        decisions = log.decisions(list_id)
        rows = result.candidates
        filters = {"tier": tier, "city_tier": city_tier, "channel": channel, "min_score": min_score, "decision": decision}
        mask = pd.Series(True, index=rows.index)
        if tier in ("A", "B", "C"):
            mask &= rows["tier"] == tier
        if city_tier.isdigit():
            mask &= (rows["city_tier"] == int(city_tier)).fillna(False).astype(bool)
        if channel:
            mask &= (rows["channel"] == channel).fillna(False).astype(bool)
        try:
            if min_score.strip():
                mask &= rows["score"] >= float(min_score) / 100.0
        except ValueError:
            filters["min_score"] = ""
        status_of = rows["member_id"].map(lambda m: decisions.get(m, {}).get("status", "pending"))
        if decision in DECISION_FILTERS:
            mask &= status_of == decision
        shown = rows.loc[mask]
        items = []
        for row in shown.to_dict("records"):
            reasons = [r for i in range(1, n_reasons + 1) if isinstance(r := row.get(f"reason_{i}"), str)]
            items.append({**row, "decision": decisions.get(row["member_id"], {}), "reason_texts": reasons})
        channels = sorted({c for c in rows["channel"].dropna().astype(str)})
        counts = status_of.value_counts().to_dict()
        return page(
            request, "list.html", meta=result.meta, items=items, filters=filters, channels=channels,
            counts={k: int(counts.get(k, 0)) for k in DECISION_FILTERS}, total=len(rows),
            back=urlencode({k: v for k, v in filters.items() if v}),
        )

    @app.post("/ops/decide", include_in_schema=False)
    async def decide(request: Request) -> Response:
        if not user(request):
            return login_redirect()
        form = await request.form()
        check_csrf(request, str(form.get("csrf", "")))
        action = str(form.get("action", ""))
        member_ids = [str(m) for m in form.getlist("member_id")]
        reason = str(form.get("reason", "")).strip()[:500] or None
        back = str(form.get("back", ""))
        result = service.ranking()
        listed = set(result.candidates["member_id"])
        unknown = [m for m in member_ids if m not in listed]
        if action not in ("approve", "exclude") or unknown:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown action or members not on the list: {unknown[:5]}")
        if not member_ids:
            return RedirectResponse(f"/ops/list?{back}&note=select+members+first", status_code=status.HTTP_303_SEE_OTHER)
        if action == "exclude" and not reason:
            return RedirectResponse(f"/ops/list?{back}&note=an+exclusion+needs+a+reason", status_code=status.HTTP_303_SEE_OTHER)
        log.append(action, user(request), result.meta["list_id"], member_ids, reason=reason)
        return RedirectResponse(f"/ops/list?{back}", status_code=status.HTTP_303_SEE_OTHER)

    @app.get("/ops/member/{member_id}", include_in_schema=False)
    def member_page(request: Request, member_id: str) -> Response:
        if not user(request):
            return login_redirect()
        loaded, result = service.ranked_state()
        card = member_card(loaded.model, result, service.data, member_id, n_reasons)
        if card is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no member {member_id!r} joined before the cutoff")
        decision = log.decisions(result.meta["list_id"]).get(member_id, {})
        return page(request, "member.html", meta=result.meta, card=card, decision=decision)

    @app.post("/ops/export", include_in_schema=False)
    def export(request: Request, csrf: str = Form(""), format: str = Form("xlsx")) -> Response:  # noqa: A002
        if not user(request):
            return login_redirect()
        check_csrf(request, csrf)
        if format not in ("xlsx", "csv"):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "format must be xlsx or csv")
        from serving.api import table_download

        result = service.ranking()
        list_id = result.meta["list_id"]
        approved = [m for m, d in log.decisions(list_id).items() if d["status"] == "approved"]
        rows = result.candidates.loc[result.candidates["member_id"].isin(approved)]
        log.append("export", user(request), list_id, rows["member_id"].tolist(), fmt=format)
        meta = {**result.meta, "generated_by": user(request), "exported": "approved members only"}
        return table_download(rows, meta, format, f"koc_approved_{list_id}")
