"""serving.model_store copies a model into a local cache once and never writes beside the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import model_store


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "store" / "model"
    (source / "artifacts").mkdir(parents=True)
    (source / "MLmodel").write_text("flavors: {}\n")
    (source / "artifacts" / "koc_model.joblib").write_bytes(b"x" * 100)
    return source


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_a_model_is_copied_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _source(tmp_path)
    before = _files(tmp_path / "store")
    monkeypatch.setenv(model_store.CACHE_ENV, str(tmp_path / "cache"))
    first = model_store._local_copy(str(source), "m-1")
    assert first == tmp_path / "cache" / "m-1" and (first / "artifacts" / "koc_model.joblib").stat().st_size == 100
    (source / "artifacts" / "koc_model.joblib").write_bytes(b"changed")
    assert model_store._local_copy(str(source), "m-1") == first  # cached: not copied again
    assert (first / "artifacts" / "koc_model.joblib").stat().st_size == 100
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m-1"]  # no staging folder left
    before["model/artifacts/koc_model.joblib"] = len(b"changed")
    assert _files(tmp_path / "store") == before  # nothing written beside the source


def test_an_unwritable_cache_falls_back_to_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _source(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(model_store.CACHE_ENV, str(blocker / "cache"))
    copy = model_store._local_copy(str(source), "m-1")
    assert not str(copy).startswith(str(blocker)) and (copy / "MLmodel").exists()


def test_a_damaged_model_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    source = _source(tmp_path)
    (source / "artifacts" / "koc_model.joblib").write_bytes(b"")
    error = model_store._damaged("models:/m@champion", source, "file:///store/m", EOFError())
    text = str(error)
    assert "artifacts/koc_model.joblib (0 bytes) in the store at file:///store/m" in text
    assert "truncated or damaged" in text and "koc promote --version N" in text and "koc train" in text
    assert isinstance(error, model_store.IncompatibleModelError)
