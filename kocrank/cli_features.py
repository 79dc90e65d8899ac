"""`koc features`: build point-in-time features for one or more cutoffs, or list the registry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kocrank.console import make_console


def _registry_table() -> Table:
    from features.registry import CATEGORY_LEVELS, FEATURE_SET_VERSION, FEATURES

    table = Table(title=f"kocrank features — set version {FEATURE_SET_VERSION} ({len(FEATURES)} features)")
    for column in ("feature", "group", "dtype", "description"):
        table.add_column(column, overflow="fold")
    for feature in FEATURES:
        description = feature.description
        if feature.dtype == "category":
            description += f" (levels: {', '.join(CATEGORY_LEVELS[feature.name])})"
        table.add_row(feature.name, feature.group, feature.dtype, description)
    return table


def _print_sql(dialect: str, as_of: list[str] | None, console) -> None:
    """The one feature definition, rendered for another engine (e.g. Spark for brands that outgrow DuckDB)."""
    import sqlglot

    from features.build import feature_sql
    from features.contract import parse_as_of

    if not as_of:
        raise typer.BadParameter("--sql needs an --as-of")
    text = feature_sql(parse_as_of(as_of[0]))
    if dialect != "duckdb":
        try:
            text = ";\n".join(sqlglot.transpile(text, read="duckdb", write=dialect, pretty=True))
        except (sqlglot.errors.SqlglotError, ValueError) as error:
            raise typer.BadParameter(f"cannot render the feature SQL for {dialect!r}: {error}") from error
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `features` command to the `koc` app."""

    @app.command("features")
    def features_command(
        data: Annotated[
            Path | None, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")
        ] = None,
        as_of: Annotated[
            list[str] | None,
            typer.Option(
                "--as-of", help="Cutoff date/time in business time (repeat for several); a date means local midnight."
            ),
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Output file, .parquet or .csv.")] = None,
        list_features: Annotated[bool, typer.Option("--list", help="Print the feature registry and exit.")] = False,
        config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
        timezone: Annotated[
            str | None, typer.Option("--timezone", help="Business time zone (overrides config).")
        ] = None,
        sql: Annotated[
            str | None,
            typer.Option(
                "--sql",
                help="Print the feature SQL for the first --as-of in this dialect (duckdb, spark, …) and exit.",
            ),
        ] = None,
    ) -> None:
        """Build one row of features per (member, as_of) using only data strictly before each cutoff."""
        console = make_console()
        if list_features:
            console.print(_registry_table())
            return
        if sql is not None:
            _print_sql(sql, as_of, console)
            return
        if data is None or not as_of or out is None:
            raise typer.BadParameter("--data, --as-of and --out are required unless --list is given")
        if out.suffix.lower() not in (".parquet", ".csv"):
            raise typer.BadParameter(f"--out must end in .parquet or .csv, got {out.name}")

        from features.build import absent_groups, build_features
        from features.contract import ContractError, load_data, parse_as_of
        from features.io import write_frame
        from kocrank.config import load_config

        timezone = timezone or load_config(config).timezone
        started = time.perf_counter()
        try:
            cutoffs = [parse_as_of(value, timezone) for value in as_of]
        except ValueError as error:
            raise typer.BadParameter(f"cannot read --as-of: {error}") from error
        try:
            brand = load_data(data, timezone=timezone)
        except ContractError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(code=1) from error
        with console.status(f"building features for {len(cutoffs)} cutoff(s)"):
            features = build_features(brand, cutoffs)
        write_frame(features, out)
        elapsed = time.perf_counter() - started
        absent = absent_groups(brand)
        console.print(
            f"wrote {len(features)} rows ({features['member_id'].nunique()} members, "
            f"{features['as_of'].nunique()} cutoff(s)) to {out} in {elapsed:.1f}s"
        )
        if brand.absent - {"labels", "truth"}:
            console.print(f"absent tables: {', '.join(sorted(brand.absent - {'labels', 'truth'}))}")
        console.print(f"absent feature groups (all zero/null): {', '.join(absent) if absent else 'none'}")
