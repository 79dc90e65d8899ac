"""The `koc` command: one subcommand per stage (simulate, validate, features, train, rank, serve)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperGroup

from features.contract import ContractError
from kocrank import cli_features, cli_loop, cli_runs, cli_serving, cli_simulate, cli_spark, cli_training
from kocrank.config import load_config
from kocrank.console import make_console


def readable_metavars(command: Any, ctx: typer.Context) -> None:
    """--help without typer's `<bool>` / `<str>` labels: flags show none, choices show their
    values, other options a word (PATH, N, TEXT) unless they set their own metavar."""
    help_option = command.get_help_option(ctx)
    words = {"int": "N", "float": "X"}
    for param in [*command.params, *([help_option] if help_option else [])]:
        # typer ships its own copy of click, so parameters are recognised by their attributes
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        desc = getattr(param, "type_descriptor", None)
        if param.is_flag or param.count or desc is None:
            param.metavar = ""
        elif desc.is_choice:
            param.metavar = "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        elif desc.is_path:
            param.metavar = "PATH"
        else:
            param.metavar = words.get(param.bare_type().split(" ")[0], "TEXT")


class KocGroup(TyperGroup):
    """The `koc` command group: readable --help (`readable_metavars`) and every subcommand's
    expected failures through `report_failure`."""

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            readable_metavars(command, ctx)
        return command

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        readable_metavars(self, ctx)
        super().format_help(ctx, formatter)

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as error:
            if type(error).__module__.startswith(("click", "typer")):  # usage errors, Exit, Abort: click's own
                raise
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            code = report_failure(error)
            if code is None:
                raise
            raise typer.Exit(code) from None


console = make_console()
app = typer.Typer(
    name="koc",
    help="Rank a brand's members for invitation into its KOC programme.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=KocGroup,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("kocrank")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from kocrank import __version__ as number
        console.print(f"kocrank {number}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and tracebacks.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the kocrank version and exit.")
    ] = False,
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


def _print_violations(err: ContractError, data: Path) -> None:
    console.print(f"[bold red]{len(err.violations)} contract violation(s) in {data}[/]")
    for v in err.violations:
        where = f"{v.table}.{v.column}" if v.column else v.table
        rows = f" — {v.count:,} row(s)" if v.count else ""
        console.print(f"[red]✗[/] [bold]{where}[/]: {v.rule}{rows}", highlight=False)
        for example in v.examples:
            console.print(f"    e.g. {example}", highlight=False, soft_wrap=True)


@app.command()
def ingest(
    data: Annotated[Path, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")],
    out: Annotated[Path, typer.Option("--out", help="The DuckDB database file to write (.duckdb).")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="Business time zone (overrides config).")] = None,
    export_time: Annotated[
        str | None, typer.Option("--export-time", help="When the data was exported (ISO 8601); later timestamps are errors.")
    ] = None,
) -> None:
    """Validate a data directory and store its canonical tables in one DuckDB file (for --data of later commands)."""
    from features.store import ingest as ingest_store

    if out.suffix != ".duckdb":
        raise typer.BadParameter(f"--out must end in .duckdb, got {out.name}")
    cfg = load_config(config)
    try:
        brand = ingest_store(
            data,
            out,
            timezone=timezone or cfg.timezone,
            time_floor=cfg.contract.time_floor,
            export_time=export_time or cfg.contract.export_time,
            engine=cfg.engine,
        )
    except ContractError as err:
        _print_violations(err, data)
        raise typer.Exit(code=1) from None
    rows = brand.row_counts(n for n in brand.fingerprint())
    console.print(f"wrote {out}: " + ", ".join(f"{name} {count:,}" for name, count in rows.items()))
    for note in brand.warnings:
        console.print(f"[yellow]note[/]: {note}")


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
    from features.store import check_files

    cfg = load_config(config)
    try:
        limits = cfg.contract
        # the checks of `koc ingest`: typed Parquet files in DuckDB SQL, never read whole into memory
        brand = check_files(
            data,
            timezone=timezone or cfg.timezone,
            time_floor=limits.time_floor,
            export_time=export_time or limits.export_time,
            engine=cfg.engine,
        )
        data_end = brand.data_end
    except ContractError as err:
        _print_violations(err, data)
        raise typer.Exit(code=1) from None
    table = Table(title=f"{data}: valid (time zone {brand.timezone})")
    for col in ("table", "status", "rows", "from", "to"):
        table.add_column(col)
    for row in brand.summary().to_dict("records"):
        first, last = (str(row[k]) if row[k] is not None and not pd.isna(row[k]) else "-" for k in ("from", "to"))
        table.add_row(row["table"], row["status"], f"{row['rows']:,}", first, last)
    console.print(table)
    console.print(f"members: {brand.members:,}; data end: {data_end}")
    for note in brand.warnings:
        console.print(f"[yellow]note[/]: {note}")


cli_simulate.register(app)
cli_simulate.register_loop(app)
cli_features.register(app)
cli_spark.register(app)
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


def failure_classes() -> list[tuple[tuple[type[BaseException], ...], int, str]]:
    """The one mapping from failure class to exit code and label, most specific first.

    1 data: the data (or a value in it) breaks the contract or a rule; 2 usage: an option,
    the config file or the server settings are wrong (click's own usage errors exit 2 too);
    3 model: the model or the MLflow store cannot be used; 4 file: a file cannot be read or
    written (missing, permissions, disk full).
    """
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError

    from features.build import FeatureFileMismatch
    from kocrank.config import ConfigError
    from serving.api import ServeConfigError
    from serving.config import CutoffError
    from serving.model_store import IncompatibleModelError
    from serving.output import OutputPathError

    return [
        ((ContractError,), 1, "data"),
        ((CutoffError, ConfigError, ServeConfigError, OutputPathError, FeatureFileMismatch, ValidationError), 2, "usage"),
        ((IncompatibleModelError, MlflowException), 3, "model"),
        ((OSError,), 4, "file"),
        ((ValueError,), 1, "data"),
    ]


def report_failure(error: BaseException) -> int | None:
    """Print an expected failure as one `error (<class>): <message>` line on stderr and return its
    exit code; None for an unexpected error (which keeps its traceback)."""
    for classes, code, label in failure_classes():
        if isinstance(error, classes):
            name = "" if isinstance(error, ContractError) else f"{type(error).__name__}: "
            message = f"error ({label}): {name}{error}{_hint(error)}"
            make_console(stderr=True).print(message, highlight=False, markup=False, soft_wrap=True)
            return code
    return None




def run() -> None:
    """Console entry point (see `KocGroup`); `koc -v …` shows tracebacks as well."""
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
