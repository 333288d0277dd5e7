"""Tests of `gradmask_tf.files`: atomic files, the history CSV, and no TensorFlow."""

import os
import stat
import subprocess
import sys

import pytest

from gradmask_tf import files


def _leftovers(directory):
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    files.atomic_write_json(path, {"old": 1})

    def fail_halfway(file):
        file.write('{"new": ')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, fail_halfway)
    assert files.read_json(path) == {"old": 1}
    assert _leftovers(tmp_path) == []


def test_atomic_write_replaces_the_file_readable_by_all(tmp_path):
    path = tmp_path / "deeper" / "notes.txt"
    files.atomic_write_text(path, "old")
    files.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    files.atomic_write(path, lambda file: file.write(b"\x00\x01"), binary=True)
    assert path.read_bytes() == b"\x00\x01"
    assert _leftovers(path.parent) == []


def test_atomic_directory_keeps_the_old_directory_when_writing_fails(tmp_path):
    path = tmp_path / "saved_model"
    files.atomic_directory(path, lambda directory: (directory / "a").write_text("old"))

    def fail_halfway(directory):
        (directory / "a").write_text("new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        files.atomic_directory(path, fail_halfway)
    assert [p.name for p in path.iterdir()] == ["a"] and (path / "a").read_text() == "old"
    files.atomic_directory(path, lambda directory: (directory / "b").write_text("new"))
    assert [p.name for p in path.iterdir()] == ["b"]
    assert _leftovers(tmp_path) == []


def test_history_csv_puts_epoch_first_and_reads_back(tmp_path):
    rows = [
        {"epoch": 1, "loss": 2.5, "accuracy": 0.25},
        {"epoch": 2, "loss": 1.5, "accuracy": 0.5, "gsnr": 0.125},
    ]
    text = files.history_csv(rows)
    assert text.splitlines()[0] == "epoch,accuracy,gsnr,loss"
    files.atomic_write_text(tmp_path / files.HISTORY, text)
    assert files.read_history(tmp_path) == rows  # the missing gsnr stays missing
    assert files.read_history(tmp_path / "none") == []


def test_files_imports_nothing_heavy():
    # Loaded by its path, so the package's `__init__` does not count.
    script = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('files', {files.__file__!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "heavy = sorted({'tensorflow', 'keras', 'numpy', 'gradmask_tf'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _manifested(tmp_path):
    directory = tmp_path / "checkpoint"
    (directory / "deeper").mkdir(parents=True)
    (directory / "weights.h5").write_bytes(bytes(range(256)) * 4)
    (directory / "deeper" / "history.json").write_text("[]\n")
    files.write_manifest(directory)
    return directory


def _change_one_byte(path):
    data = bytearray(path.read_bytes())
    data[512] ^= 0x01
    path.write_bytes(bytes(data))


def test_write_manifest_records_each_file_size_and_sha256(tmp_path):
    directory = _manifested(tmp_path)
    manifest = files.read_json(directory / files.MANIFEST)["files"]
    assert sorted(manifest) == ["deeper/history.json", "weights.h5"]
    assert manifest["weights.h5"]["size"] == 1024
    assert manifest["deeper/history.json"] == {
        "sha256": "37517e5f3dc66819f61f5a7bb8ace1921282415f10551d2defa5c3eb0985b570",  # of "[]\n"
        "size": 3,
    }
    assert files.check_manifest(directory) is None
    (directory / "notes.txt").write_text("added later")  # not named: not looked at
    assert files.check_manifest(directory) is None
    assert _leftovers(directory) == []


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "weights.h5").write_bytes(bytes(100)),
         "weights.h5: 100 bytes, expected 1024"),
        (lambda d: (d / "weights.h5").write_bytes(b""), "weights.h5: 0 bytes, expected 1024"),
        (lambda d: _change_one_byte(d / "weights.h5"), "weights.h5: checksum differs"),
        (lambda d: (d / "deeper" / "history.json").unlink(), "deeper/history.json: missing"),
        (lambda d: (d / files.MANIFEST).unlink(), "no manifest.json"),
        (lambda d: (d / files.MANIFEST).write_text('{"files": '), "manifest.json unreadable"),
        (lambda d: (d / files.MANIFEST).write_text('{"files": {}}'), "manifest.json unreadable"),
        (lambda d: (d / files.MANIFEST).write_text('{"files": {"weights.h5": 3}}'),
         "manifest.json unreadable"),
    ],
    ids=["truncated", "emptied", "one byte changed", "a file missing", "no manifest",
         "manifest cut", "manifest empty", "manifest malformed"],
)
def test_check_manifest_names_what_is_damaged(tmp_path, damage, reason):
    directory = _manifested(tmp_path)
    damage(directory)
    assert files.check_manifest(directory) == reason
