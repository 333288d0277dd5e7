"""The files of a run directory: their names, and writing them so none is ever half-written.

A run directory holds `config.json`, `history.csv`, `logs/` (TensorBoard),
`checkpoints/`, and once finished `model.keras`, `saved_model/` and `metrics.json`.
Every file is written to a temporary name and renamed into place, so a run killed at
any moment leaves either the old file or the new one, never half of one.

A checkpoint directory is vouched for by its manifest (`write_manifest`): each file's
size and sha256, written last, so `check_manifest` tells an intact checkpoint from one
that was truncated, emptied, altered or left incomplete.

Standard library only, so that a process that only reads or copies run files (a study,
a report, a Ray worker) need not load TensorFlow; checkpoints and export are
`gradmask_tf.runs`'.
"""

import csv
import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
MODEL = "model.keras"
SAVED_MODEL = "saved_model"
LOGS = "logs"
MANIFEST = "manifest.json"

# history.csv's columns of what the masks did, one of each per mask layer (`kept_l1/`
# followed by the layer's name), and of the gradient's norm.
KEPT_FRACTION_PREFIX = "kept_fraction/"
KEPT_L1_PREFIX = "kept_l1/"
MASK_METRIC_PREFIXES = (KEPT_FRACTION_PREFIX, KEPT_L1_PREFIX)
GRADIENT_NORM = "gradient_norm"


def atomic_write(path, write, *, binary=False):
    """Calls `write(file)` on a temporary file, then renames it to `path`.

    A reader sees the old file or the new one, never half of one; the file is made
    readable by all (mkstemp makes it private).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix
    )
    try:
        with os.fdopen(descriptor, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text):
    """Writes `text` to `path` atomically."""
    atomic_write(path, lambda file: file.write(text))


def atomic_write_json(path, value):
    """Writes `value` to `path` atomically as JSON, indented, keys sorted."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path) as file:
        return json.load(file)


def atomic_directory(path, write):
    """Calls `write(temporary_directory)`, then renames it to `path` (replacing it)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        write(temporary)
        if path.exists():
            stale = path.with_name(f".{path.name}.old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(path, stale)
            os.replace(temporary, path)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def file_sha256(path):
    """The sha256 of the file at `path`, as a hexadecimal string."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory):
    """Records the size and sha256 of each file in `directory` in its `manifest.json`.

    Write it last: a directory without one is incomplete. Files are named by their
    path relative to `directory`, with `/` between parts.
    """
    directory = pathlib.Path(directory)
    entries = {
        path.relative_to(directory).as_posix(): {
            "sha256": file_sha256(path),
            "size": path.stat().st_size,
        }
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    atomic_write_json(directory / MANIFEST, {"files": entries})


def check_manifest(directory):
    """Why `directory` does not match its manifest, in a few words; None if it does.

    Files the manifest does not name are not looked at.
    """
    directory = pathlib.Path(directory)
    try:
        entries = read_json(directory / MANIFEST)["files"]
        if not isinstance(entries, dict) or not entries:
            raise ValueError
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} unreadable"
    for name, expected in sorted(entries.items()):
        path = directory / name
        try:
            size = path.stat().st_size
            if size != expected["size"]:
                return f"{name}: {size} bytes, expected {expected['size']}"
            if file_sha256(path) != expected["sha256"]:
                return f"{name}: checksum differs"
        except FileNotFoundError:
            return f"{name}: missing"
        except OSError as error:
            return f"{name}: unreadable ({error.strerror or type(error).__name__})"
        except (KeyError, TypeError):
            return f"{MANIFEST} unreadable"
    return None


def history_csv(rows):
    """One CSV row per epoch: `epoch` first, then the metrics in sorted order."""
    columns = sorted({key for row in rows for key in row} - {"epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["epoch", *columns], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def read_history(run_dir):
    """The rows of `run_dir`'s `history.csv` (`[]` without one): `epoch` an int, the
    metrics floats, empty cells left out."""
    path = pathlib.Path(run_dir) / HISTORY
    if not path.exists():
        return []
    with open(path) as file:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items() if value != ""}
            for row in csv.DictReader(file)
        ]


def move_aside(path, *, prefix="", suffix=""):
    """Renames `path` (a file or a directory) to a free `PREFIX NAME SUFFIX[-N]` beside
    it, never over anything; returns the new path."""
    target = path.with_name(f"{prefix}{path.name}{suffix}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{prefix}{path.name}{suffix}-{number}")
    os.replace(path, target)
    return target
