"""Export layout: integer versions that appear only when complete."""
import json
import os
import stat

import pytest

from kerasllm.export.layout import (MANIFEST, atomic_file, check_model_name, publish, read_manifest, resolve_version,
                                    versions, write_text_atomic)


def _write(tmp):
    (tmp / "payload.txt").write_text("x")
    (tmp / MANIFEST).write_text(json.dumps({"kind": "test"}))


def test_versions_increase_and_newest_is_resolved(tmp_path):
    model_dir = tmp_path / "m"
    assert publish(model_dir, _write).name == "1"
    assert publish(model_dir, _write).name == "2"
    assert versions(model_dir) == [1, 2]
    assert resolve_version(model_dir) == model_dir / "2"
    assert resolve_version(model_dir, 1) == model_dir / "1"
    assert resolve_version(model_dir / "1") == model_dir / "1"
    assert read_manifest(model_dir / "2")["kind"] == "test"


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    model_dir = tmp_path / "m"
    publish(model_dir, _write)

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"0" * 100)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish(model_dir, broken)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def test_a_file_is_replaced_whole_or_not_at_all_and_readable_by_others(tmp_path):
    path = tmp_path / "sub" / "report.md"
    old = os.umask(0o022)
    try:
        write_text_atomic(path, "first")
    finally:
        os.umask(old)
    assert path.read_text() == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]  # no temporary file left


def test_existing_version_is_never_overwritten(tmp_path):
    publish(tmp_path / "m", _write, version=7)
    with pytest.raises(FileExistsError):
        publish(tmp_path / "m", _write, version=7)


@pytest.mark.parametrize("name", ["..", "a/b", "", ".hidden", "x" * 200, "bad name"])
def test_model_names_with_path_tricks_are_refused(name):
    with pytest.raises(ValueError, match="invalid model name"):
        check_model_name(name)


def test_missing_damaged_and_foreign_folders_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_version(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model version"):
        resolve_version(tmp_path / "empty")
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        read_manifest(tmp_path / "bad" / "1")
    with pytest.raises(FileNotFoundError, match="not a kerasllm export"):
        read_manifest(tmp_path / "empty")
