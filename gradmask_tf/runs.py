"""Run directories: atomic files, epoch checkpoints that resume, and export.

A run directory holds `config.json`, `history.csv`, `logs/` (TensorBoard),
`checkpoints/`, and once finished `model.keras`, `saved_model/` and `metrics.json`.
Every file is written to a temporary name and renamed into place, so a run killed at
any moment leaves either the old file or the new one, never half of one.
"""

import csv
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
import time

import keras
import tensorflow as tf

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
MODEL = "model.keras"
SAVED_MODEL = "saved_model"
LOGS = "logs"

_CHECKPOINT = re.compile(r"^epoch-(\d{4,})$")
_WEIGHTS = "state.weights.h5"
_CHECKPOINT_HISTORY = "history.json"


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
    path = pathlib.Path(run_dir) / HISTORY
    if not path.exists():
        return []
    with open(path) as file:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items() if value != ""}
            for row in csv.DictReader(file)
        ]


def latest_checkpoint(run_dir):
    """`(epoch, path)` of the newest complete checkpoint, or `(0, None)`."""
    directory = pathlib.Path(run_dir) / CHECKPOINTS
    best = (0, None)
    if directory.is_dir():
        for entry in directory.iterdir():
            match = _CHECKPOINT.match(entry.name)
            if match and (entry / _WEIGHTS).exists() and int(match.group(1)) > best[0]:
                best = (int(match.group(1)), entry)
    return best


def restore_checkpoint(model, path):
    """Loads model and optimizer state; returns the history rows saved with it."""
    path = pathlib.Path(path)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path / _WEIGHTS)
    return read_json(path / _CHECKPOINT_HISTORY)


class RunRecorder(keras.callbacks.Callback):
    """Checkpoints each finished epoch and keeps `history.csv` in step with it.

    The checkpoint directory is the commit point: it is renamed into place only once
    complete, and holds the history up to its epoch, so a resumed run restarts from
    exactly the last finished epoch and runs no epoch twice.

    Args:
      run_dir: The run directory.
      history: History rows of the epochs already run (when resuming).
      write: False on workers that must not write (only the chief writes).
    """

    def __init__(self, run_dir, history=(), write=True):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.history_rows = list(history)
        self.write = write
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["epoch_seconds"] = time.perf_counter() - self._epoch_start
        self.history_rows.append(row)
        if not self.write:
            return
        checkpoint = self.run_dir / CHECKPOINTS / f"epoch-{epoch + 1:04d}"

        def write(directory):
            self.model.save_weights(directory / _WEIGHTS)
            atomic_write_json(directory / _CHECKPOINT_HISTORY, self.history_rows)

        atomic_directory(checkpoint, write)
        atomic_write_text(self.run_dir / HISTORY, history_csv(self.history_rows))
        for entry in (self.run_dir / CHECKPOINTS).iterdir():
            if entry != checkpoint and _CHECKPOINT.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)


class MaskSchedule(keras.callbacks.Callback):
    """Turns the masks on at `start_epoch` (0-based), off before it."""

    def __init__(self, start_epoch):
        super().__init__()
        self.start_epoch = start_epoch

    def on_epoch_begin(self, epoch, logs=None):
        from gradmask_tf.training import set_masks_enabled

        set_masks_enabled(self.model, epoch >= self.start_epoch)


def export_saved_model(model, path, input_shape):
    """Writes a SavedModel whose `serving_default` maps images to class scores.

    The signature takes `images`, float32 `[batch, H, W, C]` in [0, 1], and returns
    `probabilities` and `logits` (float32). The masks are inactive at inference, so
    the graph holds no Gradient Mask op: any TensorFlow process can serve it without
    this package.
    """

    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits), "logits": logits}

    def write(directory):
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serving_default",
            fn=serve,
            input_signature=[
                tf.TensorSpec([None, *input_shape], tf.float32, name="images")
            ],
        )
        archive.write_out(str(directory), verbose=False)

    atomic_directory(path, write)


def save_keras_model(model, path):
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.stem}.tmp.keras")
    model.save(temporary)
    os.replace(temporary, path)
