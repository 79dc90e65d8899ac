"""The MLflow store: where runs live, experiments, the tracking context, run owners and listings.

Store: `--tracking-uri` > `MLFLOW_TRACKING_URI` > `sqlite:///<cwd>/mlflow.db`. For a
SQLite store the experiment's artifact location is set explicitly to `mlartifacts/`
beside the database, so nothing lands in `./mlruns`.

Run owners: every run started inside `tracking_context` carries the tags
`koc.owner.host`, `koc.owner.pid` and `koc.owner.pid_started` (the process start time,
so a recycled pid is not mistaken for the owner). `fail_dead_runs` ends FAILED the runs
still RUNNING whose owner process is gone (same host only: another host's process cannot
be checked from here), and tags their registered versions `koc.run_failed`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"
CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_FAILED_TAG = "koc.run_failed"
OWNER_HOST_TAG = "koc.owner.host"
OWNER_PID_TAG = "koc.owner.pid"
OWNER_STARTED_TAG = "koc.owner.pid_started"


def resolve_tracking_uri(tracking_uri: str | None = None, cwd: str | Path | None = None) -> str:
    """The explicit URI, else `MLFLOW_TRACKING_URI`, else a SQLite store in `cwd` (default: the working dir)."""
    if tracking_uri:
        return tracking_uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / DEFAULT_DB_NAME).resolve()}"


def local_store_dir(tracking_uri: str) -> Path | None:
    """The directory that holds a local store (SQLite file's folder or file-store root); None if remote."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri[len("sqlite:///") :]
        return Path(db_path).resolve().parent if db_path and db_path != ":memory:" else None
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).resolve()
    if parsed.scheme == "" and tracking_uri:
        return Path(tracking_uri).resolve()
    return None


def artifact_location_for(tracking_uri: str) -> str | None:
    """Explicit artifact location for a SQLite store (`<db dir>/mlartifacts`); None lets MLflow decide."""
    if tracking_uri.startswith("sqlite:///"):
        store = local_store_dir(tracking_uri)
        if store is not None:
            return (store / ARTIFACT_DIR_NAME).as_uri()
    return None


def client_for(tracking_uri: str) -> MlflowClient:
    """A client whose tracking and registry are both `tracking_uri`."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# ------------------------------------------------------------------------ run owners


def process_started(pid: int) -> str | None:
    """Start time of process `pid` in clock ticks since boot (Linux `/proc`); None when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Tags naming this process as a run's owner."""
    pid = os.getpid()
    return {
        OWNER_HOST_TAG: socket.gethostname(),
        OWNER_PID_TAG: str(pid),
        OWNER_STARTED_TAG: process_started(pid) or "unknown",
    }


def owner_is_dead(tags: Mapping[str, str]) -> bool:
    """True when the tags name a process on this host that no longer runs (or whose pid was reused).

    Runs without owner tags, or owned by another host, are never called dead.
    """
    if tags.get(OWNER_HOST_TAG) != socket.gethostname() or not tags.get(OWNER_PID_TAG, "").isdigit():
        return False
    pid = int(tags[OWNER_PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        pass
    recorded = tags.get(OWNER_STARTED_TAG, "unknown")
    started = process_started(pid)
    return recorded != "unknown" and started is not None and started != recorded


class _OwnerContext:
    """MLflow run-context provider: stamps each new run with its owner process (see `owner_tags`)."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        return owner_tags()


def _register_owner_context() -> None:
    """Add `_OwnerContext` to MLflow's run-context providers once (the plugin hook, without an entry point)."""
    from mlflow.tracking.context import registry

    providers = registry._run_context_provider_registry
    if not any(isinstance(provider, _OwnerContext) for provider in providers):
        providers.register(_OwnerContext)


@contextlib.contextmanager
def tracking_context(tracking_uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API and registry at `tracking_uri`; put the previous settings back after.

    Runs started inside carry their owner tags. `mlflow.set_tracking_uri` also exports
    `MLFLOW_TRACKING_URI`, so the environment is restored too.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    _register_owner_context()
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
    saved_registry = getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield client_for(tracking_uri)
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        mlflow.set_registry_uri(saved_registry)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Id of experiment `name`, created with the store's explicit artifact location if new."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    location = artifact_location_for(tracking_uri)
    if location is not None:
        location = f"{location}/{_safe_name(name)}"
    return client.create_experiment(name, artifact_location=location)


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "experiment"


def fail_dead_runs(client: MlflowClient) -> list[str]:
    """End FAILED every RUNNING run whose owner process died; tag their model versions. Returns the run ids."""
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return []
    failed = []
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if not owner_is_dead(tags):
            continue
        note = f"process {tags[OWNER_PID_TAG]} on {tags[OWNER_HOST_TAG]} died while the run was RUNNING"
        client.set_tag(run.info.run_id, RUN_FAILED_TAG, note)
        client.set_terminated(run.info.run_id, status="FAILED")
        for mv in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            client.set_model_version_tag(mv.name, mv.version, RUN_FAILED_TAG, note)
        logger.warning("run %s marked FAILED: %s", run.info.run_id, note)
        failed.append(run.info.run_id)
    return failed


def run_status(client: MlflowClient, run_id: str | None) -> str | None:
    """`FINISHED`, `FAILED`, `RUNNING`, ... of `run_id`; None when there is no run or it cannot be read."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        return None


# ---------------------------------------------------------------------------- aliases


def current_aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    """`{alias: version}` of the registered model (empty if it does not exist yet)."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def restore_aliases(client: MlflowClient, model_name: str, before: Mapping[str, str]) -> None:
    """Put `champion` / `challenger` back to `before` (deleting aliases that did not exist)."""
    now = current_aliases(client, model_name)
    changed = False
    for alias in (CHAMPION, CHALLENGER):
        if before.get(alias) == now.get(alias):
            continue
        changed = True
        if alias in before:
            client.set_registered_model_alias(model_name, alias, before[alias])
        elif alias in now:
            client.delete_registered_model_alias(model_name, alias)
    if changed:
        logger.warning("aliases of %s restored to %s", model_name, dict(before))


# ---------------------------------------------------------------------------- listing


def list_versions(tracking_uri: str | None = None, model_name: str = "koc-potential") -> list[dict[str, object]]:
    """Versions of the registered model, newest first, with aliases, run status and promotion figures."""
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in current_aliases(client, model_name).items():
        aliases_by_version.setdefault(version, []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(sorted(aliases_by_version.get(str(mv.version), []))),
                "run_id": mv.run_id,
                "run_status": run_status(client, mv.run_id) or "",
                "created": dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC).isoformat(
                    timespec="seconds"
                ),
                "test_cutoff": tags.get("koc.promotion.test_cutoff", ""),
                "metric": tags.get("koc.promotion.metric", ""),
                "value": tags.get("koc.promotion.challenger_value", ""),
                "decision": tags.get("koc.promotion.reason", ""),
            }
        )
    return sorted(rows, key=lambda r: int(str(r["version"])), reverse=True)


def resolve_run(client: MlflowClient, ref: str, model_name: str):  # noqa: ANN201 - mlflow.entities.Run
    """The run `ref` names: a run id, or `v<N>` (a version of `model_name`, whose run is read)."""
    try:
        if ref.lower().startswith("v") and ref[1:].isdigit():
            return client.get_run(client.get_model_version(model_name, ref[1:]).run_id)
        return client.get_run(ref)
    except MlflowException as err:
        raise ValueError(
            f"no run {ref!r} in this store ({err.message}); give a run id or v<N> of {model_name}"
        ) from err


def compare_runs(client: MlflowClient, first: str, second: str, model_name: str) -> dict[str, list]:
    """Both runs' metrics as `(name, a, b)` rows (a name missing on one side gives None) and the
    params that differ as `(name, a, b)`; plus `runs`: id, name, status and description of each."""
    runs = [resolve_run(client, ref, model_name) for ref in (first, second)]
    a, b = (run.data for run in runs)
    metrics = [(name, a.metrics.get(name), b.metrics.get(name)) for name in sorted(set(a.metrics) | set(b.metrics))]
    params = [
        (name, a.params.get(name, "unset"), b.params.get(name, "unset"))
        for name in sorted(set(a.params) | set(b.params))
        if a.params.get(name) != b.params.get(name)
    ]
    described = [
        {
            "id": run.info.run_id,
            "name": run.info.run_name or "",
            "status": run.info.status,
            "description": run.data.tags.get("mlflow.note.content", "no description").splitlines()[0][:120],
        }
        for run in runs
    ]
    return {"runs": described, "metrics": metrics, "params": params}


def run_name(target: str, data_source: str, test_cutoff: str) -> str:
    """A run name a person can read: target, data folder and test cutoff (e.g. `observed · brand_x · 2025-07-01`)."""
    folder = Path(data_source).name if data_source and data_source != "in-memory" else "in-memory"
    return f"{target} · {folder} · {test_cutoff}"


def describe_run(
    run_id: str,
    *,
    target: str,
    data_source: str,
    split: Mapping[str, object],
    fingerprint: Mapping[str, Mapping[str, object]],
    label_config: Mapping[str, object],
) -> None:
    """Name the active run, write its description (shown at the top of the run page) and log the
    training data as an MLflow dataset: the per-table row counts and content hashes of the snapshot."""
    import pandas as pd

    client = MlflowClient()
    client.set_tag(run_id, "mlflow.runName", run_name(target, data_source, str(split["test"])))
    rows = ", ".join(f"{table} {info.get('rows', '?'):,}" for table, info in fingerprint.items())
    train_cutoffs = split.get("train") or []
    client.set_tag(
        run_id,
        "mlflow.note.content",
        f"Target `{target}` ({'; '.join(f'{k}={v}' for k, v in label_config.items())}), trained on "
        f"{len(train_cutoffs)} monthly cutoffs up to {train_cutoffs[-1] if train_cutoffs else '-'}, validated on "
        f"{split.get('validation')}, tested on {split.get('test')}.\n\nData: {data_source} ({rows}).",
    )
    summary = pd.DataFrame(
        [{"table": table, **{k: str(v) for k, v in info.items()}} for table, info in fingerprint.items()]
    )
    with warnings.catch_warnings():  # a folder path matches two equivalent local source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(summary, source=str(data_source), name=Path(str(data_source)).name or "data")
    mlflow.log_input(dataset, context="training")
