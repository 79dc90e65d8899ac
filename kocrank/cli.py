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
from kocrank import cli_features, cli_serving, cli_simulate, cli_training
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
) -> None:
    """Check a data directory against the contract; exit 1 on any violation."""
    cfg = load_config(config)
    try:
        brand = load_data(data, timezone=timezone or cfg.timezone)
    except ContractError as err:
        console.print(f"[bold red]{len(err.violations)} contract violation(s) in {data}[/]")
        for v in err.violations:
            where = f"{v.table}.{v.column}" if v.column else v.table
            console.print(f"[red]✗[/] [bold]{where}[/]: {v.rule} — {v.count:,} row(s)", highlight=False)
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
cli_features.register(app)
cli_training.register(app)
cli_serving.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
