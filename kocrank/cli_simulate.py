"""`koc simulate`: write a simulated brand's data directory (every contract table plus truth)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.io import write_frame, write_tables
from kocrank.console import make_console
from kocrank.simulation import SCENARIOS, SimConfig, SimulatedWorld, simulate
from kocrank.simulation.diagnostics import world_stats

if TYPE_CHECKING:
    from kocrank.simulation.loop import LoopResult

console = make_console()

# below this many member-months the run takes a second or two: no progress bar
_PROGRESS_FROM = 250_000


def _run(cfg: SimConfig) -> SimulatedWorld:
    if cfg.members * cfg.months < _PROGRESS_FROM:
        return simulate(cfg)
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("months"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("simulate", total=cfg.months)
        world = simulate(cfg, progress=lambda done, total: progress.update(task, completed=done))
    return world


def _summary(world: SimulatedWorld, out: Path, fmt: str, seconds: float, dirty: bool, scenario: str) -> None:
    table = Table(title=f"simulated brand written to {out} ({fmt})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, df in world.tables.items():
        table.add_row(name, f"{len(df):,}")
    console.print(table)
    outcomes = world.outcomes
    complete = outcomes.loc[outcomes["window_complete"]]
    eligible = int(complete["eligible"].sum())
    console.print(
        f"default label base rate among eligible members: [bold]{world.base_rate:.2%}[/] "
        f"({eligible:,} eligible member-cutoffs over {complete['as_of'].nunique()} cutoffs with a complete window); "
        f"simulated in {seconds:.1f}s"
    )
    stats = world_stats(world.tables, world.outcomes)
    console.print(
        f"scenario [bold]{scenario}[/]: {stats['invitations_per_cutoff']:.0f} invitations per monthly cutoff "
        f"(of {stats['eligible_per_cutoff']:,.0f} eligible); {stats['self_driven_share']:.0%} of "
        f"{stats['enrolments']:,.0f} enrolments self-driven; {len(world.traps):,} planted trap members"
    )
    if dirty:
        console.print(
            "[yellow]dirty[/]: the tables carry deliberate contract violations; `koc validate` must reject them"
        )


def register(app: typer.Typer) -> None:
    """Add the `simulate` command to the `koc` app."""

    @app.command("simulate")
    def simulate_command(
        out: Annotated[Path, typer.Option("--out", help="Data directory to write <table>.<format> files into.")],
        members: Annotated[
            int, typer.Option("--members", min=1, help="Members at the start (referees join on top).")
        ] = 5000,
        seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives identical tables.")] = 0,
        start: Annotated[
            str, typer.Option("--start", help="First day of history, a month start (YYYY-MM-01).")
        ] = "2024-01-01",
        months: Annotated[int, typer.Option("--months", min=1, help="Months of history.")] = 24,
        fmt: Annotated[str, typer.Option("--format", help="File format: parquet or csv.")] = "parquet",
        dirty: Annotated[
            bool, typer.Option("--dirty", help="Add realistic dirt so validation has something to reject.")
        ] = False,
        scenario: Annotated[
            str,
            typer.Option(
                "--scenario",
                help=f"Named world ({', '.join(SCENARIOS)}); see the README's simulator scenarios.",
            ),
        ] = "default",
    ) -> None:
        """Simulate a brand's private domain and write every contract table plus `truth`."""
        if fmt not in ("parquet", "csv"):
            raise typer.BadParameter(f"unsupported format {fmt!r}: use parquet or csv", param_hint="--format")
        try:
            cfg = SimConfig(members=members, seed=seed, start=start, months=months, dirty=dirty, scenario=scenario)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        began = time.perf_counter()
        world = _run(cfg)
        seconds = time.perf_counter() - began
        write_tables(world.tables, out, fmt)
        _summary(world, out, fmt, seconds, dirty, scenario)


def _loop_table(result: LoopResult) -> Table:
    table = Table(title="closed loop: productive KOCs among each month's invitations (same world, same budget)")
    for column in ("month", "policy", "invited", "accepted", "productive", "expected (truth)", "uplift (truth)"):
        table.add_column(column, justify="left" if column in ("month", "policy") else "right")
    for row in result.months.itertuples():
        table.add_row(
            f"{row.as_of:%Y-%m}",
            row.policy,
            f"{row.invited}",
            f"{row.accepted}",
            f"{row.productive}",
            f"{row.expected_productive:.1f}",
            f"{row.expected_uplift:.1f}",
        )
    for policy, row in result.totals().iterrows():
        table.add_row(
            "[bold]total[/]",
            f"[bold]{policy}[/]",
            f"{row['invited']:.0f}",
            f"{row['accepted']:.0f}",
            f"[bold]{row['productive']:.0f}[/]",
            f"{row['expected_productive']:.1f}",
            f"{row['expected_uplift']:.1f}",
        )
    return table


def register_loop(app: typer.Typer) -> None:
    """Add the `loop` command (kocrank decides a simulated brand's invitations) to the `koc` app."""

    @app.command("loop")
    def loop_command(
        members: Annotated[int, typer.Option("--members", min=100, help="Members at the start.")] = 30_000,
        seed: Annotated[int, typer.Option("--seed", help="World seed, shared by every policy's run.")] = 0,
        scenario: Annotated[str, typer.Option("--scenario", help=f"Named world ({', '.join(SCENARIOS)}).")] = "default",
        warmup: Annotated[
            int, typer.Option("--warmup-months", min=1, help="Months of history under the scenario's own rule.")
        ] = 18,
        months: Annotated[int, typer.Option("--months", min=1, help="Months in which the policies decide.")] = 6,
        retrain_every: Annotated[
            int, typer.Option("--retrain-every", min=1, help="Months between retrainings; the model is reused between.")
        ] = 3,
        policies: Annotated[
            str, typer.Option("--policies", help="Comma-separated: kocrank, historical, random.")
        ] = "kocrank,historical,random",
        out: Annotated[Path | None, typer.Option("--out", help="Write the per-month counts to this CSV file.")] = None,
        target: Annotated[
            str, typer.Option("--target", help="What kocrank's model scores: observed, if_invited or uplift.")
        ] = "observed",
    ) -> None:
        """Closed loop: kocrank invites in a simulated world, against its historical rule and random invitations."""
        from kocrank.simulation.loop import LoopConfig, run_loop  # trains models: imports MLflow, only when used

        try:
            cfg = LoopConfig(
                members=members,
                seed=seed,
                scenario=scenario,
                warmup_months=warmup,
                loop_months=months,
                retrain_every=retrain_every,
                target=target,
                policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
            )
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        result = run_loop(cfg, progress=lambda message: console.print(message))
        console.print(_loop_table(result))
        totals, world = result.totals()["productive"], result.world_productive
        if "kocrank" in totals:
            for other in (p for p in ("historical", "random") if p in totals):
                console.print(
                    f"kocrank gained [bold]{totals['kocrank'] - totals[other]:+.0f}[/] productive KOCs among the "
                    f"invited over {other} ({totals['kocrank']:.0f} vs {totals[other]:.0f}) with the same budget; "
                    f"in the whole world {world['kocrank']} vs {world[other]}"
                )
        console.print(
            "productive KOCs in the whole world during the loop (invited or not): "
            + ", ".join(f"{policy} {count}" for policy, count in world.items())
        )
        console.print(
            f"{result.trainings} training(s); seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items())
        )
        if out is not None:
            write_frame(result.months, out)
            console.print(f"per-month counts written to {out}")
