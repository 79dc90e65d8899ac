"""`koc runs compare A B`: two training runs' metrics (and the settings that differ) side by side."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kocrank.console import make_console

runs_app = typer.Typer(help="Read training runs in the MLflow store.", no_args_is_help=True)


def _format(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


@runs_app.command("compare")
def compare_command(
    first: Annotated[str, typer.Argument(help="Run id, or a registered model version as v<N>.")],
    second: Annotated[str, typer.Argument(help="Run id, or a registered model version as v<N>.")],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store.")] = None,
    model_name: Annotated[str, typer.Option("--model-name", help="Registered model for v<N>.")] = "koc-potential",
    metric_filter: Annotated[
        str, typer.Option("--metrics", help="Only metrics whose name contains this text (e.g. model.).")
    ] = "",
) -> None:
    """Print both runs' metrics side by side with the difference, then the parameters that differ."""
    from training.store import client_for, resolve_tracking_uri
    from training.store import compare_runs as compare

    console = make_console()
    uri = resolve_tracking_uri(tracking_uri)
    try:
        result = compare(client_for(uri), first, second, model_name)
    except ValueError as err:
        console.print(f"[bold red]cannot compare[/]: {escape(str(err))}")
        raise typer.Exit(code=1) from None
    a, b = result["runs"]
    table = Table(title=f"{a['name']}  vs  {b['name']}", caption=f"store {uri}")
    for column, justify in (("metric", "left"), ("A", "right"), ("B", "right"), ("B - A", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for name, left, right in result["metrics"]:
        if metric_filter and metric_filter not in name:
            continue
        diff = None if left is None or right is None else right - left
        table.add_row(name, _format(left), _format(right), "-" if diff is None else f"{diff:+.4f}")
    console.print(f"A: {escape(a['id'])} {escape(a['name'])} ({a['status']}, {a['description']})")
    console.print(f"B: {escape(b['id'])} {escape(b['name'])} ({b['status']}, {b['description']})")
    console.print(table)
    if result["params"]:
        params = Table(title="parameters that differ")
        for column in ("parameter", "A", "B"):
            params.add_column(column, overflow="fold")
        for name, left, right in result["params"]:
            params.add_row(name, escape(str(left)), escape(str(right)))
        console.print(params)


def register(app: typer.Typer) -> None:
    """Add the `runs` command group to the `koc` app."""
    app.add_typer(runs_app, name="runs")
