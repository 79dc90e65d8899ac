"""The ranked list as files: formula injection, the atomic list unit, the ops spreadsheet's layout."""

from __future__ import annotations

import csv
import json
import zipfile

import openpyxl
import pandas as pd
import pytest
from support.worlds import AS_OF, build_world, fake_loaded

from serving import output
from serving.config import RankConfig
from serving.output import neutralize_formula, read_ranked_list, split_reason, summary_rows, write_ranked_list
from serving.rank import rank_members

HOSTILE = ["=cmd|' /C notepad'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1", '=HYPERLINK("http://x","y")']


@pytest.fixture(scope="module")
def ranked():
    cfg = RankConfig(exploration_share=0.0, quotas={"channel": 0.6})
    return rank_members(build_world(), AS_OF, fake_loaded(), 10, cfg, generated_at="2026-06-01T08:00:00+00:00",
                        generated_by="tester@host")


def hostile_frame(candidates: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The list with a hostile value in every text column (cycling through the attack strings)."""
    frame = candidates.copy()
    text_columns = [
        c for c in frame.columns
        if c != "reasons" and not pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    for i, column in enumerate(text_columns):
        frame[column] = [HOSTILE[(i + j) % len(HOSTILE)] for j in range(len(frame))]
    return frame, text_columns


def test_neutralize_formula_rules():
    for value in HOSTILE:
        assert neutralize_formula(value) == "'" + value
    for value in ("c001", "0019154", "中文 / English", "", " =x", 3.5, None):
        assert neutralize_formula(value) == value


def test_hostile_values_in_every_text_column_never_become_formulas(ranked, tmp_path):
    frame, text_columns = hostile_frame(ranked.candidates)
    assert {"member_id", "tier", "channel", "trial_category", "rfm_segment", "reason_1"} <= set(text_columns)
    written = write_ranked_list(frame, ranked.meta, tmp_path / "hostile", ["csv", "xlsx"])
    # CSV: every text cell that starts like a formula carries the apostrophe
    with open(written["csv"], encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert len(body) == len(frame)
    for row in body:
        for name, cell in zip(header, row, strict=True):
            assert not cell.startswith(tuple(output.FORMULA_PREFIXES)), (name, cell)
    hostile_cells = [cell for row in body for cell in row if cell.startswith("'")]
    # the file shows reason_i as its _zh/_en halves and leaves out reason_feature_i
    written_text = [c for c in text_columns if c in header]
    assert {"member_id", "tier", "channel", "reason_1_zh", "reason_1_en"} <= set(written_text)
    assert len(hostile_cells) >= len(body) * len(written_text)
    # xlsx: no formula element anywhere in the workbook, and every list cell reads back as text
    with zipfile.ZipFile(written["xlsx"]) as book:
        sheets = [n for n in book.namelist() if n.startswith("xl/worksheets/sheet")]
        assert sheets and not any(b"<f>" in book.read(n) or b"<f " in book.read(n) for n in sheets)
    workbook = openpyxl.load_workbook(written["xlsx"])
    cells = [cell for row in workbook["list"].iter_rows(min_row=2) for cell in row]
    assert not [c for c in cells if c.data_type == "f"]
    texts = [c.value for c in cells if isinstance(c.value, str)]
    assert not [t for t in texts if t.startswith(tuple(output.FORMULA_PREFIXES))]
    assert sum(t.startswith("'") for t in texts) >= len(body) * len(written_text)


def test_hostile_summary_values_are_neutralised_too(ranked, tmp_path):
    meta = {**ranked.meta, "generated_by": "=cmd|' /C calc'!A0", "warnings": ["+SUM(1,2)"]}
    written = write_ranked_list(ranked.candidates, meta, tmp_path / "meta_hostile", ["xlsx"])
    sheet = openpyxl.load_workbook(written["xlsx"])["summary"]
    values = [c.value for row in sheet.iter_rows() for c in row if isinstance(c.value, str)]
    assert not [c for row in sheet.iter_rows() for c in row if c.data_type == "f"]
    assert not [v for v in values if v.startswith(tuple(output.FORMULA_PREFIXES))]


def test_list_and_sidecar_are_one_unit_replaced_whole(ranked, tmp_path, monkeypatch):
    first = write_ranked_list(ranked.candidates, ranked.meta, tmp_path / "unit", ["csv", "parquet"])
    before = {p.name: p.read_bytes() for p in first.folder.iterdir()}
    # a failure while the new unit is being written leaves the old unit whole and no staging folder
    newer = {**ranked.meta, "generated_at": "2026-06-02T00:00:00+00:00"}

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(output, "write_csv", crash)
    with pytest.raises(OSError, match="No space"):
        write_ranked_list(ranked.candidates, newer, tmp_path / "unit", ["csv", "parquet"])
    assert {p.name: p.read_bytes() for p in first.folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit"]
    # ... and so does a failure of the publishing rename itself
    monkeypatch.undo()
    real_rename = output.os.rename

    def rename_fails_on_publish(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("killed between renames")
        return real_rename(src, dst)

    monkeypatch.setattr(output.os, "rename", rename_fails_on_publish)
    with pytest.raises(OSError, match="killed"):
        write_ranked_list(ranked.candidates, newer, tmp_path / "unit", ["csv", "parquet"])
    assert {p.name: p.read_bytes() for p in first.folder.iterdir()} == before
    monkeypatch.undo()
    # a successful rewrite replaces list and sidecar together
    second = write_ranked_list(ranked.candidates.head(4), newer, tmp_path / "unit", ["csv", "parquet"])
    listed, meta = read_ranked_list(second.folder)
    assert len(listed) == 4 and meta["generated_at"] == "2026-06-02T00:00:00+00:00"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit"]


def test_xlsx_is_laid_out_for_ops(ranked, tmp_path):
    written = write_ranked_list(ranked.candidates, ranked.meta, tmp_path / "ops", ["xlsx"])
    workbook = openpyxl.load_workbook(written["xlsx"])
    assert workbook.sheetnames == ["list", "summary"]
    sheet = workbook["list"]
    header = [c.value for c in sheet[1]]
    assert header[:5] == ["rank", "member id", "score", "percentile", "tier"]
    assert "reason 1 (中文)" in header and "reason 1 (English)" in header
    assert all(c.font.b for c in sheet[1]) and sheet.freeze_panes == "C2" and sheet.auto_filter.ref
    assert sheet.page_setup.orientation == "landscape" and sheet.sheet_properties.pageSetUpPr.fitToPage
    # one page wide (1 is the file format's default, so it may be left out), as many tall as needed
    assert sheet.page_setup.fitToWidth in (None, 1) and sheet.page_setup.fitToHeight == 0
    assert sheet.print_title_rows == "$1:$1"
    score = sheet.cell(row=2, column=3)
    assert score.number_format == "0.0%" and score.value == pytest.approx(ranked.candidates["score"].iloc[0])
    member = sheet.cell(row=2, column=2)
    assert member.data_type == "s" and member.number_format == "@"
    zh = sheet.cell(row=2, column=header.index("reason 1 (中文)") + 1)
    en = sheet.cell(row=2, column=header.index("reason 1 (English)") + 1)
    expected_zh, expected_en = split_reason(ranked.candidates["reason_1"].iloc[0])
    assert (zh.value, en.value) == (expected_zh, expected_en) and zh.alignment.wrap_text
    tier = sheet.cell(row=2, column=5)
    assert tier.fill.fgColor.rgb.endswith(output.TIER_COLOURS[tier.value].lstrip("#").upper())
    assert sheet.column_dimensions["B"].width >= 12
    summary = {row[0].value: row[1].value for row in workbook["summary"].iter_rows(min_row=3) if row[0].value}
    assert summary["Score means"].startswith("observed")
    assert "tester@host" in summary["Generated"] and "koc-potential version 1" in summary["Model"]
    assert summary["Excluded: blacklisted"] == "1 members" and "Expected productive KOCs" in summary
    assert "at most 60%" in summary["Quota on channel"]


def test_summary_counts_every_exclusion_rule(ranked):
    labels = [label for label, _ in summary_rows(ranked.meta)]
    for rule in ranked.meta["exclusions"]:
        assert f"Excluded: {rule.replace('_', ' ')}" in labels


def test_csv_keeps_leading_zero_ids_as_text(ranked, tmp_path):
    frame = ranked.candidates.copy()
    frame["member_id"] = [f"00{1000 + i}" for i in range(len(frame))]
    written = write_ranked_list(frame, ranked.meta, tmp_path / "zeros", ["csv"])
    text = written["csv"].read_text(encoding="utf-8-sig")
    assert '"001000"' in text  # quoted: a spreadsheet import keeps it as text
    meta = json.loads(written.sidecar.read_text(encoding="utf-8"))
    assert meta["list_id"] == ranked.meta["list_id"]
