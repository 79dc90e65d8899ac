"""`koc train`, `koc promote` and `koc models`: training runs, champion promotion and the registry."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kocrank.console import make_console

if TYPE_CHECKING:
    from rich.console import Console

    from kocrank.config import Config

HEADLINE = (("roc_auc", "roc_auc"), ("pr_auc", "pr_auc"), ("brier", "brier"))
PRECISION, YIELD_RATIO = "precision_at_", "yield_ratio_at_"


def _format(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def metrics_rich_table(metrics: pd.DataFrame, title: str, primary_k: str = "100") -> Table:
    """Model and baselines as rows, headline metrics as columns (the full table is a run artifact)."""
    columns: list[tuple[str, str]] = [(name, header) for name, header in HEADLINE if name in metrics.columns]
    columns += [(c, "p@" + c.removeprefix(PRECISION)) for c in metrics.columns if c.startswith(PRECISION)]
    if YIELD_RATIO + primary_k in metrics.columns:
        columns.append((YIELD_RATIO + primary_k, "yr@" + primary_k))
    table = Table(
        title=title,
        caption="p@K precision at K; yr@K yield of the top K / oracle yield (simulated truth only)",
    )
    table.add_column("scorer", style="bold", no_wrap=True)
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for scorer, row in metrics.iterrows():
        table.add_row(str(scorer), *(_format(float(row[name])) for name, _ in columns))
    return table


HISTORY_ROWS = 10


def history_rich_table(history: list[dict[str, object]], title: str) -> Table:
    """Promotion-log entries (automatic and manual) as a table: when, version, promoted, mode, reason."""
    table = Table(title=title)
    for column in ("when", "version", "promoted", "mode", "reason"):
        table.add_column(column, overflow="fold")
    for entry in history:
        promoted = "rolled back" if entry.get("rolled_back") else ("yes" if entry.get("promoted") else "no")
        table.add_row(
            str(entry.get("decided_at", "")),
            str(entry.get("version", "")),
            promoted,
            str(entry.get("mode", "")),
            escape(str(entry.get("reason", ""))),
        )
    return table


def _load_config(path: Path | None, console: Console) -> Config:
    """The config tree, or a readable error and exit code 1 (e.g. primary_k missing from k_list)."""
    from kocrank.config import load_config

    try:
        return load_config(path)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(code=1) from None


def register(app: typer.Typer) -> None:
    """Add `train`, `promote` and `models` to the `koc` app."""

    @app.command("train")
    def train_command(
        data: Annotated[Path, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")],
        config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
        tracking_uri: Annotated[
            str | None,
            typer.Option("--tracking-uri", help="MLflow store; default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db."),
        ] = None,
        experiment: Annotated[str | None, typer.Option("--experiment", help="MLflow experiment name.")] = None,
    ) -> None:
        """Train on time-split snapshots, compare with baselines, log an MLflow run and register the model."""
        from features.contract import ContractError
        from kocrank.config import cache_dir
        from training.promotion import recover
        from training.train import STAGES, run_training

        console = make_console()
        cfg = _load_config(config, console)
        recover(tracking_uri, cfg.training.registered_model_name)  # after a killed run: see training.promotion
        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("training", total=len(STAGES))
            seen: list[str] = []

            def advance(stage: str) -> None:
                if seen:
                    progress.advance(task)
                seen.append(stage)
                progress.update(task, description=stage)

            try:
                result = run_training(
                    data,
                    cfg.training,
                    cfg.labels,
                    timezone=cfg.timezone,
                    tracking_uri=tracking_uri,
                    experiment=experiment,
                    config_record=cfg.model_dump(mode="json"),
                    progress=advance,
                    fingerprint_cache=cache_dir(),
                    engine=cfg.engine,
                )
            except ContractError as err:
                console.print(f"[bold red]invalid data[/]: {err}")
                raise typer.Exit(code=1) from None
            except ValueError as err:
                console.print(f"[bold red]cannot train[/]: {err}")
                raise typer.Exit(code=1) from None
            progress.advance(task)

        split = result.split
        console.print(
            f"cutoffs — train: {', '.join(split['train'])}; validation: {split['validation']}; test: {split['test']}"
        )
        if split["excluded_incomplete_window"] or split["excluded_embargo"]:
            console.print(
                f"left out — incomplete label window: {', '.join(split['excluded_incomplete_window']) or '-'}; "
                f"embargo: {', '.join(split['excluded_embargo']) or '-'}"
            )
        from training.evaluate import k_label

        title = f"test cutoff {split['test']} (full table: run artifact reports/metrics.csv)"
        console.print(metrics_rich_table(result.metrics, title, k_label(cfg.training.primary_k)))
        model = result.model
        console.print(f"target: [bold]{model.target_}[/] ({model.target_method_})")
        if result.backtest is not None:
            summary = result.backtest.summary()
            tests = ", ".join(f.split.test.date().isoformat() for f in result.backtest.folds)
            console.print(
                f"backtest over {summary['n_cutoffs']} test cutoffs ({tests}): {summary['primary']} "
                f"{_format(summary['mean'])} ± {_format(summary['std'])}, PR AUC {_format(summary['pr_auc_mean'])}"
            )
            if result.backtest.fallback:
                console.print(f"[yellow]{escape(result.backtest.fallback)}[/]")
        console.print(f"MLflow run [bold]{result.run_id}[/] in {result.tracking_uri}")
        decision = result.decision
        verdict = "[bold green]champion[/]" if decision.promoted else "[yellow]challenger only[/]"
        console.print(f"registered {result.model_name} v{result.model_version}: {verdict} — {escape(decision.reason)}")

    @app.command("eval")
    def eval_command(
        members: Annotated[int, typer.Option("--members", help="Members per simulated world.")] = 30_000,
        seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated world seeds.")] = "1,2",
        scenarios: Annotated[
            str, typer.Option("--scenarios", help="Comma-separated simulator scenarios ('default' = SimConfig's own).")
        ] = "default",
        scorers: Annotated[
            str | None,
            typer.Option("--scorers", help="Comma-separated targets: observed, if_invited:<method>, uplift:<method>."),
        ] = None,
        k: Annotated[str, typer.Option("--k", help="Top-K share for yield, precision and uplift.")] = "1%",
        test_cutoffs: Annotated[
            int,
            typer.Option("--test-cutoffs", min=1, help="Latest test cutoffs judged (rolling origin, one fit each)."),
        ] = 3,
        out: Annotated[
            Path | None, typer.Option("--out", help="Also write the grid (one row per cell and scorer) to this CSV.")
        ] = None,
        served: Annotated[
            bool,
            typer.Option(
                "--served",
                help="Also judge each scorer as `koc train` serves it: refit on every complete cutoff known at the "
                "test cutoff (rows <scorer>@served, against ceiling@served).",
            ),
        ] = False,
        decompose: Annotated[
            bool,
            typer.Option(
                "--decompose",
                help="Also score each two-path scorer's fold model with one part at a time (accept, productive, "
                "declined, then all) swapped for the same learner trained on that part's truth (rows "
                "<scorer>/<part>_from_truth): the part whose swap lifts the yield most holds the target gap.",
            ),
        ] = False,
        config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
        tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store.")] = None,
    ) -> None:
        """The grid scenario x seed x target on simulated worlds: yield@K / oracle, P@K, uplift@K and the ceiling.

        The ceiling is the same LightGBM trained on the simulator's truth with the same features: a gap
        between a target and the ceiling is the target's, the ceiling's gap to 1 is the features'.
        """
        import dataclasses

        from features.contract import from_frames
        from kocrank.simulation import SimConfig, simulate
        from training.eval_grid import DEFAULT_SCORERS, run_grid, summarise

        console = make_console()
        cfg = _load_config(config, console)
        scenario_names = [s.strip() for s in scenarios.split(",") if s.strip()]
        seed_values = [int(s) for s in seeds.split(",") if s.strip()]
        has_scenarios = "scenario" in {f.name for f in dataclasses.fields(SimConfig)}
        if not has_scenarios and scenario_names != ["default"]:
            console.print("[bold red]error:[/] this simulator has no scenarios; use --scenarios default")
            raise typer.Exit(code=1)
        labels = cfg.labels

        def worlds():
            for scenario in scenario_names:
                for seed in seed_values:
                    extra = {"scenario": scenario} if has_scenarios and scenario != "default" else {}
                    sim = SimConfig(
                        members=members,
                        seed=seed,
                        horizon_days=labels.horizon_days,
                        min_posts=labels.min_posts,
                        min_interactions=labels.min_interactions,
                        cooldown_days=labels.cooldown_days,
                        **extra,
                    )
                    console.print(f"simulating {scenario} seed {seed} ({members:,} members) ...")
                    yield scenario, seed, from_frames(simulate(sim).tables, timezone=cfg.timezone)

        def show(scenario: str, seed: int, result) -> None:  # noqa: ANN001
            cutoffs = ", ".join(result.table.attrs["test_cutoffs"])
            table = Table(title=f"{scenario} seed {seed}: test cutoffs {cutoffs}, K={k}")
            table.add_column("test cutoff")
            table.add_column("scorer", style="bold")
            metrics = [c for c in result.table.columns if c != "test_cutoff"]
            for column in metrics:
                table.add_column(column.replace("_at_", "@").replace("_ratio", "/oracle"), justify="right")
            for scorer, row in result.table.iterrows():
                table.add_row(str(row["test_cutoff"]), str(scorer), *(_format(float(row[c])) for c in metrics))
            console.print(table)
            console.print(f"seconds: {result.seconds}")

        chosen = tuple(s.strip() for s in scorers.split(",")) if scorers else DEFAULT_SCORERS
        grid = run_grid(
            worlds(),
            cfg.training,
            labels,
            scorers=chosen,
            k=k,
            tracking_uri=tracking_uri,
            on_cell=show,
            test_cutoffs=test_cutoffs,
            served=served,
            decompose=decompose,
        )
        if out is not None:
            from features.io import write_frame

            write_frame(grid, out)
        summary = summarise(grid, k)
        table = Table(title=f"mean over seeds {seeds} and {test_cutoffs} test cutoffs, K={k}")
        table.add_column("scenario")
        table.add_column("scorer", style="bold")
        for column in summary.columns:
            table.add_column(column.replace("_at_", "@").replace("_ratio", "/oracle"), justify="right")
        for (scenario, scorer), row in summary.iterrows():
            table.add_row(str(scenario), str(scorer), *(_format(float(v)) for v in row))
        console.print(table)
        console.print(f"{len(grid)} rows logged to MLflow experiment kocrank-eval")

    @app.command("promote")
    def promote_command(
        version: Annotated[str, typer.Option("--version", help="Registered model version to make champion.")],
        reason: Annotated[str, typer.Option("--reason", help="Why (kept in the promotion log).")] = "",
        config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
        tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store.")] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Promote even a version whose training run failed.")
        ] = False,
    ) -> None:
        """Make a registered version the champion by hand (recorded like an automatic promotion).

        Versions from a failed training run are refused unless --force is given.
        """
        from training.promotion import promote

        console = make_console()
        model_name = _load_config(config, console).training.registered_model_name
        try:
            decision = promote(version, reason=reason, tracking_uri=tracking_uri, model_name=model_name, force=force)
        except ValueError as err:
            console.print(f"[bold red]cannot promote[/]: {escape(str(err))}")
            raise typer.Exit(code=1) from None
        console.print(
            f"{model_name} v{decision.version} is champion (previous: {decision.previous_champion or 'none'}) — {escape(decision.reason)}"
        )

    @app.command("models")
    def models_command(
        config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
        tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow store.")] = None,
    ) -> None:
        """List the registered model's versions, aliases and promotion figures, then the recent promotion history."""
        from training.promotion import promotion_history
        from training.store import list_versions, resolve_tracking_uri

        console = make_console()
        model_name = _load_config(config, console).training.registered_model_name
        uri = resolve_tracking_uri(tracking_uri)
        rows = list_versions(uri, model_name)
        if not rows:
            console.print(
                f"no versions of {model_name} in {escape(uri)} yet; run `koc train` first "
                "(or pass --tracking-uri / set MLFLOW_TRACKING_URI to the store you trained into)"
            )
            return
        table = Table(title=model_name)
        for column in ("version", "aliases", "run_status", "created", "test_cutoff", "metric", "value", "decision"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(
                *(
                    str(row[c])
                    for c in (
                        "version",
                        "aliases",
                        "run_status",
                        "created",
                        "test_cutoff",
                        "metric",
                        "value",
                        "decision",
                    )
                )
            )
        console.print(table)
        history = promotion_history(uri, model_name)[-HISTORY_ROWS:][::-1]
        if history:
            console.print(history_rich_table(history, f"promotion history (newest first, last {HISTORY_ROWS})"))
        console.print(f"tracking store: {escape(uri)}")
