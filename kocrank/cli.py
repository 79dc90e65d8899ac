"""The `koc` command: one subcommand per stage (simulate, validate, features, train, rank, serve)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.logging import RichHandler
from rich.table import Table

from features.contract import ContractError, load_data, summary
from kocrank import cli_features, cli_loop, cli_runs, cli_serving, cli_simulate, cli_training
from kocrank.config import load_config
from kocrank.console import make_console

console = make_console()
app = typer.Typer(
    name="koc",
    help="Rank a brand's members for invitation into its KOC programme.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """kocrank: data contract, features, training and ranking for KOC invitations."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=make_console(stderr=True), show_path=False)],
        force=True,
    )
    for noisy in ("alembic", "urllib3", "matplotlib", "mlflow.store", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kocrank logs its pyfunc as an instance of its own class shipped in code_paths;
    # MLflow's generic advice about pickled Python objects is noise for ops
    logging.getLogger("mlflow.pyfunc").addFilter(lambda record: "CloudPickle" not in record.getMessage())


@app.command()
def validate(
    data: Annotated[Path, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="Business time zone (overrides config).")] = None,
    export_time: Annotated[
        str | None, typer.Option("--export-time", help="When the data was exported (ISO 8601); later timestamps are errors.")
    ] = None,
) -> None:
    """Check a data directory against the contract; exit 1 on any violation."""
    cfg = load_config(config)
    try:
        limits = cfg.contract
        brand = load_data(
            data,
            timezone=timezone or cfg.timezone,
            time_floor=limits.time_floor,
            export_time=export_time or limits.export_time,
        )
    except ContractError as err:
        console.print(f"[bold red]{len(err.violations)} contract violation(s) in {data}[/]")
        for v in err.violations:
            where = f"{v.table}.{v.column}" if v.column else v.table
            rows = f" — {v.count:,} row(s)" if v.count else ""
            console.print(f"[red]✗[/] [bold]{where}[/]: {v.rule}{rows}", highlight=False)
            for example in v.examples:
                console.print(f"    e.g. {example}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    table = Table(title=f"{data}: valid (time zone {brand.timezone})")
    for col in ("table", "status", "rows", "from", "to"):
        table.add_column(col)
    for row in summary(brand).to_dict("records"):
        first, last = (str(row[k]) if row[k] is not None and not pd.isna(row[k]) else "-" for k in ("from", "to"))
        table.add_row(row["table"], row["status"], f"{row['rows']:,}", first, last)
    console.print(table)
    console.print(f"members: {len(brand.members):,}; data end: {brand.data_end}")
    for note in brand.warnings:
        console.print(f"[yellow]note[/]: {note}")


cli_simulate.register(app)
cli_simulate.register_loop(app)
cli_features.register(app)
cli_training.register(app)
cli_serving.register(app)
cli_runs.register(app)
cli_loop.register(app)


def _hint(error: BaseException) -> str:
    text = str(error)
    if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower():
        return (
            "\nhint: the MLflow store is ./mlflow.db of the folder you run koc from, unless MLFLOW_TRACKING_URI "
            "or --tracking-uri says otherwise; run `koc train` there first or point at the store that has the model"
        )
    return ""


def run() -> None:
    """Console entry point: expected failures end with one clear line and exit code 1, not a traceback.

    `koc -v …` shows the traceback as well.
    """
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from kocrank.config import ConfigError

    try:
        app()
    except ContractError as error:
        make_console(stderr=True).print(f"[red]error:[/] {error}", highlight=False, markup=False)
        raise SystemExit(1) from None
    except (ConfigError, ValidationError, MlflowException, ValueError, OSError) as error:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        message = f"error: {type(error).__name__}: {error}{_hint(error)}"
        make_console(stderr=True).print(message, highlight=False, markup=False)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    run()
