"""`koc features`: build point-in-time features for one or more cutoffs, or list the registry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kocrank.console import make_console, progress_steps


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


def _print_sql(dialect: str, as_of: list[str] | None, timezone: str, console) -> None:
    """The one feature definition, rendered for another engine (e.g. Spark for brands that outgrow DuckDB)."""
    import sqlglot

    from features.build import feature_sql
    from serving.config import parse_cutoff

    if not as_of:
        raise typer.BadParameter("--sql needs an --as-of")
    text = feature_sql(parse_cutoff(as_of[0], timezone))
    if dialect != "duckdb":
        try:
            text = ";\n".join(sqlglot.transpile(text, read="duckdb", write=dialect, pretty=True))
        except (sqlglot.errors.SqlglotError, ValueError) as error:
            raise typer.BadParameter(f"cannot render the feature SQL for {dialect!r}: {error}") from error
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _spark_features(data: Path, cutoffs: list, out: Path, timezone: str, master: str, console, started: float) -> None:
    """`--engine spark`: the same feature SQL on pyspark; `koc validate` is the gate (no pandas load here)."""
    from features.io import write_frame
    from features.spark_engine import build_features_spark

    with progress_steps(make_console(stderr=True), 2) as step:
        step(f"building features for {len(cutoffs)} cutoff(s) on Spark ({master})")
        features = build_features_spark(data, cutoffs, master=master, timezone=timezone)
        step("writing")
        write_frame(features, out)
    console.print(
        f"wrote {len(features)} rows ({features['member_id'].nunique()} members, "
        f"{features['as_of'].nunique()} cutoff(s)) to {out} in {time.perf_counter() - started:.1f}s with Spark"
    )


def register(app: typer.Typer) -> None:
    """Add the `features` command to the `koc` app."""

    @app.command("features")
    def features_command(
        data: Annotated[
            Path | None,
            typer.Option("--data", "--db", help="Data directory of <table>.parquet|csv files, or a `koc ingest` .duckdb file."),
        ] = None,
        as_of: Annotated[
            list[str] | None,
            typer.Option(
                "--as-of", metavar="YYYY-MM-DD[THH:MM]",
                help="Cutoff in ISO 8601, business time (repeat for several); a date means local midnight."
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
        engine: Annotated[
            str,
            typer.Option(
                "--engine",
                help="duckdb (one machine) or spark (pyspark; the data must have passed `koc validate`).",
            ),
        ] = "duckdb",
        master: Annotated[
            str, typer.Option("--master", help="Spark master for --engine spark, e.g. local[2] or yarn.")
        ] = "local[2]",
    ) -> None:
        """Build one row of features per (member, as_of) using only data strictly before each cutoff."""
        console = make_console()
        if list_features:
            console.print(_registry_table())
            return
        from kocrank.config import load_config

        cfg = load_config(config)
        timezone = timezone or cfg.timezone
        if sql is not None:
            _print_sql(sql, as_of, timezone, console)
            return
        if data is None or not as_of or out is None:
            raise typer.BadParameter("--data, --as-of and --out are required unless --list is given")
        if out.suffix.lower() not in (".parquet", ".csv"):
            raise typer.BadParameter(f"--out must end in .parquet or .csv, got {out.name}")

        if engine not in ("duckdb", "spark"):
            raise typer.BadParameter(f"--engine must be duckdb or spark, got {engine!r}")

        from features.build import absent_groups, build_features, write_features
        from features.contract import load_data
        from features.io import write_frame
        from kocrank.config import cache_dir
        from serving.config import parse_cutoff
        from training.fingerprint import cached_fingerprint

        started = time.perf_counter()
        cutoffs = [parse_cutoff(value, timezone) for value in as_of]
        if engine == "spark":
            _spark_features(data, cutoffs, out, timezone, master, console, started)
            return
        with progress_steps(make_console(stderr=True), 2) as step:
            step("loading and checking the data")
            brand = load_data(data, timezone=timezone)
            step(f"building and writing features for {len(cutoffs)} cutoff(s)")
            if out.suffix.lower() == ".parquet":  # streamed: the result is never whole in memory
                # the data's fingerprint goes into the file, so `koc rank --features` can check it is this data's
                fingerprint = cached_fingerprint(brand, cache_dir())
                written = write_features(brand, cutoffs, out, cfg.engine, data_fingerprint=fingerprint)
            else:
                features = build_features(brand, cutoffs, cfg.engine)
                write_frame(features, out)
                written = {"rows": len(features), "members": features["member_id"].nunique(), "cutoffs": len(cutoffs)}
        elapsed = time.perf_counter() - started
        absent = absent_groups(brand)
        console.print(
            f"wrote {written['rows']} rows ({written['members']} members, "
            f"{written['cutoffs']} cutoff(s)) to {out} in {elapsed:.1f}s"
        )
        if brand.absent - {"labels", "truth"}:
            console.print(f"absent tables: {', '.join(sorted(brand.absent - {'labels', 'truth'}))}")
        console.print(f"absent feature groups (all zero/null): {', '.join(absent) if absent else 'none'}")
