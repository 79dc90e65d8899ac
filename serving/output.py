"""Write the ranked list atomically as CSV, Parquet or Excel, with a JSON sidecar of run metadata."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from features.io import atomic_path, write_frame
from training import faults

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".xlsx")


def sidecar_path(out: str | Path) -> Path:
    """`<out>.meta.json` beside the list."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def check_output_path(out: str | Path) -> Path:
    """Fail fast (before any work) when the output format is not supported."""
    path = Path(out)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(f"output file {path} must end in one of {', '.join(SUPPORTED_SUFFIXES)}")
    return path


def meta_json(meta: Mapping[str, Any]) -> str:
    """Stable JSON text of the metadata (sorted keys, UTF-8 kept readable)."""
    return json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def _flatten(meta: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in sorted(meta):
        value = meta[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, prefix=f"{name}.")
        else:
            rows.append((name, json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, list) else str(value)))
    return rows


def write_ranked_list(candidates: pd.DataFrame, meta: Mapping[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write the list to `out` (.csv/.parquet/.xlsx) and its sidecar `<out>.meta.json`, both atomically.

    For `.xlsx` the metadata is also written to a `meta` sheet. Returns (list path, sidecar path).
    """
    path = check_output_path(out)
    if path.suffix.lower() == ".xlsx":
        with atomic_path(path) as tmp:
            meta_rows = pd.DataFrame(_flatten(meta), columns=["key", "value"])
            with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
                candidates.to_excel(writer, sheet_name="candidates", index=False)
                meta_rows.to_excel(writer, sheet_name="meta", index=False)
    else:
        write_frame(candidates, path)
    faults.checkpoint("rank_mid_write")  # fault-injection tests: killed between the list and its sidecar
    sidecar = sidecar_path(path)
    with atomic_path(sidecar) as tmp:
        tmp.write_text(meta_json(meta), encoding="utf-8")
    logger.info("wrote %d candidates to %s (metadata in %s)", len(candidates), path, sidecar)
    return path, sidecar
