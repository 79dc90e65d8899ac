"""Write a ranked list as one atomic unit: a folder holding the list (CSV, .xlsx, Parquet) and its metadata.

The unit. `<out>/` holds `<name>.csv`, `<name>.xlsx` and/or `<name>.parquet` (name = the
folder's name) and `<name>.meta.json`. Everything is written into a temporary folder beside
`<out>` and that folder is renamed into place, so a reader (or a process killed half-way)
only ever sees a complete old unit or a complete new one, never a list whose sidecar
belongs to another run. Replacing an existing unit moves the old folder aside first: in
the instant between the two renames `<out>` is absent, never mixed.

Formula injection. Brand data comes from many systems; a member id, channel or category
such as `=cmd|' /C calc'!A0` must never run when ops opens the list. Every text cell that
begins with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading apostrophe (the
OWASP rule) in CSV and .xlsx, and .xlsx cells are written with `write_string`/`write_number`
only (XlsxWriter's formula, URL and number guessing off), so no cell is ever a formula.
Parquet is a data format for programs and keeps the values as they are.

The spreadsheet (XlsxWriter, chosen over pandas' openpyxl default because it writes cell
formats, print setup, autofilter and frozen panes in one pass and never reads a string as a
formula when asked not to): a `list` sheet for people (bold frozen header, filter, widths,
wrapped Chinese and English reason columns, scores as percentages, ids as text, tier colours,
landscape A4 fit to one page wide with the header repeated) and a `summary` sheet in plain
words. The machine metadata stays in the JSON sidecar. CSV is UTF-8 with a byte-order mark so
spreadsheet programs read the Chinese reasons, ids quoted as text.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training import faults

logger = logging.getLogger(__name__)

FORMATS = ("csv", "xlsx", "parquet")
FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".xls", ".parquet", ".json")


class OutputPathError(ValueError):
    """The output folder or format cannot be used; the message says what to pass instead."""
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
REASON_SEPARATOR = " / "  # "中文 / English" in bilingual reason phrases

TARGET_MEANINGS = {
    "observed": "probability of becoming a productive KOC within the horizon, as observed in history",
    "if_invited": "probability of becoming a productive KOC within the horizon if invited",
    "uplift": "extra probability of becoming a productive KOC that the invitation causes (uplift)",
}


def target_meaning(target: str | None) -> str:
    """Plain words for what a score of this target means."""
    return TARGET_MEANINGS.get(target or "observed", f"model target {target!r}")


# --------------------------------------------------------------------------- cells


def neutralize_formula(value: Any) -> Any:
    """`value` with a leading apostrophe when it is text a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralize_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells are safe to open in a spreadsheet (see `neutralize_formula`)."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if series.dtype == object or isinstance(series.dtype, pd.StringDtype | pd.CategoricalDtype):
            out[column] = series.astype(object).map(neutralize_formula)
    return out


def split_reason(text: Any) -> tuple[str | None, str | None]:
    """("中文", "English") from a bilingual "中文 / English" phrase; (None, None) when missing."""
    if not isinstance(text, str) or not text:
        return None, None
    zh, sep, en = text.partition(REASON_SEPARATOR)
    return (zh, en) if sep else (text, text)


def reason_count(frame: pd.DataFrame) -> int:
    """How many reason slots (`reason_1..n`) the frame carries."""
    n = 0
    while f"reason_{n + 1}" in frame.columns or f"reason_{n + 1}_zh" in frame.columns:
        n += 1
    return n


def with_bilingual_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """The list with `reason_i_zh` / `reason_i_en` columns in place of the combined `reason_i`.

    Uses the columns `serving.reasons` provides when present; otherwise splits "中文 / English".
    The per-member `reasons` objects and `reason_feature_i` are for the API, not the file.
    """
    out = frame.copy()
    columns: list[str] = []
    for column in frame.columns:
        if column == "reasons" or column.startswith("reason_feature_"):
            continue
        if column.endswith(("_zh", "_en")) and column[:-3] in frame.columns:
            continue  # placed beside its reason_i below
        if column.startswith("reason_") and column.removeprefix("reason_").isdigit():
            zh_col, en_col = f"{column}_zh", f"{column}_en"
            if zh_col not in frame.columns or en_col not in frame.columns:
                pairs = [split_reason(v) for v in frame[column]]
                out[zh_col] = [zh for zh, _ in pairs]
                out[en_col] = [en for _, en in pairs]
            columns += [zh_col, en_col]
        else:
            columns.append(column)
    return out[columns]


# --------------------------------------------------------------------------- the unit


@dataclass(frozen=True)
class ListFiles:
    """Where one written list unit lives."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)  # format -> path
    sidecar: Path = Path()

    def __getitem__(self, fmt: str) -> Path:
        return self.files[fmt]


def check_output_folder(out: str | Path, formats: Iterable[str] = ("csv",)) -> tuple[Path, tuple[str, ...]]:
    """Fail fast (before any work) when `out` or the formats cannot be written."""
    folder = Path(out)
    chosen = tuple(dict.fromkeys(f.lower().lstrip(".") for f in formats))
    if not chosen:
        raise OutputPathError("choose at least one output format: " + ", ".join(FORMATS))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise OutputPathError(f"unknown output format {unknown[0]!r}: use one of {', '.join(FORMATS)}")
    if folder.suffix.lower() in FILE_SUFFIXES:
        raise OutputPathError(
            f"--out {folder} names a file, but a ranked list is a folder (the list and its metadata are written "
            f"into it together); use e.g. --out {folder.with_suffix('')}"
            + (f" --format {folder.suffix.lstrip('.')}" if folder.suffix.lstrip(".") in FORMATS else "")
        )
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"--out {folder} exists and is not a folder")
    return folder, chosen


def meta_json(meta: Mapping[str, Any]) -> str:
    """Stable JSON text of the metadata (sorted keys, UTF-8 kept readable)."""
    return json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


def write_ranked_list(
    candidates: pd.DataFrame, meta: Mapping[str, Any], out: str | Path, formats: Sequence[str] = ("csv",)
) -> ListFiles:
    """Write the list in each of `formats` plus `<name>.meta.json` into the folder `out`, as one unit."""
    folder, chosen = check_output_folder(out, formats)
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    name = folder.name
    _sweep_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder.parent))
    try:
        people = with_bilingual_reasons(candidates)
        for index, fmt in enumerate(chosen):
            if index:
                faults.checkpoint("rank_mid_write")  # fault-injection tests: killed with the unit half written
            target = staging / f"{name}.{fmt}"
            if fmt == "csv":
                write_csv(people, target)
            elif fmt == "xlsx":
                write_xlsx(people, meta, target)
            else:
                candidates.drop(columns=[c for c in ("reasons",) if c in candidates]).to_parquet(target, index=False)
        faults.checkpoint("rank_mid_write")  # (a single format: killed between the list and its metadata)
        (staging / f"{name}.meta.json").write_text(meta_json(meta), encoding="utf-8")
        _fsync_tree(staging)
        os.chmod(staging, 0o777 & ~_umask())
        _publish(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    files = {fmt: folder / f"{name}.{fmt}" for fmt in chosen}
    sidecar = folder / f"{name}.meta.json"
    logger.info("wrote %d candidates to %s (%s; metadata %s)", len(candidates), folder, ", ".join(chosen), sidecar.name)
    return ListFiles(folder=folder, files=files, sidecar=sidecar)


def read_ranked_list(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The list (from Parquet or CSV) and its metadata from a unit written by `write_ranked_list`."""
    folder = Path(folder)
    name = folder.name
    meta = json.loads((folder / f"{name}.meta.json").read_text(encoding="utf-8"))
    if (folder / f"{name}.parquet").exists():
        return pd.read_parquet(folder / f"{name}.parquet"), meta
    if (folder / f"{name}.csv").exists():
        return pd.read_csv(folder / f"{name}.csv", dtype={"member_id": str}, encoding="utf-8-sig"), meta
    raise FileNotFoundError(f"{folder} holds no {name}.parquet or {name}.csv")


def _sweep_stale_staging(folder: Path) -> None:
    """Remove staging / set-aside folders of this unit that a killed writer left behind.

    A writer killed half-way (SIGKILL, power loss) never reaches its `finally`; its
    `.<name>.*.tmp` folder is incomplete by construction and is never read, so the next
    write of the same unit removes it. (Two writers of the *same* unit at once are not
    supported: the later one may remove the other's staging folder, which then fails loudly.)
    """
    if not folder.parent.is_dir():
        return
    for leftover in folder.parent.glob(f".{folder.name}.*"):
        if leftover.is_dir() and leftover.suffix in (".tmp", ".old"):
            shutil.rmtree(leftover, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(path, 0o666 & ~_umask())


def _publish(staging: Path, folder: Path) -> None:
    """Rename the complete staging folder to `folder`; an existing unit is moved aside, then removed."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.rmdir(old)
        os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except OSError:
        if old is not None:
            os.rename(old, folder)  # put the previous unit back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    dir_fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- CSV


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """UTF-8 with BOM (spreadsheet programs read the Chinese), text cells quoted and formula-safe."""
    safe = neutralize_frame(frame)
    # QUOTE_NONNUMERIC quotes every str cell, so ids such as 0019154 stay text in a spreadsheet import
    safe.to_csv(path, index=False, encoding="utf-8-sig", quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")


# --------------------------------------------------------------------------- .xlsx

TIER_COLOURS = {"A": "#C6EFCE", "B": "#FFEB9C", "C": "#EDEDED"}
# column -> (header shown to people, width in characters, kind)
_COLUMN_LAYOUT: dict[str, tuple[str, float, str]] = {
    "rank": ("rank", 5, "rank"),
    "member_id": ("member id", 14, "text"),
    "score": ("score", 8, "pct"),
    "percentile": ("percentile", 9, "value"),
    "tier": ("tier", 5, "tier"),
    "consumption_value": ("consumption value", 11, "value"),
    "interaction_value": ("interaction value", 11, "value"),
    "content_value": ("content value", 9, "value"),
    "social_value": ("social value", 9, "value"),
    "rfm_segment": ("RFM segment", 21, "text"),
    "trial_category": ("trial category", 13, "text"),
    "city_tier": ("city tier", 5, "rank"),
    "channel": ("channel", 14, "text"),
    "exploration": ("explo-ration", 7, "bool"),
    "selection_probability": ("selection prob.", 10, "pct"),
}


def _layout(column: str) -> tuple[str, float, str]:
    if column in _COLUMN_LAYOUT:
        return _COLUMN_LAYOUT[column]
    if column.startswith("reason_") and column.endswith("_zh"):
        return (f"reason {column.split('_')[1]} (中文)", 20, "reason")
    if column.startswith("reason_") and column.endswith("_en"):
        return (f"reason {column.split('_')[1]} (English)", 28, "reason")
    return (column.replace("_", " "), 12, "text")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def write_xlsx(frame: pd.DataFrame, meta: Mapping[str, Any], path: Path) -> None:
    """The `list` sheet (formatted for reading and printing) and the `summary` sheet in plain words."""
    import xlsxwriter

    options = {"strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False}
    workbook = xlsxwriter.Workbook(str(path), options)
    created = _parse_time(meta.get("generated_at"))
    workbook.set_properties(
        {"title": f"KOC invitation list as of {str(meta.get('as_of', ''))[:10]}", "author": "kocrank", "created": created}
    )
    formats = _formats(workbook)
    _list_sheet(workbook, formats, frame, meta)
    _summary_sheet(workbook, formats, meta)
    workbook.close()


def _parse_time(text: Any) -> dt.datetime:
    try:
        return pd.Timestamp(text).tz_convert("UTC").tz_localize(None).to_pydatetime()
    except (TypeError, ValueError):
        return dt.datetime(2000, 1, 1)  # fixed, so a list without generated_at is still byte-identical


def _formats(workbook: Any) -> dict[str, Any]:
    base = {"valign": "top", "font_size": 10}
    formats = {
        "header": workbook.add_format({**base, "bold": True, "text_wrap": True, "bg_color": "#DDEBF7", "border": 1}),
        "text": workbook.add_format({**base, "num_format": "@"}),
        "reason": workbook.add_format({**base, "text_wrap": True, "num_format": "@"}),
        "int": workbook.add_format({**base, "num_format": "0"}),
        "rank": workbook.add_format({**base, "num_format": "0", "align": "center"}),
        "pct": workbook.add_format({**base, "num_format": "0.0%"}),
        "value": workbook.add_format({**base, "num_format": "0.0"}),
        "bool": workbook.add_format({**base, "align": "center"}),
        "title": workbook.add_format({"bold": True, "font_size": 14}),
        "label": workbook.add_format({"bold": True, "valign": "top"}),
        "plain": workbook.add_format({"text_wrap": True, "valign": "top"}),
    }
    for tier, colour in TIER_COLOURS.items():
        formats[f"tier_{tier}"] = workbook.add_format({**base, "bold": True, "align": "center", "bg_color": colour})
    return formats


def _write_cell(sheet: Any, row: int, col: int, value: Any, kind: str, formats: Mapping[str, Any]) -> None:
    """Numbers as numbers, everything else as a (formula-safe) string: never a formula."""
    if kind == "tier":
        fmt = formats.get(f"tier_{value}", formats["text"])
    elif kind == "pct100":
        fmt = formats["pct"]
    else:
        fmt = formats.get(kind, formats["text"])
    if _is_missing(value):
        sheet.write_blank(row, col, None, fmt)
    elif kind == "bool":
        sheet.write_string(row, col, "yes" if bool(value) else "", fmt)
    elif kind in ("int", "rank", "pct", "pct100", "value") and isinstance(value, int | float | np.integer | np.floating):
        number = float(value) / 100.0 if kind == "pct100" else float(value)
        sheet.write_number(row, col, number, fmt)
    else:
        sheet.write_string(row, col, str(neutralize_formula(str(value))), fmt)


ROW_POINTS = 13.5  # one line of 10-point text


def _text_width(text: str) -> int:
    """Display width in character cells: Chinese (East Asian wide) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _wrapped_lines(value: Any, width: float) -> int:
    """How many lines a wrapped cell of `width` characters needs (word wrap, roughly as a viewer does)."""
    if not isinstance(value, str) or not value:
        return 1
    usable = max(int(width * 1.2), 1)  # a column of width w holds about 1.2 w characters of 10-point text
    lines, current = 1, 0
    for word in value.replace("\n", " ").split(" "):
        size = _text_width(word)
        if current and current + 1 + size > usable:
            lines, current = lines + 1, 0
        lines += (current + size) // usable if current + size > usable else 0
        current = (current + (1 if current else 0) + size) % usable if size > usable else current + (1 if current else 0) + size
    return lines


def _list_sheet(workbook: Any, formats: Mapping[str, Any], frame: pd.DataFrame, meta: Mapping[str, Any]) -> None:
    sheet = workbook.add_worksheet("list")
    layouts = [_layout(column) for column in frame.columns]
    for col, (header, width, kind) in enumerate(layouts):
        sheet.write_string(0, col, header, formats["header"])
        sheet.set_column(col, col, width, formats["reason"] if kind == "reason" else None)
    wrapped = [col for col, (_, _, kind) in enumerate(layouts) if kind == "reason"]
    for row, record in enumerate(frame.itertuples(index=False, name=None), start=1):
        for col, value in enumerate(record):
            _write_cell(sheet, row, col, value, layouts[col][2], formats)
        # XlsxWriter cannot measure wrapped text and viewers keep the default height, so wrapped
        # lines would print on top of the next row: size each row for its longest reason
        lines = max([_wrapped_lines(record[col], layouts[col][1]) for col in wrapped] or [1])
        if lines > 1:
            sheet.set_row(row, ROW_POINTS * lines)
    last_row, last_col = max(len(frame), 1), max(len(layouts) - 1, 0)
    sheet.set_row(0, 30)
    sheet.freeze_panes(1, 2)  # header and rank + member id stay visible
    sheet.autofilter(0, 0, last_row, last_col)
    sheet.set_landscape()
    sheet.set_paper(9)  # A4
    sheet.set_margins(left=0.4, right=0.4, top=0.6, bottom=0.6)
    sheet.fit_to_pages(1, 0)  # one page wide, as many tall as needed
    sheet.repeat_rows(0)
    sheet.print_area(0, 0, last_row, last_col)
    as_of = str(meta.get("as_of", ""))[:10]
    sheet.set_header(f"&L&\"Calibri,Bold\"KOC invitation list as of {as_of}&RPage &P of &N")
    sheet.set_footer(f"&Llist {meta.get('list_id', '')}&Rgenerated {meta.get('generated_at', '')}")


def summary_rows(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The `summary` sheet: what the list is, for whom, from which model, and what was left out, in plain words."""
    model = meta.get("model", {}) or {}
    counts = meta.get("counts", {}) or {}
    target = meta.get("target") or model.get("target") or "observed"
    rows: list[tuple[str, str]] = [
        ("List", f"KOC invitation list as of {_cutoff_text(meta.get('as_of', ''))} (business time)"),
        ("List id", str(meta.get("list_id", ""))),
        ("Generated", f"{meta.get('generated_at') or 'unknown time'} by {meta.get('generated_by') or 'unknown'}"),
        ("Model", f"{model.get('name') or model.get('uri', '')} version {model.get('version') or '-'}"
                  f" ({model.get('alias') or 'no alias'}), trained {model.get('trained_at') or 'at an unknown time'}"),
        ("Score means", f"{target}: {target_meaning(target)}"),
        ("Members", f"{counts.get('members', 0):,} in the data, {counts.get('joined_before_as_of', 0):,} joined before"
                    f" the cutoff, {counts.get('eligible', 0):,} eligible for invitation"),
    ]
    for rule, count in (meta.get("exclusions") or {}).items():
        rows.append((f"Excluded: {rule.replace('_', ' ')}", f"{int(count):,} members"))
    by_tier = counts.get("by_tier") or {}
    rows += [
        ("Listed", f"{counts.get('listed', 0):,} of the {meta.get('k', 0):,} places asked for"
                   f" ({counts.get('exploration', 0):,} chosen at random for exploration); "
                   + ", ".join(f"tier {t}: {n:,}" for t, n in by_tier.items())),
        ("Expected productive KOCs", f"{float(meta.get('expected_productive', 0.0)):.1f} (sum of the listed scores)"),
    ]
    quotas = (meta.get("rank_config") or {}).get("quotas") or {}
    segments = meta.get("segments") or {}
    listed = max(int(counts.get("listed", 0)), 1)
    for column, share in quotas.items():
        values = segments.get(column) or {}
        top_value, top_count = max(values.items(), key=lambda kv: kv[1]) if values else ("-", 0)
        rows.append((
            f"Quota on {column.replace('_', ' ')}",
            f"at most {share:.0%} of the list per value; largest: {top_value} with {top_count:,}"
            f" ({top_count / listed:.0%})",
        ))
    if not quotas:
        rows.append(("Quotas", "none configured"))
    for warning in meta.get("warnings") or []:
        rows.append(("Warning", str(warning)))
    rows.append(("Machine metadata", "in the .meta.json file beside this workbook"))
    return rows


def _cutoff_text(as_of: Any) -> str:
    """"2025-01-01" for a midnight cutoff, else "2025-01-01 10:00"."""
    text = str(as_of or "")
    return text[:10] if text.endswith("T00:00:00") else text.replace("T", " ")[:16]


def _summary_sheet(workbook: Any, formats: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    sheet = workbook.add_worksheet("summary")
    sheet.set_column(0, 0, 26)
    sheet.set_column(1, 1, 100)
    sheet.write_string(0, 0, "KOC invitation list — summary", formats["title"])
    for row, (label, text) in enumerate(summary_rows(meta), start=2):
        sheet.write_string(row, 0, label, formats["label"])
        sheet.write_string(row, 1, str(neutralize_formula(text)), formats["plain"])
    sheet.set_landscape()
    sheet.set_paper(9)
    sheet.fit_to_pages(1, 0)
