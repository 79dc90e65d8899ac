"""Atomic file output shared by every stage: write to a temporary file, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A crash or exception leaves any existing file at `path` untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 - umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_frame(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write `df` atomically as Parquet or CSV, chosen by the file suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    with atomic_path(target) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"unsupported output format {suffix!r} for {target}: use .parquet or .csv")
    return target


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike[str], fmt: str = "parquet") -> list[Path]:
    """Write each table to `<out_dir>/<name>.<fmt>` atomically; returns the paths written."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"unsupported format {fmt!r}: use parquet or csv")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_frame(df, out / f"{name}.{fmt}") for name, df in tables.items()]
