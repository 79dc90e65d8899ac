"""`koc outcomes`, `koc compare`, `koc monitor` and the `koc rank --issue` step: the monthly loop."""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from kocrank.console import make_console

logger = logging.getLogger(__name__)
console = make_console()

DataOption = Annotated[Path, typer.Option("--data", help="Data directory of <table>.parquet|csv files.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML config file (sections ranking, labels, loop).")]
TrackingOption = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI).")]
StoreOption = Annotated[Path | None, typer.Option("--store", help="Issued-list store (default: koc_issued.sqlite beside the MLflow store).")]


def _store(cfg: Any, store: Path | None, tracking_uri: str | None):
    from serving.issued import IssuedStore, default_store_path

    return IssuedStore(store or (Path(cfg.loop.store) if cfg.loop.store else default_store_path(tracking_uri)))


def _load(data: Path, config: Path | None):
    from features.contract import ContractError, load_data
    from kocrank.config import load_config

    cfg = load_config(config)
    try:
        return cfg, load_data(data, timezone=cfg.timezone)
    except ContractError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(code=1) from error


def issue_ranked_list(result: Any, loaded: Any, top: int, cfg: Any, tracking_uri: str | None, list_id: str | None) -> None:
    """`koc rank --issue`: record the list just ranked as an immutable issued list (exit 1 on a re-issue)."""
    from serving.issued import IssuedListExists, issue_list

    store = _store(cfg, None, tracking_uri)
    issued_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        issued = issue_list(result, loaded, top, cfg.ranking, cfg.labels, store, list_id=list_id, issued_at=issued_at,
                            tracking_uri=tracking_uri, accept_days=cfg.training.accept_days)
    except IssuedListExists as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(code=1) from error
    counts = issued.meta["counts"]
    console.print(
        f"issued list [bold]{issued.list_id}[/bold]: {counts['invited']} invited ({counts['exploit']} exploit, "
        f"{counts['explore']} exploration), control group {counts['control']}, {counts['eligible']:,} eligible members "
        f"logged with their invitation probabilities in {store.path}"
    )


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    return "-" if value is None or (isinstance(value, float) and pd.isna(value)) else pattern.format(value)


def outcomes_command(
    data: DataOption,
    config: ConfigOption = None,
    tracking_uri: TrackingOption = None,
    store: StoreOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the table (.csv or .json).")] = None,
) -> None:
    """Score every issued list against the data now available (matured: realised; maturing: estimate)."""
    from features.io import atomic_path
    from serving.outcomes import score_outcomes

    cfg, brand = _load(data, config)
    issued_store = _store(cfg, store, tracking_uri)
    lists = issued_store.all()
    if not lists:
        console.print(f"[yellow]no issued lists in {issued_store.path}[/yellow]: issue one with `koc rank ... --issue`")
        raise typer.Exit(code=1)
    table = score_outcomes(lists, brand, cfg.loop)
    view = Table(title=f"Outcomes of {len(table)} issued list(s) — data until {brand.data_end.date()}")
    for column in ("list", "as of", "state", "sent", "accepted", "productive", "expected", "precision@K", "lift",
                   "uplift exploit vs control", "uplift explore vs band"):
        view.add_column(column)
    level = f"{cfg.loop.confidence:.0%}"
    for row in table.to_dict("records"):
        state = "matured" if row["matured"] else f"maturing until {row['window_closes']}"
        view.add_row(
            row["list_id"], row["as_of"], f"{state}; {row['status']}", f"{row['sent']}/{row['invited']}", str(row["accepted"]),
            str(row["productive"]) + ("" if row["matured"] else " so far"), f"{row['expected_productive']:.1f}",
            _fmt(row["precision"]), _fmt(row["lift"], "{:.2f}"),
            _fmt(row["uplift_exploit"], "{:+.3f}") + (f" [{row['uplift_exploit_low']:+.3f}, {row['uplift_exploit_high']:+.3f}]"
                                                      if not pd.isna(row["uplift_exploit"]) else ""),
            _fmt(row["uplift_explore"], "{:+.3f}") + (f" [{row['uplift_explore_low']:+.3f}, {row['uplift_explore_high']:+.3f}]"
                                                      if not pd.isna(row["uplift_explore"]) else ""),
        )
    console.print(view)
    console.print(f"uplift intervals: {level} bootstrap; a list whose invitations were not sent is not scored")
    if out is not None:
        with atomic_path(out) as tmp:
            if out.suffix == ".json":
                tmp.write_text(table.to_json(orient="records", indent=2), encoding="utf-8")
            else:
                table.to_csv(tmp, index=False)
        console.print(f"wrote {out}")


def compare_command(
    challenger: Annotated[str, typer.Option("--challenger", help="Registered version of the model (or a model URI).")],
    data: DataOption,
    config: ConfigOption = None,
    tracking_uri: TrackingOption = None,
    store: StoreOption = None,
) -> None:
    """Off-policy estimate of the challenger's top K on past issued lists against the champion's (SNIPS, DR)."""
    from serving.model_store import load_model, parse_model_uri
    from serving.ope import ope_verdict

    cfg, brand = _load(data, config)
    uri = challenger if ":/" in challenger else f"models:/{parse_model_uri(cfg.ranking.model_uri).get('name', 'koc-potential')}/{challenger}"
    loaded = load_model(uri, tracking_uri, cfg.labels)
    verdict = ope_verdict(_store(cfg, store, tracking_uri).all(), brand, loaded.model, cfg.loop)
    if verdict.result is None:
        console.print(f"[yellow]{escape(verdict.reason)}[/yellow]")
        raise typer.Exit(code=1)
    result = verdict.result
    view = Table(title=f"Off-policy value of the top {result.k} on {len(result.lists)} matured list(s) (productive KOCs per list)")
    for column in ("policy", "estimator", "value", f"{cfg.loop.confidence:.0%} interval"):
        view.add_column(column)
    for value in result.values:
        view.add_row(value.policy, value.estimator.upper(), f"{value.value:.2f}", f"[{value.low:.2f}, {value.high:.2f}]")
    console.print(view)
    console.print(f"challenger picks the logged policies could have invited: {result.coverage:.0%}")
    console.print(("[green]" if verdict.allows_promotion else "[red]") + escape(verdict.reason))


def _training_reference(brand: Any, loaded: Any, cfg: Any, tracking_uri: str | None) -> tuple[dict | None, str]:
    """Profile of the model's test cutoff (eligible members, same feature code), from its run's tag."""
    from mlflow import MlflowClient

    from features.labels import eligibility
    from serving.monitor import reference_profile
    from serving.rank import model_features

    run_id = loaded.info.run_id
    if not run_id:
        return None, "model has no MLflow run: no training reference"
    cutoff = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags.get("koc.test_cutoff")
    if not cutoff:
        return None, f"run {run_id} has no koc.test_cutoff tag: no training reference"
    as_of = pd.Timestamp(cutoff)
    elig = eligibility(brand, as_of, cfg.labels)
    features = model_features(brand, as_of, loaded.model, cfg.engine).set_index("member_id").loc[elig.loc[elig["eligible"], "member_id"]]
    X = features[list(loaded.model.feature_names_)]
    scores = pd.Series(loaded.model.predict_proba(X), index=X.index)
    return reference_profile(X, scores), f"training reference: eligible members at the test cutoff {as_of.date()}"


def monitor_command(
    data: DataOption,
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff of this month's ranking.")],
    model: Annotated[str | None, typer.Option("--model", help="Model URI (default: the config's champion).")] = None,
    out: Annotated[Path, typer.Option("--out", help="HTML report path.")] = Path("monitor.html"),
    config: ConfigOption = None,
    tracking_uri: TrackingOption = None,
    store: StoreOption = None,
    log_mlflow: Annotated[bool, typer.Option("--log/--no-log", help="Log the report to MLflow (experiment koc-monitor).")] = True,
) -> None:
    """Drift, calibration and rank-stability report; exit 1 with `retrain recommended` when a threshold trips."""
    from features.contract import parse_as_of
    from features.io import atomic_path
    from features.labels import eligibility, label_window_complete
    from serving.model_store import load_model
    from serving.monitor import monitor, render_html
    from serving.outcomes import member_outcomes
    from serving.rank import model_features

    cfg, brand = _load(data, config)
    cutoff = parse_as_of(as_of, cfg.timezone)
    loaded = load_model(model or cfg.ranking.model_uri, tracking_uri, cfg.labels)
    elig = eligibility(brand, cutoff, cfg.labels)
    features = model_features(brand, cutoff, loaded.model, cfg.engine).set_index("member_id").loc[elig.loc[elig["eligible"], "member_id"]]
    X = features[list(loaded.model.feature_names_)]
    scores = pd.Series(loaded.model.predict_proba(X), index=X.index, name="score")
    lists = _store(cfg, store, tracking_uri).all()
    before = [issued for issued in lists if parse_as_of(issued.as_of, cfg.timezone) < cutoff]
    at_or_before = [issued for issued in lists if parse_as_of(issued.as_of, cfg.timezone) <= cutoff]
    matured_lists = [i for i in at_or_before if label_window_complete(brand, parse_as_of(i.as_of, cfg.timezone), i.label_config)]
    matured = (matured_lists[-1], member_outcomes(matured_lists[-1], brand, cfg.loop)) if matured_lists else None
    reference, reference_note = _training_reference(brand, loaded, cfg, tracking_uri)
    k = at_or_before[-1].meta["k"] if at_or_before else cfg.ranking.default_top
    report = monitor(cutoff, X, scores, cfg.loop, k=int(k), reference=reference, previous=before[-1] if before else None,
                     matured=matured, latest=at_or_before[-1] if at_or_before else None)
    page = render_html(report, cfg.loop, title=f"kocrank monitoring — {loaded.info.name or loaded.info.uri} v{loaded.info.version or '-'}")
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    if log_mlflow:
        _log_report(report, out, reference, tracking_uri)
    for check in report.checks:
        colour = "red" if check.tripped else "green"
        console.print(f"[{colour}]{'TRIPPED' if check.tripped else 'ok':8}[/{colour}] {check.name}: {escape(check.detail)}")
    console.print(f"{reference_note}; report written to {out}")
    if report.retrain_recommended:
        console.print(f"[bold red]retrain recommended[/bold red]: {'; '.join(c.name for c in report.tripped())}")
        raise typer.Exit(code=1)


def _log_report(report: Any, html_path: Path, reference: dict | None, tracking_uri: str | None) -> None:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("koc-monitor")
    metrics = {key: value for key, value in report.metrics.items() if pd.notna(value)}
    with mlflow.start_run(run_name=f"monitor {report.as_of.date()}",
                          tags={"koc.as_of": str(report.as_of), "koc.retrain_recommended": str(report.retrain_recommended)}):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(html_path), artifact_path="monitor")
        if reference is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "reference_profile.json"
                path.write_text(json.dumps(reference), encoding="utf-8")
                mlflow.log_artifact(str(path), artifact_path="monitor")


def register(app: typer.Typer) -> None:
    """Add `outcomes`, `compare` and `monitor` to the `koc` app."""
    app.command("outcomes")(outcomes_command)
    app.command("compare")(compare_command)
    app.command("monitor")(monitor_command)
