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
from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model

from features.contract import BrandData, load_data, parse_as_of
from features.labels import EXCLUSION_RULES, LabelConfig
from serving.config import DEFAULT_MODEL_URI, RankConfig
from serving.model_store import IncompatibleModelError, LoadedModel, ModelInfo, load_model, resolve_registered_version
from serving.rank import RankResult, explain_members, filter_candidates, lookup_members, rank_members

logger = logging.getLogger(__name__)

TOKEN_ENV = "KOC_API_TOKEN"


class ServeConfigError(ValueError):
    """The server settings are unsafe or incomplete; the message says how to fix them."""


class ServeSettings(BaseModel):
    """Everything the API needs; built by `koc serve` from options and the environment."""

    model_config = ConfigDict(frozen=True)

    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str | None = None
    data_dir: Path | None = None
    as_of: str | None = Field(None, description="cutoff of the ranking; default: the day after the data ends")
    top: int | None = Field(None, ge=1, description="K of the list computed at start-up; default rank.default_top")
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: SecretStr | None = None
    insecure_local: bool = False
    timezone: str = "Asia/Shanghai"
    rank: RankConfig = RankConfig()
    labels: LabelConfig = LabelConfig()


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

    # -- lifecycle
    @property
    def started(self) -> bool:
        return self._state is not None

    def start(self) -> None:
        """Load the data and the model once, and compute the ranking."""
        if self._data is None and self.settings.data_dir is not None:
            self._data = load_data(self.settings.data_dir, self.settings.timezone)
        with self._reload_lock:
            self._state = self._build_state(self._loader(self.settings.model_uri, self.settings.tracking_uri))
            self._last_alias_check = self._clock()

    def as_of(self) -> pd.Timestamp | None:
        if self._data is None:
            return None
        if self.settings.as_of:
            return parse_as_of(self.settings.as_of, self._data.timezone)
        return self._data.data_end.normalize() + pd.Timedelta(days=1)

    def _build_state(self, loaded: LoadedModel) -> _State:
        result = None
        if self._data is not None:
            generated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            top = self.settings.top or self.settings.rank.default_top
            result = rank_members(
                self._data, self.as_of(), loaded, top, self.settings.rank, self.settings.labels, generated_at=generated_at
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


class MemberProfile(BaseModel):
    """What ops reads about a member besides the score: the source material's value scores and segments."""

    consumption_value: float | None = Field(description="consumption value, 0-100")
    interaction_value: float | None = Field(description="interaction value, 0-100")
    content_value: float | None = Field(description="content value, 0-100")
    social_value: float | None = Field(description="social value, 0-100")
    rfm_segment: str | None
    trial_category: str | None = Field(description="suggested trial category: the member's strongest category")


class Candidate(MemberProfile):
    rank: int
    member_id: str
    score: float = Field(description="calibrated probability of becoming a productive KOC within the horizon")
    percentile: float = Field(description="percentile of the score among eligible members")
    tier: Literal["A", "B", "C"]
    reasons: list[str]
    city_tier: int | None
    channel: str | None
    exploration: bool
    selection_probability: float


class CandidatesResponse(BaseModel):
    as_of: str
    model_version: str | None
    k: int
    expected_productive: float = Field(description="sum of scores of the returned candidates")
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
    reasons: list[str]


class ScoreResponse(BaseModel):
    as_of: str
    model_version: str | None
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


def _reasons(row: dict[str, Any], n: int) -> list[str]:
    return [text for i in range(n) if (text := row.get(f"reason_{i + 1}")) and isinstance(text, str)]


_DETAIL_FIELDS = ("consumption_value", "interaction_value", "content_value", "social_value", "rfm_segment", "trial_category")


# --------------------------------------------------------------------------- app


def _auth_dependency(settings: ServeSettings) -> Callable[..., None]:
    bearer = HTTPBearer(auto_error=False, description=f"the token in the server's {TOKEN_ENV}")
    expected = settings.api_token.get_secret_value().encode() if settings.api_token else b""

    # a plain default (not Annotated) so the dependency resolves despite postponed annotations
    def verify(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if not expected:
            return  # --insecure-local on loopback (checked at start-up)
        given = credentials.credentials.encode() if credentials is not None else b""
        if credentials is None or credentials.scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return verify


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
    )
    app.state.service = service
    authorized = [Depends(_auth_dependency(settings))]
    n_reasons = settings.rank.n_reasons

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        state = service._state
        return HealthResponse(
            status="ok" if state else "starting",
            model_loaded=state is not None,
            ranking_available=state is not None and state.result is not None,
        )

    @app.get("/model", response_model=ModelResponse, dependencies=authorized)
    def model_card() -> ModelResponse:
        service.maybe_check_alias()
        info: ModelInfo = service.state().loaded.info
        return ModelResponse(
            uri=info.uri, name=info.name, version=info.version, alias=info.alias, run_id=info.run_id,
            trained_at=info.trained_at, feature_set_version=info.feature_set_version, test_metrics=info.test_metrics,
        )

    @app.get("/candidates", response_model=CandidatesResponse, dependencies=authorized)
    def candidates(
        top: Annotated[int | None, Query(ge=1)] = None,
        tier: Annotated[Literal["A", "B", "C"] | None, Query()] = None,
        city_tier: Annotated[int | None, Query(ge=1, le=6)] = None,
    ) -> CandidatesResponse:
        result = service.ranking()
        rows = filter_candidates(result.candidates, top=top, tier=tier, city_tier=city_tier)
        records = rows.to_dict("records")
        items = [
            Candidate(
                **{key: _clean(row[key]) for key in ("rank", "member_id", "score", "percentile", "tier", "city_tier", "channel")},
                **{key: _clean(row[key]) for key in _DETAIL_FIELDS},
                reasons=_reasons(row, n_reasons),
                exploration=bool(row["exploration"]),
                selection_probability=float(row["selection_probability"]),
            )
            for row in records
        ]
        return CandidatesResponse(
            as_of=result.meta["as_of"], model_version=result.meta["model"]["version"], k=result.meta["k"],
            expected_productive=float(rows["score"].sum()), count=len(items), candidates=items,
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
        rows, unknown = lookup_members(result.scored, request.member_ids)
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
                reasons=_reasons(row, n_reasons),
                **{key: _clean(row[key]) for key in _DETAIL_FIELDS},
            )
            for row in rows.to_dict("records")
        ]
        return ScoreResponse(
            as_of=result.meta["as_of"], model_version=result.meta["model"]["version"], results=results, unknown_ids=unknown
        )

    # the body model depends on the configured limit, so it is built here; annotations in this
    # module are strings that FastAPI resolves in module globals, hence the explicit assignment
    score.__annotations__["request"] = score_request_model(limit)
    app.post(
        "/score", response_model=ScoreResponse, dependencies=authorized, max_body_size=score_body_limit(limit)
    )(score)

    @app.post("/reload", response_model=ReloadResponse, dependencies=authorized)
    def reload(force: bool = True) -> ReloadResponse:
        try:
            return ReloadResponse(**service.reload(force=force))
        except IncompatibleModelError as error:
            raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error

    return app
