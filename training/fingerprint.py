"""The data fingerprint (rows + content hash per table), computed once per data version.

`BrandData.fingerprint` hashes every validated table: 51 s of a 408 s `koc rank` at 1M
members, paid again on every ranking of unchanged files. `cached_fingerprint` keeps each
table's entry in a small JSON file outside the data folder, keyed by the table file's
resolved path, size and `mtime_ns` (plus the time zone and row count, which shape the
validated table), so a table is re-hashed only when its file changed. The values are
exactly `BrandData.fingerprint()`'s, so lists and runs fingerprinted with or without the
cache agree. In-memory data (no source directory) is hashed as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from features.contract import BrandData, table_files
from features.io import atomic_path

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the fingerprint's definition or the canonical tables change


def table_fingerprint(table: pd.DataFrame) -> dict[str, object]:
    """Row count and sha256 of one validated table (the definition `BrandData.fingerprint` uses)."""
    hashed = pd.util.hash_pandas_object(table, index=False).to_numpy()
    return {"rows": int(len(table)), "sha256": hashlib.sha256(hashed.tobytes()).hexdigest()}


def _file_key(name: str, file: Path, data: BrandData) -> str:
    stat = file.stat()
    blob = json.dumps(
        [CACHE_VERSION, name, str(file.resolve()), stat.st_size, stat.st_mtime_ns, data.timezone, len(data.tables[name])]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_fingerprint(data: BrandData, cache_dir: str | Path | None) -> dict[str, dict[str, object]]:
    """`data.fingerprint()`, with each file-backed table's entry cached in `cache_dir`.

    Without a `cache_dir` or a source directory every table is hashed (as `data.fingerprint()`);
    data that keeps its own fingerprint (`features.store.StoredBrandData`) is asked for it.
    A cache entry that cannot be read is recomputed; one that cannot be written is logged and
    skipped, so the cache never makes a ranking fail.
    """
    if type(data).fingerprint is not BrandData.fingerprint:
        return data.fingerprint()  # e.g. an ingested store: computed once at ingest, nothing to hash
    files: dict[str, Path] = {}
    if cache_dir is not None and data.source is not None and Path(data.source).is_dir():
        files = table_files(data.source)
    out: dict[str, dict[str, object]] = {}
    for name, table in data.tables.items():
        if name in data.absent:
            continue
        file = files.get(name)
        if file is None:
            out[name] = table_fingerprint(table)
            continue
        entry = Path(cache_dir) / f"{name}-{_file_key(name, file, data)}.json"
        try:
            out[name] = json.loads(entry.read_text())
            continue
        except (OSError, ValueError):
            pass
        out[name] = table_fingerprint(table)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(entry) as tmp:
                tmp.write_text(json.dumps(out[name]))
        except OSError as err:
            logger.warning("could not cache the fingerprint of %s in %s: %s", name, cache_dir, err)
    return out
