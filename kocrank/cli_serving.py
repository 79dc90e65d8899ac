"""`koc rank` (write the ranked invitation list) and `koc serve` (the authenticated API)."""

from __future__ import annotations

import datetime as dt
import enum
import getpass
import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from kocrank.console import make_console, print_top, progress_steps

logger = logging.getLogger(__name__)
console = make_console()


class ListFormat(enum.StrEnum):
    csv = "csv"
    xlsx = "xlsx"
    parquet = "parquet"


def who_is_running() -> str:
    """`user@host` recorded as who generated a list (the OS account; no secrets)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def rank_command(
    data: Annotated[Path, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")],
    as_of: Annotated[str, typer.Option("--as-of", metavar="YYYY-MM-DD[THH:MM]", help="Cutoff in ISO 8601 (business time); a date means local midnight.")],
    top: Annotated[int, typer.Option("--top", min=1, help="K: how many members to invite.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder of the list unit: <name>.csv/.xlsx/.parquet + <name>.meta.json.")],
    formats: Annotated[list[ListFormat] | None, typer.Option("--format", help="File format(s) of the list; repeat for several (default: csv and xlsx).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="models:/name@alias, models:/name/version, runs:/id/model or a path.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file (sections ranking and labels).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Print this many top rows.")] = 10,
    issue: Annotated[bool | None, typer.Option("--issue/--no-issue", help="Record as an immutable issued list (default: config ranking.issue).")] = None,
    issue_id: Annotated[str | None, typer.Option("--issue-id", help="Id of the issued list (default: koc-<as-of date>).")] = None,
    features: Annotated[Path | None, typer.Option("--features", help="Score from this `koc features` Parquet file (built from the same data, holding --as-of) instead of building the features.")] = None,
) -> None:
    """Rank eligible members at --as-of and write the top K (with quotas and exploration) to the folder --out."""
    from features.contract import load_data
    from kocrank.config import cache_dir, load_config
    from serving.config import parse_cutoff
    from serving.model_store import load_model
    from serving.output import check_output_folder, write_ranked_list
    from serving.rank import rank_members
    from training.fingerprint import cached_fingerprint

    cfg = load_config(config)
    chosen = [f.value for f in formats] if formats else ["csv", "xlsx"]
    check_output_folder(out, chosen)
    cutoff = parse_cutoff(as_of, cfg.timezone)
    with progress_steps(make_console(stderr=True), 4) as step:
        step("loading and checking the data")
        brand = load_data(data, timezone=cfg.timezone)
        step("loading the model")
        loaded = load_model(model or cfg.ranking.model_uri, tracking_uri, cfg.labels)
        step(f"ranking {len(brand.members):,} members")
        generated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        result = rank_members(
            brand, cutoff, loaded, top, cfg.ranking, cfg.labels,
            generated_at=generated_at, generated_by=who_is_running(), config_digest=cfg.digest(),
            data_fingerprint=cached_fingerprint(brand, cache_dir()), engine=cfg.engine, features_file=features,
        )
        step("writing the list")
        written = write_ranked_list(result.candidates, result.meta, out, chosen)
    if show:
        print_top(result, show, console)
    info = loaded.info
    console.print(
        f"model {info.name or info.uri} version {info.version or '-'}; wrote {len(result.candidates)} candidates "
        f"to {written.folder} ({', '.join(p.name for p in written.files.values())}, {written.sidecar.name}); "
        f"expected productive KOCs: {result.expected_productive:.1f}",
        markup=False, highlight=False,
    )
    if cfg.ranking.issue if issue is None else issue:
        from kocrank.cli_loop import issue_ranked_list

        issue_ranked_list(result, loaded, top, cfg, tracking_uri, issue_id)


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to bind.")] = 8000,
    insecure_local: Annotated[bool, typer.Option("--insecure-local", help="Allow no token (loopback hosts only).")] = False,
    public_docs: Annotated[bool, typer.Option("--public-docs", help="Serve /docs and /openapi.json without the token.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="Model URI (default: the config's, models:/koc-potential@champion).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data directory to rank at start-up.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="YYYY-MM-DD[THH:MM]", help="Cutoff in ISO 8601 (default: the day after the data ends).")] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="K of the list (default: config ranking.default_top).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")] = None,
    activation_log: Annotated[Path | None, typer.Option("--activation-log", help="Ops page activation log (default: activation_log.jsonl beside --data).")] = None,
) -> None:
    """Serve the API (/health, /model, /candidates, /score, /reload, /docs) and the ops page (/ops); token from KOC_API_TOKEN."""
    import uvicorn

    from kocrank.config import cache_dir, load_config
    from serving.api import TOKEN_ENV, RankingService, ServeSettings, check_serve_settings, create_app
    from serving.config import parse_cutoff

    cfg = load_config(config)
    token = os.environ.get(TOKEN_ENV)
    settings = ServeSettings(
        model_uri=model or cfg.ranking.model_uri,
        tracking_uri=tracking_uri,
        data_dir=data,
        as_of=parse_cutoff(as_of, cfg.timezone) if as_of else None,
        top=top,
        host=host,
        port=port,
        api_token=token,
        insecure_local=insecure_local,
        public_docs=public_docs,
        timezone=cfg.timezone,
        rank=cfg.ranking,
        labels=cfg.labels,
        config_digest=cfg.digest(),
        activation_log=activation_log,
        fingerprint_cache=cache_dir(),
        engine=cfg.engine,
    )
    check_serve_settings(settings)
    if settings.api_token is None:
        logger.warning("serving WITHOUT authentication on %s (--insecure-local)", host)
    service = RankingService(settings)
    with progress_steps(make_console(stderr=True), 2) as step:
        step("loading the data" if data else "no --data: serving the model card and /score only")
        service.load_data()
        step("loading the model and ranking")
        service.start()
    uvicorn.run(create_app(settings, service), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Add the `rank` and `serve` commands to the `koc` app."""
    app.command("rank")(rank_command)
    app.command("serve")(serve_command)


def _standalone() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    return app


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _standalone()()
