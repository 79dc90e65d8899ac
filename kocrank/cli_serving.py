"""`koc rank` (write the ranked invitation list) and `koc serve` (the authenticated API)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kocrank.console import make_console

logger = logging.getLogger(__name__)
console = make_console()


def rank_command(
    data: Annotated[Path, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")],
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff date/time (business time); a date means local midnight.")],
    top: Annotated[int, typer.Option("--top", min=1, help="K: how many members to invite.")],
    out: Annotated[Path, typer.Option("--out", help="Output file: .csv, .parquet or .xlsx (sidecar <out>.meta.json).")],
    model: Annotated[str | None, typer.Option("--model", help="models:/name@alias, models:/name/version, runs:/id/model or a path.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file (sections ranking and labels).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Print this many top rows.")] = 10,
    issue: Annotated[bool | None, typer.Option("--issue/--no-issue", help="Record as an immutable issued list (default: config ranking.issue).")] = None,
    issue_id: Annotated[str | None, typer.Option("--issue-id", help="Id of the issued list (default: koc-<as-of date>).")] = None,
) -> None:
    """Rank eligible members at --as-of and write the top K (with quotas and exploration) to --out."""
    from features.contract import ContractError, load_data, parse_as_of
    from kocrank.config import load_config
    from serving.model_store import IncompatibleModelError, load_model
    from serving.output import check_output_path, write_ranked_list
    from serving.rank import print_top, rank_members

    cfg = load_config(config)
    try:
        check_output_path(out)
        cutoff = parse_as_of(as_of, cfg.timezone)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    try:
        brand = load_data(data, timezone=cfg.timezone)
    except ContractError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(code=1) from error  # as `koc validate`
    try:
        loaded = load_model(model or cfg.ranking.model_uri, tracking_uri, cfg.labels)
    except IncompatibleModelError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code=2) from error
    generated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result = rank_members(
        brand, cutoff, loaded, top, cfg.ranking, cfg.labels, generated_at=generated_at, config_digest=cfg.digest()
    )
    path, sidecar = write_ranked_list(result.candidates, result.meta, out)
    if show:
        print_top(result, show, console)
    info = loaded.info
    console.print(
        f"model {info.name or info.uri} version {info.version or '-'}; wrote {len(result.candidates)} candidates "
        f"to {path} (metadata {sidecar}); expected productive KOCs: {result.expected_productive:.1f}"
    )
    if cfg.ranking.issue if issue is None else issue:
        from kocrank.cli_loop import issue_ranked_list

        issue_ranked_list(result, loaded, top, cfg, tracking_uri, issue_id)


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to bind.")] = 8000,
    insecure_local: Annotated[bool, typer.Option("--insecure-local", help="Allow no token (loopback hosts only).")] = False,
    model: Annotated[str | None, typer.Option("--model", help="Model URI (default: the config's, models:/koc-potential@champion).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data directory to rank at start-up.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Cutoff of the ranking (default: the day after the data ends).")] = None,
    top: Annotated[int | None, typer.Option("--top", min=1, help="K of the list (default: config ranking.default_top).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")] = None,
) -> None:
    """Serve /health, /model, /candidates, /score and /reload; the bearer token comes from KOC_API_TOKEN."""
    import uvicorn

    from kocrank.config import load_config
    from serving.api import TOKEN_ENV, ServeConfigError, ServeSettings, check_serve_settings, create_app

    cfg = load_config(config)
    token = os.environ.get(TOKEN_ENV) or None
    settings = ServeSettings(
        model_uri=model or cfg.ranking.model_uri,
        tracking_uri=tracking_uri,
        data_dir=data,
        as_of=as_of,
        top=top,
        host=host,
        port=port,
        api_token=token,
        insecure_local=insecure_local,
        timezone=cfg.timezone,
        rank=cfg.ranking,
        labels=cfg.labels,
    )
    try:
        check_serve_settings(settings)
    except ServeConfigError as error:
        console.print(f"[red]refusing to start:[/red] {error}")
        raise typer.Exit(code=2) from error
    if settings.api_token is None:
        logger.warning("serving WITHOUT authentication on %s (--insecure-local)", host)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


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
