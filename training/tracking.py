"""MLflow plumbing: where runs are stored, the model registry's aliases and the promotion rule.

Store: `--tracking-uri` > `MLFLOW_TRACKING_URI` > `sqlite:///<cwd>/mlflow.db`. For a
SQLite store the experiment's artifact location is set explicitly to `mlartifacts/`
beside the database, so nothing lands in `./mlruns`.

Promotion: every new version of the registered model gets alias `challenger`. It
becomes `champion` when its test precision@K (primary K) is at least the current
champion's, with the champion re-scored on the *same* test cutoff. A champion trained
with a different label definition (`label_config_`) is never compared: the challenger stays
challenger and the decision says to promote by hand. Each decision (both
figures, the previous champion, who decided and why) is written as model-version tags and
appended to the promotion log (JSON lines beside a local store, and the recent history
as the registered-model tag `koc.promotion_log`) — only after the aliases have moved. Any
failure or interrupt (any BaseException) restores the aliases as they were; if the
decision had already been recorded, a compensating entry with `rolled_back: true` is
appended, so the trail never claims a promotion that did not stick.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"
PROMOTION_LOG_NAME = "koc_promotions.jsonl"
PROMOTION_LOG_TAG = "koc.promotion_log"
PROMOTION_LOG_TAG_ENTRIES = 20
TAG_REASON_CHARS = 120
TAG_VALUE_LIMIT = 5000
CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_FAILED_TAG = "koc.run_failed"


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


@contextlib.contextmanager
def tracking_context(tracking_uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API and registry at `tracking_uri`; put the previous settings back after.

    `mlflow.set_tracking_uri` also exports `MLFLOW_TRACKING_URI`, so the environment is restored too.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
    saved_registry = getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
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


# ------------------------------------------------------------------------- aliases


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


# ------------------------------------------------------------------------ promotion


@dataclass(frozen=True)
class PromotionDecision:
    """One champion decision and its evidence; written to tags and the promotion log."""

    model_name: str
    version: str
    promoted: bool
    mode: str  # "auto" (after training) or "manual" (`koc promote`)
    metric: str
    challenger_value: float | None
    champion_value: float | None
    previous_champion: str | None
    test_cutoff: str | None
    reason: str
    run_id: str | None = None
    decided_at: str = ""
    rolled_back: bool = False  # a compensating entry: the aliases this decision moved were put back

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        for key in ("challenger_value", "champion_value"):
            value = record[key]
            if isinstance(value, float) and math.isnan(value):
                record[key] = None
        return record


def challenger_wins(challenger_value: float, champion_value: float | None) -> bool:
    """The promotion rule: no (scorable) champion, or challenger >= champion on the same cutoff."""
    if champion_value is None or math.isnan(champion_value):
        return True
    return challenger_value >= champion_value


def decide_promotion(
    *,
    model_name: str,
    version: str,
    metric: str,
    challenger_value: float,
    champion_version: str | None,
    champion_value: float | None,
    champion_error: str | None,
    test_cutoff: str,
    run_id: str | None,
    champion_label_config: Mapping[str, object] | None = None,
    challenger_label_config: Mapping[str, object] | None = None,
) -> PromotionDecision:
    """Apply the promotion rule to the figures of challenger and current champion.

    When both label configs are known and differ, the comparison is not like-for-like (the
    champion is scored against labels it was not trained for), so nothing is promoted.
    """
    label_note = label_config_difference(champion_label_config, challenger_label_config)
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif label_note is not None:
        promoted = False
        reason = (
            f"label definitions differ from champion v{champion_version} ({label_note}); the test figures are "
            "not comparable, so not promoted automatically; promote by hand with `koc promote` if intended"
        )
    elif champion_error is not None:
        promoted = False
        reason = f"champion v{champion_version} could not be re-scored on this test cutoff ({champion_error}); promote by hand"
    else:
        promoted = challenger_wins(challenger_value, champion_value)
        relation = ">=" if promoted else "<"
        reason = (
            f"test {metric} {challenger_value:.4f} {relation} champion v{champion_version} "
            f"{champion_value:.4f} on the same cutoff {test_cutoff}"
        )
    return PromotionDecision(
        model_name=model_name,
        version=str(version),
        promoted=promoted,
        mode="auto",
        metric=metric,
        challenger_value=float(challenger_value),
        champion_value=None if champion_value is None else float(champion_value),
        previous_champion=champion_version,
        test_cutoff=test_cutoff,
        reason=reason,
        run_id=run_id,
        decided_at=_now(),
    )


def _canonical(config: Mapping[str, object]) -> dict[str, object]:
    """JSON round trip so dates, tuples and lists compare as they would be stored."""
    return dict(json.loads(json.dumps(dict(config), sort_keys=True, default=str)))


def label_config_difference(
    champion: Mapping[str, object] | None, challenger: Mapping[str, object] | None
) -> str | None:
    """`key: champion X, challenger Y; ...` for the label settings that differ, else None.

    None also when either side is unknown (models trained before label configs were recorded).
    """
    if not champion or not challenger:
        return None
    old, new = _canonical(champion), _canonical(challenger)
    if old == new:
        return None
    return "; ".join(
        f"{key}: champion {old.get(key, 'unset')}, challenger {new.get(key, 'unset')}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _tag_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


_DECISION_TAGS = (
    "promoted",
    "metric",
    "challenger_value",
    "champion_value",
    "previous_champion",
    "test_cutoff",
    "reason",
    "decided_at",
)


def _tag_prefix(decision: PromotionDecision) -> str:
    return "koc.promotion." if decision.mode == "auto" else "koc.manual_promotion."


def move_aliases(client: MlflowClient, decision: PromotionDecision) -> None:
    """`challenger` -> the new version (automatic decisions); `champion` -> it when promoted."""
    if decision.mode == "auto":
        client.set_registered_model_alias(decision.model_name, CHALLENGER, decision.version)
    if decision.promoted:
        client.set_registered_model_alias(decision.model_name, CHAMPION, decision.version)


def record_decision(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> None:
    """Model-version tags and a promotion-log entry for `decision` (call once its aliases have moved)."""
    prefix = _tag_prefix(decision)
    for key in _DECISION_TAGS:
        client.set_model_version_tag(
            decision.model_name, decision.version, prefix + key, _tag_value(getattr(decision, key))
        )
    append_promotion_log(client, tracking_uri, decision)


def record_rollback(
    client: MlflowClient, tracking_uri: str, decision: PromotionDecision, error: BaseException
) -> PromotionDecision:
    """Compensating audit entry for a recorded decision whose alias moves were undone; returns it."""
    rolled = dataclasses.replace(
        decision,
        promoted=False,
        rolled_back=True,
        reason=f"rolled back, aliases restored after {type(error).__name__}: {error} (was: {decision.reason})"[:500],
        decided_at=_now(),
    )
    prefix = _tag_prefix(decision)
    for key in ("promoted", "reason", "decided_at", "rolled_back"):
        client.set_model_version_tag(
            decision.model_name, decision.version, prefix + key, _tag_value(getattr(rolled, key))
        )
    append_promotion_log(client, tracking_uri, rolled)
    return rolled


def roll_back_promotion(
    client: MlflowClient,
    tracking_uri: str,
    model_name: str,
    before: Mapping[str, str],
    error: BaseException,
    recorded: PromotionDecision | None = None,
) -> PromotionDecision | None:
    """Best effort while already failing: restore the aliases to `before`; if `recorded` was written, compensate it.

    Returns the compensating decision (None when nothing had been recorded or writing it failed).
    Errors here are logged, not raised, so the caller re-raises the original failure.
    """
    try:
        restore_aliases(client, model_name, before)
    except Exception:
        logger.exception("could not restore the aliases of %s to %s; check them by hand", model_name, dict(before))
    if recorded is None:
        return None
    try:
        return record_rollback(client, tracking_uri, recorded, error)
    except Exception:
        logger.exception("could not record that v%s's promotion was rolled back", recorded.version)
        return None


def apply_promotion(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> None:
    """Move aliases per `decision`, then tag the version and append the promotion log.

    On any failure or interrupt the aliases are restored (and a rolled-back entry is written if
    the decision had been recorded), then the error propagates.
    """
    before = current_aliases(client, decision.model_name)
    recorded: PromotionDecision | None = None
    try:
        move_aliases(client, decision)
        recorded = decision  # from here on a record may exist, however partial
        record_decision(client, tracking_uri, decision)
    except BaseException as err:
        roll_back_promotion(client, tracking_uri, decision.model_name, before, err, recorded)
        raise


def append_promotion_log(client: MlflowClient, tracking_uri: str, decision: PromotionDecision) -> None:
    """Append the decision to the JSON-lines log beside a local store and to the model's history tag."""
    record = decision.to_record()
    store = local_store_dir(tracking_uri)
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        with open(store / PROMOTION_LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    history = _tag_history(client, decision.model_name)
    compact = {
        k: record[k]
        for k in (
            "version",
            "promoted",
            "mode",
            "challenger_value",
            "champion_value",
            "previous_champion",
            "test_cutoff",
            "decided_at",
            "rolled_back",
        )
    }
    compact["reason"] = str(record["reason"])[:TAG_REASON_CHARS]  # `koc models` shows it for remote stores
    history = (history + [compact])[-PROMOTION_LOG_TAG_ENTRIES:]
    text = json.dumps(history, sort_keys=True)
    while len(text) > TAG_VALUE_LIMIT and len(history) > 1:  # registry tag values are capped
        history = history[1:]
        text = json.dumps(history, sort_keys=True)
    client.set_registered_model_tag(decision.model_name, PROMOTION_LOG_TAG, text)


def _tag_history(client: MlflowClient, model_name: str) -> list[dict[str, object]]:
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException:
        return []
    try:
        return list(json.loads(tags.get(PROMOTION_LOG_TAG, "[]")))
    except json.JSONDecodeError:
        return []


def promotion_history(tracking_uri: str, model_name: str) -> list[dict[str, object]]:
    """Every recorded decision for `model_name`, oldest first (full log if local, else the tag's recent history)."""
    store = local_store_dir(tracking_uri)
    if store is not None and (store / PROMOTION_LOG_NAME).exists():
        with open(store / PROMOTION_LOG_NAME, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        return [r for r in records if r.get("model_name") == model_name]
    return _tag_history(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri), model_name)


def promote(
    version: str | int,
    *,
    reason: str = "",
    tracking_uri: str | None = None,
    model_name: str = "koc-potential",
    force: bool = False,
) -> PromotionDecision:
    """Make `version` the champion by hand, with the same tags and promotion-log entry as automatic promotion.

    A version registered by a training run that then failed (tag `koc.run_failed`, or its run
    ended FAILED) is refused unless `force`: its evaluation and records may be incomplete.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        model_version = client.get_model_version(model_name, str(version))
    except MlflowException as err:
        raise ValueError(f"{model_name} has no version {version} in {uri}: {err.message}") from err
    tags = model_version.tags or {}
    failure = _failed_run_note(client, tags, model_version.run_id)
    if failure is not None and not force:
        raise ValueError(
            f"{model_name} v{version} comes from a training run that failed ({failure}); its evaluation and "
            "promotion records may be incomplete. Retrain, or pass --force to promote it anyway"
        )
    previous = current_aliases(client, model_name).get(CHAMPION)
    reason = reason or "promoted by hand"
    if failure is not None:
        reason = f"{reason} (forced: version from a failed run: {failure})"[:500]
    decision = PromotionDecision(
        model_name=model_name,
        version=str(version),
        promoted=True,
        mode="manual",
        metric=tags.get("koc.promotion.metric", "precision_at_k"),
        challenger_value=_float_or_none(tags.get("koc.promotion.challenger_value")),
        champion_value=None,
        previous_champion=previous,
        test_cutoff=tags.get("koc.promotion.test_cutoff"),
        reason=reason,
        run_id=model_version.run_id,
        decided_at=_now(),
    )
    apply_promotion(client, uri, decision)
    logger.info("v%s of %s is champion (was %s): %s", version, model_name, previous, decision.reason)
    return decision


def _failed_run_note(client: MlflowClient, tags: Mapping[str, str], run_id: str | None) -> str | None:
    """Why a version counts as coming from a failed run (its `koc.run_failed` tag or run status), else None."""
    if RUN_FAILED_TAG in tags:
        return tags[RUN_FAILED_TAG]
    if run_id:
        try:
            status = client.get_run(run_id).info.status
        except MlflowException:  # run deleted or in another store: rely on the tag alone
            return None
        if status == "FAILED":
            return f"run {run_id} ended FAILED"
    return None


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "none") else None
    except ValueError:
        return None


def list_versions(tracking_uri: str | None = None, model_name: str = "koc-potential") -> list[dict[str, object]]:
    """Versions of the registered model, newest first, with aliases and their promotion figures."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
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
