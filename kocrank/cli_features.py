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
    ) -> None:
        """Build one row of features per (member, as_of) using only data strictly before each cutoff."""
        console = make_console()
        if list_features:
            console.print(_registry_table())
            return
        if data is None or not as_of or out is None:
            raise typer.BadParameter("--data, --as-of and --out are required unless --list is given")

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
