"""FastAPI service over the ranked list: health, model card, candidates, scoring, reload.

`create_app(settings)` builds the app; the model is loaded once at start-up (lifespan) and
swapped atomically by `POST /reload` or when the registry alias moves. The alias is checked
at most every `alias_check_seconds`, in a background thread: requests keep being answered
from the current ranking until the new one is complete. Every route but `/health` needs
`Authorization: Bearer <token>` unless the server runs with `--insecure-local` on a loopback
address.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_validator

from features.build import EngineConfig
from features.contract import BrandData, load_data
from features.labels import EXCLUSION_RULES, LabelConfig
from serving.config import DEFAULT_MODEL_URI, RankConfig, default_cutoff
from serving.model_store import IncompatibleModelError, LoadedModel, ModelInfo, load_model, resolve_registered_version
from serving.output import split_reason, target_meaning, with_bilingual_reasons, write_csv, write_xlsx
from serving.rank import RankResult, explain_members, filter_candidates, lookup_members, rank_members
from training.fingerprint import cached_fingerprint

logger = logging.getLogger(__name__)

TOKEN_ENV = "KOC_API_TOKEN"


class ServeConfigError(ValueError):
    """The server settings are unsafe or incomplete; the message says how to fix them."""


class ServeSettings(BaseModel):
    """Everything the API needs; built by `koc serve` from options and the environment."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str | None = None
    data_dir: Path | None = None
    as_of: pd.Timestamp | None = Field(
        None, description="cutoff of the ranking, parsed once by the caller (serving.config.parse_cutoff); "
        "default: serving.config.default_cutoff of the data"
    )
    top: int | None = Field(None, ge=1, description="K of the list computed at start-up; default rank.default_top")
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: SecretStr | None = None
    insecure_local: bool = False
    public_docs: bool = Field(False, description="serve /docs and /openapi.json without the token")
    timezone: str = "Asia/Shanghai"
    rank: RankConfig = RankConfig()
    labels: LabelConfig = LabelConfig()
    config_digest: str | None = Field(None, description="digest of the full config (the CLI's), recorded on the list")
    activation_log: Path | None = Field(None, description="ops activation log; default activation_log.jsonl beside data_dir")
    session_secret: SecretStr | None = Field(None, description="signs ops session cookies; default: derived from the token")
    fingerprint_cache: Path | None = Field(
        None, description="folder caching each data file's fingerprint (training.fingerprint); none: hash once per start"
    )
    engine: EngineConfig = Field(EngineConfig(), description="DuckDB threads / memory limit / spill folder for features")

    @field_validator("as_of")
    @classmethod
    def _naive_timestamp(cls, value: pd.Timestamp | None) -> pd.Timestamp | None:
        if value is not None and (not isinstance(value, pd.Timestamp) or value.tzinfo is not None):
            raise ValueError("as_of must be a naive business-time pd.Timestamp (serving.config.parse_cutoff)")
        return value


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve_settings(settings: ServeSettings) -> None:
    """Refuse to serve without a token, unless explicitly insecure on a loopback address."""
    if settings.insecure_local and not is_loopback(settings.host):
        raise ServeConfigError(
            f"--insecure-local is only allowed on a loopback host (127.0.0.1, ::1, localhost), not {settings.host!r}"
        )
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    if token and not token.strip():
        raise ServeConfigError(f"the {TOKEN_ENV} token is only whitespace: set a real secret (e.g. `openssl rand -hex 32`)")
    if not token and not settings.insecure_local:
        raise ServeConfigError(
            f"no API token: set the {TOKEN_ENV} environment variable "
            "(or use --insecure-local for a development server on 127.0.0.1)"
        )


# --------------------------------------------------------------------------- service


@dataclass(frozen=True)
class _State:
    loaded: LoadedModel
    result: RankResult | None
    loaded_at: float


ModelLoader = Callable[[str, str | None], LoadedModel]
BackgroundRunner = Callable[[Callable[[], None]], None]


def run_in_daemon_thread(task: Callable[[], None]) -> None:
    """Default runner of alias checks: a daemon thread, so a check never delays a request."""
    threading.Thread(target=task, name="koc-alias-check", daemon=True).start()


class RankingService:
    """Holds the loaded model and the latest ranking; swaps both at once on reload.

    Requests read one immutable `_State` snapshot and never wait for a reload: the periodic
    alias check runs through `background` (a daemon thread by default; tests inject their own)
    and the new state replaces the old only once its ranking is complete.
    """

    def __init__(
        self,
        settings: ServeSettings,
        *,
        loader: ModelLoader | None = None,
        data: BrandData | None = None,
        version_resolver: Callable[[str, str | None], tuple[str | None, str | None]] = resolve_registered_version,
        clock: Callable[[], float] = time.monotonic,
        background: BackgroundRunner = run_in_daemon_thread,
    ) -> None:
        self.settings = settings
        self._loader = loader or functools.partial(load_model, label_cfg=settings.labels)
        self._data = data
        self._resolve_version = version_resolver
        self._clock = clock
        self._background = background
        self._reload_lock = threading.Lock()  # one load + rank at a time
        self._check_lock = threading.Lock()  # guards the two fields below
        self._check_running = False
        self._last_alias_check = 0.0
        self._check_idle = threading.Event()
        self._check_idle.set()
        self._state: _State | None = None
        self._fingerprint: dict[str, Any] | None = None

    # -- lifecycle
    @property
    def data(self) -> BrandData | None:
        """The brand data being ranked (None when the server was started without --data)."""
        return self._data

    @property
    def started(self) -> bool:
        return self._state is not None

    def load_data(self) -> None:
        """Load and check the data directory (once)."""
        if self._data is None and self.settings.data_dir is not None:
            self._data = load_data(self.settings.data_dir, self.settings.timezone)

    def start(self) -> None:
        """Load the data and the model once, and compute the ranking."""
        self.load_data()
        with self._reload_lock:
            self._state = self._build_state(self._loader(self.settings.model_uri, self.settings.tracking_uri))
            self._last_alias_check = self._clock()

    def data_fingerprint(self) -> dict[str, Any] | None:
        """The loaded data's fingerprint, computed once (the data does not change while serving)."""
        if self._data is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = cached_fingerprint(self._data, self.settings.fingerprint_cache)
        return self._fingerprint

    def as_of(self) -> pd.Timestamp | None:
        if self._data is None:
            return None
        if self.settings.as_of is not None:
            return self.settings.as_of
        return default_cutoff(self._data.data_end)

    def _build_state(self, loaded: LoadedModel) -> _State:
        result = None
        if self._data is not None:
            generated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            top = self.settings.top or self.settings.rank.default_top
            result = rank_members(
                self._data, self.as_of(), loaded, top, self.settings.rank, self.settings.labels,
                generated_at=generated_at, generated_by="koc serve", config_digest=self.settings.config_digest,
                data_fingerprint=self.data_fingerprint(), engine=self.settings.engine,
            )
        return _State(loaded=loaded, result=result, loaded_at=self._clock())

    def state(self) -> _State:
        if self._state is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the model is not loaded yet")
        return self._state

    def ranked_state(self) -> tuple[LoadedModel, RankResult]:
        """The model and the ranking it produced (one consistent snapshot); may start an alias check."""
        self.maybe_check_alias()
        state = self.state()
        if state.result is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "the server was started without --data, so there is no ranking"
            )
        return state.loaded, state.result

    def ranking(self) -> RankResult:
        return self.ranked_state()[1]

    # -- reload
    def reload(self, force: bool = True) -> dict[str, Any]:
        """Reload the model (always when `force`, else only if the alias points to a new version).

        Runs in the caller's thread; the current state keeps serving until the new model has
        been loaded and has ranked, then both are swapped in at once.
        """
        with self._reload_lock:
            previous = self.state().loaded.info
            if not force:
                current, _ = self._resolve_version(self.settings.model_uri, self.settings.tracking_uri)
                if current is None or current == previous.version:
                    return {"reloaded": False, "previous_version": previous.version, "version": previous.version}
            loaded = self._loader(self.settings.model_uri, self.settings.tracking_uri)
            self._state = self._build_state(loaded)
        logger.info("reloaded model %s: version %s -> %s", self.settings.model_uri, previous.version, loaded.info.version)
        return {"reloaded": True, "previous_version": previous.version, "version": loaded.info.version}

    def maybe_check_alias(self) -> None:
        """At most every `alias_check_seconds`, start a background check that reloads when the
        alias moved. Returns at once: the request is answered from the current state."""
        interval = self.settings.rank.alias_check_seconds
        if interval <= 0 or self._state is None:
            return
        with self._check_lock:
            if self._check_running or self._clock() - self._last_alias_check < interval:
                return
            self._check_running = True
            self._check_idle.clear()
        try:
            self._background(self._check_alias)
        except Exception as exc:  # e.g. no thread could be started: try again after the interval
            self._finish_check()
            logger.warning("could not start the alias check for %s: %s", self.settings.model_uri, exc)

    def _check_alias(self) -> None:
        try:
            self.reload(force=False)
        except Exception as exc:  # keep serving the loaded model (registry down, incompatible model, ...)
            logger.warning("alias check for %s failed: %s", self.settings.model_uri, exc)
        finally:
            self._finish_check()

    def _finish_check(self) -> None:
        # the interval counts from the end of a check, so a slow re-rank is not followed by another at once
        with self._check_lock:
            self._check_running = False
            self._last_alias_check = self._clock()
        self._check_idle.set()

    def wait_for_alias_check(self, timeout: float | None = None) -> bool:
        """Block until no alias check is running (True) or `timeout` seconds pass (False)."""
        return self._check_idle.wait(timeout)


# --------------------------------------------------------------------------- schemas


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: Literal["ok", "starting"]
    model_loaded: bool
    ranking_available: bool


class ModelResponse(BaseModel):
    uri: str
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None
    trained_at: str | None
    feature_set_version: str | None
    test_metrics: dict[str, float]
    target: str = Field(description="what the score predicts: observed | if_invited | uplift")
    score_meaning: str


class MemberProfile(BaseModel):
    """What ops reads about a member besides the score: the source material's value scores and segments."""

    consumption_value: float | None = Field(description="consumption value, 0-100")
    interaction_value: float | None = Field(description="interaction value, 0-100")
    content_value: float | None = Field(description="content value, 0-100")
    social_value: float | None = Field(description="social value, 0-100")
    rfm_segment: str | None
    trial_category: str | None = Field(description="suggested trial category: the member's strongest category")


class Reason(BaseModel):
    """One reason for the score: a feature that pushes it up, with the member's value and both languages."""

    feature: str | None = Field(description="registry feature name")
    value: float | str | None = Field(None, description="the member's value of the feature")
    contribution: float | None = Field(None, description="the feature's push on the model's log-odds (positive)")
    zh: str
    en: str


class Candidate(MemberProfile):
    rank: int
    member_id: str
    score: float = Field(description="calibrated probability; what it is a probability of: the response's score_meaning")
    percentile: float = Field(description="percentile of the score among eligible members")
    tier: Literal["A", "B", "C"]
    reasons: list[Reason]
    why_not_higher: str | None = None
    city_tier: int | None
    channel: str | None
    exploration: bool
    selection_probability: float


class CandidatesResponse(BaseModel):
    list_id: str
    as_of: str
    model_version: str | None
    target: str = Field(description="model target: observed | if_invited | uplift")
    score_meaning: str
    k: int
    expected_productive: float = Field(description="sum of scores of the returned candidates")
    total: int = Field(description="candidates matching the filters, before paging")
    offset: int
    count: int
    candidates: list[Candidate]


MemberId = Annotated[str, Field(min_length=1, max_length=128)]
MEMBER_ID_MAX_JSON_BYTES = 128 * 12 + 8  # 128 characters, each at worst a 12-byte JSON escape, quotes, comma, spaces


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member_ids: list[MemberId] = Field(min_length=1)


def score_request_model(limit: int) -> type[ScoreRequest]:
    """`ScoreRequest` with `member_ids` capped at the configured batch `limit` (shown in the OpenAPI schema)."""
    return create_model(
        "ScoreRequest", __base__=ScoreRequest, member_ids=(list[MemberId], Field(min_length=1, max_length=limit))
    )


def score_body_limit(limit: int) -> int:
    """Bytes a `/score` body of `limit` ids can reasonably take; larger bodies get 413 before they are parsed."""
    return 4096 + limit * MEMBER_ID_MAX_JSON_BYTES


class MemberScore(MemberProfile):
    member_id: str
    score: float
    eligible: bool
    exclusions: list[str] = Field(description="rules that exclude the member from invitation (empty when eligible)")
    percentile: float | None
    tier: Literal["A", "B", "C"] | None
    reasons: list[Reason]
    why_not_higher: str | None = None


class ScoreResponse(BaseModel):
    as_of: str
    model_version: str | None
    target: str = Field(description="model target: observed | if_invited | uplift")
    score_meaning: str
    results: list[MemberScore]
    unknown_ids: list[str] = Field(description="ids that are not members who joined before as_of")


class ReloadResponse(BaseModel):
    reloaded: bool
    previous_version: str | None
    version: str | None


def _clean(value: Any) -> Any:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def reason_objects(row: dict[str, Any], n: int) -> list[Reason]:
    """The member's reasons as objects: from the `reasons` column when `serving.reasons` provides it,
    else from the `reason_i` / `reason_feature_i` columns (split into Chinese and English)."""
    given = row.get("reasons")
    if isinstance(given, list | tuple) or (given is not None and hasattr(given, "tolist")):
        return [Reason(**{k: _clean(v) for k, v in dict(item).items() if k in Reason.model_fields}) for item in given]
    out = []
    for i in range(1, n + 1):
        text = row.get(f"reason_{i}")
        if not isinstance(text, str) or not text:
            continue
        zh, en = row.get(f"reason_{i}_zh"), row.get(f"reason_{i}_en")
        if not (isinstance(zh, str) and isinstance(en, str)):
            zh, en = split_reason(text)
        out.append(Reason(feature=_clean(row.get(f"reason_feature_{i}")), zh=zh, en=en))
    return out


_DETAIL_FIELDS = ("consumption_value", "interaction_value", "content_value", "social_value", "rfm_segment", "trial_category")


# --------------------------------------------------------------------------- app


UNAUTHORIZED = {401: {"description": "missing or invalid bearer token (or ops session)", "model": ErrorResponse}}
NOT_READY = {503: {"description": "the model is not loaded yet, or the server has no --data to rank", "model": ErrorResponse}}
SWAGGER_ASSETS = "/static/docs"


def _auth_dependency(settings: ServeSettings) -> Callable[..., None]:
    """Bearer token (constant-time check) or a logged-in ops session cookie (see `serving.ops`)."""
    bearer = HTTPBearer(auto_error=False, description=f"the token in the server's {TOKEN_ENV}")
    expected = settings.api_token.get_secret_value().encode() if settings.api_token else b""

    # a plain default (not Annotated) so the dependency resolves despite postponed annotations
    def verify(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if not expected:
            return  # --insecure-local on loopback (checked at start-up)
        if credentials is not None and credentials.scheme.lower() == "bearer":
            if secrets.compare_digest(credentials.credentials.encode(), expected):
                return
        elif "session" in request.scope and request.session.get("user"):
            return
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )

    return verify


def table_download(rows: pd.DataFrame, meta: dict[str, Any], fmt: str, filename: str) -> Response:
    """The rows as a formula-safe CSV (UTF-8 with BOM) or a formatted .xlsx download."""
    import tempfile

    people = with_bilingual_reasons(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{filename}.{fmt}"
        if fmt == "csv":
            write_csv(people, path)
            media = "text/csv; charset=utf-8"
        else:
            write_xlsx(people, meta, path)
            media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        body = path.read_bytes()
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}.{fmt}"'})


def candidate_items(rows: pd.DataFrame, n_reasons: int) -> list[Candidate]:
    """API objects for rows of the ranked list."""
    return [
        Candidate(
            **{key: _clean(row[key]) for key in ("rank", "member_id", "score", "percentile", "tier", "city_tier", "channel")},
            **{key: _clean(row[key]) for key in _DETAIL_FIELDS},
            reasons=reason_objects(row, n_reasons),
            why_not_higher=_clean(row.get("why_not_higher")),
            exploration=bool(row["exploration"]),
            selection_probability=float(row["selection_probability"]),
        )
        for row in rows.to_dict("records")
    ]


def _install_docs(app: FastAPI, settings: ServeSettings, authorized: list[Any]) -> None:
    """/openapi.json, /docs (Swagger UI 5) and /redoc (ReDoc 2), behind the token unless `public_docs`.

    The JavaScript and CSS come from the `fastapi-offline` package's static folder (Swagger UI,
    Apache-2.0; ReDoc, MIT), served by this server, so the pages work with no network. In a
    browser, the ops session cookie (log in at /ops/login) opens them."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import __file__ as offline_init

    guard = [] if settings.public_docs else authorized
    docs_errors = {} if settings.public_docs else UNAUTHORIZED
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=Path(offline_init).parent / "static"), name="docs-assets")

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard, responses=docs_errors)
    def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="kocrank API",
            swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    def redoc() -> Response:
        return get_redoc_html(
            openapi_url="/openapi.json", title="kocrank API", redoc_js_url=f"{SWAGGER_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{SWAGGER_ASSETS}/favicon.png", with_google_fonts=False,
        )


def create_app(settings: ServeSettings, service: RankingService | None = None) -> FastAPI:
    """The FastAPI app; `service` may be injected (tests), else one is built from `settings`."""
    check_serve_settings(settings)
    service = service or RankingService(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not service.started:
            service.start()
        yield

    app = FastAPI(
        title="kocrank",
        summary="Ranks a brand's members for invitation into its KOC programme",
        version="1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    authorized = [Depends(_auth_dependency(settings))]
    n_reasons = settings.rank.n_reasons
    _install_docs(app, settings, authorized)

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        state = service._state
        return HealthResponse(
            status="ok" if state else "starting",
            model_loaded=state is not None,
            ranking_available=state is not None and state.result is not None,
        )

    @app.get("/model", response_model=ModelResponse, dependencies=authorized, responses={**UNAUTHORIZED, **NOT_READY})
    def model_card() -> ModelResponse:
        service.maybe_check_alias()
        loaded = service.state().loaded
        info: ModelInfo = loaded.info
        target = str(getattr(loaded.model, "target_", "observed"))
        return ModelResponse(
            uri=info.uri, name=info.name, version=info.version, alias=info.alias, run_id=info.run_id,
            trained_at=info.trained_at, feature_set_version=info.feature_set_version, test_metrics=info.test_metrics,
            target=target, score_meaning=target_meaning(target),
        )

    table_formats = {
        200: {
            "description": "the page of candidates as JSON, or the filtered list as a CSV / .xlsx download (format=)",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        }
    }

    @app.get(
        "/candidates", response_model=CandidatesResponse, dependencies=authorized,
        responses={**table_formats, **UNAUTHORIZED, **NOT_READY},
    )
    def candidates(
        top: Annotated[int | None, Query(ge=1, description="only the first `top` of the list (after filters)")] = None,
        tier: Annotated[Literal["A", "B", "C"] | None, Query()] = None,
        city_tier: Annotated[int | None, Query(ge=1, le=6)] = None,
        offset: Annotated[int, Query(ge=0, le=10_000_000, description="page start (JSON only)")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="page size (JSON only)")] = 100,
        format: Annotated[Literal["json", "csv", "xlsx"], Query(description="json (paged), or the whole filtered list as a file")] = "json",  # noqa: A002
    ) -> Any:
        result = service.ranking()
        rows = filter_candidates(result.candidates, top=top, tier=tier, city_tier=city_tier)
        if format != "json":
            return table_download(rows, result.meta, format, f"koc_candidates_{result.meta.get('list_id', '')}")
        page = rows.iloc[offset: offset + limit]
        target = result.meta.get("target", "observed")
        return CandidatesResponse(
            list_id=result.meta.get("list_id", ""), as_of=result.meta["as_of"], model_version=result.meta["model"]["version"],
            target=target, score_meaning=target_meaning(target), k=result.meta["k"],
            expected_productive=float(rows["score"].sum()), total=len(rows), offset=offset, count=len(page),
            candidates=candidate_items(page, n_reasons),
        )

    limit = settings.rank.score_batch_limit

    @app.exception_handler(RequestValidationError)
    async def too_many_ids_is_413(request: Request, exc: RequestValidationError) -> Response:
        for error in exc.errors():
            # only the /score body has a member_ids field
            if error["type"] == "too_long" and tuple(error["loc"]) == ("body", "member_ids"):
                got = error.get("ctx", {}).get("actual_length")
                return JSONResponse(
                    {"detail": f"at most {limit} member ids per request" + (f", got {got}" if got is not None else "")},
                    status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                )
        return await request_validation_exception_handler(request, exc)

    def score(request: ScoreRequest) -> ScoreResponse:
        loaded, result = service.ranked_state()
        rows, unknown = lookup_members(result.scored, request.member_ids, result.positions)
        if len(rows):
            reasons = explain_members(loaded.model, result.features, rows["member_id"], n_reasons, result.population)
            rows = rows.join(reasons, on="member_id")
        results = [
            MemberScore(
                member_id=row["member_id"],
                score=float(row["score"]),
                eligible=bool(row["eligible"]),
                exclusions=[rule.removeprefix("excl_") for rule in EXCLUSION_RULES if row[rule]],
                percentile=_clean(row["percentile"]),
                tier=_clean(row["tier"]),
                reasons=reason_objects(row, n_reasons),
                why_not_higher=_clean(row.get("why_not_higher")),
                **{key: _clean(row[key]) for key in _DETAIL_FIELDS},
            )
            for row in rows.to_dict("records")
        ]
        target = result.meta.get("target", "observed")
        return ScoreResponse(
            as_of=result.meta["as_of"], model_version=result.meta["model"]["version"], target=target,
            score_meaning=target_meaning(target), results=results, unknown_ids=unknown,
        )

    # the body model depends on the configured limit, so it is built here; annotations in this
    # module are strings that FastAPI resolves in module globals, hence the explicit assignment
    score.__annotations__["request"] = score_request_model(limit)
    too_large = {413: {"description": f"more than {limit} member ids, or a body too large for them", "model": ErrorResponse}}
    app.post(
        "/score", response_model=ScoreResponse, dependencies=authorized, max_body_size=score_body_limit(limit),
        responses={
            **UNAUTHORIZED, **too_large, **NOT_READY,
            400: {"description": "the body cannot be read (not UTF-8 text)", "model": ErrorResponse},
        },
    )(score)

    @app.post(
        "/reload", response_model=ReloadResponse, dependencies=authorized,
        responses={**UNAUTHORIZED, **NOT_READY, 409: {"description": "the new model is incompatible", "model": ErrorResponse}},
    )
    def reload(force: bool = True) -> ReloadResponse:
        try:
            return ReloadResponse(**service.reload(force=force))
        except IncompatibleModelError as error:
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error

    from serving.ops import install_ops

    install_ops(app, settings, service)
    return app
