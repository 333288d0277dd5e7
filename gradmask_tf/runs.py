"""Run directories: epoch checkpoints that resume, export, and the run decision.

`prepare_run_dir` decides, before anything is written, whether a run starts anew,
resumes or replaces the directory's contents. The two newest checkpoints are kept, each
with a manifest of its files' sizes and checksums; a resume (`checkpoint_to_resume`)
verifies them, moves a damaged one aside and goes on from the one before it. The run
directory's file names, its atomic writes and the manifests are `gradmask_tf.files`'
(TensorFlow-free), re-exported here.
"""

import os
import pathlib
import re
import shutil
import sys

import keras
import tensorflow as tf

from gradmask_tf import files
from gradmask_tf.files import (  # noqa: F401 (re-exported: runs.atomic_write_json, runs.CONFIG, ...)
    CHECKPOINTS,
    CONFIG,
    HISTORY,
    LOGS,
    MANIFEST,
    METRICS,
    MODEL,
    SAVED_MODEL,
    atomic_directory,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_manifest,
    history_csv,
    read_history,
    read_json,
    write_manifest,
)

_CHECKPOINT = re.compile(r"^epoch-(\d{4,})$")
_WEIGHTS = "state.weights.h5"
_SEED_STATES = "seed_generators.json"
_CHECKPOINT_HISTORY = "history.json"
NUM_KEPT_CHECKPOINTS = 2


def _checkpoints(run_dir):
    """`[(epoch, path)]` of the run's checkpoint directories, newest first."""
    directory = pathlib.Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def latest_checkpoint(run_dir):
    """`(epoch, path)` of the newest checkpoint holding weights, or `(0, None)`.

    Its files are not verified: a resume uses `checkpoint_to_resume`.
    """
    for epoch, path in _checkpoints(run_dir):
        if (path / _WEIGHTS).exists():
            return epoch, path
    return 0, None


def _print_to_stderr(line):
    print(line, file=sys.stderr, flush=True)


def checkpoint_to_resume(run_dir, warn=_print_to_stderr):
    """`(epoch, path)` of the newest intact checkpoint, or `(0, None)` if there is none.

    Each checkpoint is checked against its manifest, newest first. A damaged one
    (truncated, emptied, altered, a file or the manifest missing) is moved aside to
    `checkpoints/damaged-epoch-NNNN`, never deleted, and named in one line to `warn`;
    the run goes on from the intact one before it, and `history.csv` is put back as
    that checkpoint holds it, so the epochs after it run again and each is recorded
    once. A lone checkpoint without a manifest, as written before checkpoints had
    one, is used if its files open, with one line to `warn`.

    Args:
      run_dir: The run directory.
      warn: Called with each line about a damaged or unverified checkpoint. Defaults
        to printing it on stderr.

    Returns:
      `(epoch, path)`: the last finished epoch and its checkpoint, `(0, None)` if the
      run directory holds no checkpoint.

    Raises:
      RunDirectoryError: Checkpoints exist but none is intact (one line; nothing is
        moved or deleted).
    """
    run_dir = pathlib.Path(run_dir)
    checkpoints = _checkpoints(run_dir)
    if not checkpoints:
        return 0, None
    damaged = []
    for epoch, path in checkpoints:
        reason = check_manifest(path)
        if reason == f"no {MANIFEST}" and len(checkpoints) == 1:
            reason = _unverified_damage(path)
            if reason is None:
                warn(f"checkpoint {path} has no {MANIFEST} (written by an older version); "
                     f"resuming after epoch {epoch} unverified")
        if reason is None:
            break
        damaged.append((path, reason))
    else:
        found = "; ".join(f"{path.name}: {reason}" for path, reason in damaged)
        raise RunDirectoryError(
            f"--output_dir={run_dir} holds no intact checkpoint ({found}); pass "
            "--overwrite to start the run again"
        )
    for bad, reason in damaged:
        moved = _move_aside(bad)
        warn(f"checkpoint {bad} is damaged ({reason}); moved to {moved}; "
             f"resuming after epoch {epoch}")
    if damaged:
        atomic_write_text(run_dir / HISTORY, history_csv(read_json(path / _CHECKPOINT_HISTORY)))
    return epoch, path


def _unverified_damage(path):
    """Why a checkpoint without a manifest cannot be used, or None if its files open."""
    import h5py  # Keras's own reader of `.weights.h5`, only for such checkpoints

    try:
        read_json(path / _CHECKPOINT_HISTORY)
        with h5py.File(path / _WEIGHTS, "r"):
            pass
    except (OSError, ValueError) as error:
        return f"no {MANIFEST}, and its files do not open: {' '.join(str(error).split())}"
    return None


def _move_aside(path):
    """Renames checkpoint `path` to a free `damaged-<name>[-N]` beside it; returns it."""
    return files.move_aside(path, prefix="damaged-")


def seed_generator_states(model):
    """The state variables of `model`'s `keras.random.SeedGenerator`s, in a fixed order.

    Dropout and the random draws of the masks (`random`, the matched control) advance
    them at each training call. They are in `model.variables` but not in
    `model.weights`, so `save_weights` leaves them out.
    """
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def restore_checkpoint(model, path):
    """Loads model, optimizer and seed generator state; returns the saved history rows.

    A checkpoint written before the seed generators were saved restores the rest.
    """
    path = pathlib.Path(path)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path / _WEIGHTS)
    if (path / _SEED_STATES).exists():
        states = seed_generator_states(model)
        saved = read_json(path / _SEED_STATES)
        if len(saved) != len(states):
            raise ValueError(
                f"Checkpoint {path} holds {len(saved)} seed generator states; the "
                f"model has {len(states)} seed generators."
            )
        for variable, value in zip(states, saved):
            variable.assign(value)
    return read_json(path / _CHECKPOINT_HISTORY)


def write_checkpoint(run_dir, epoch, model, history_rows, files=()):
    """Commits a finished epoch: its checkpoint, then `history.csv`; drops older ones.

    The checkpoint directory is the commit point: it is renamed into place only once
    complete, its manifest (sizes and sha256 of its files) written last, and holds the
    history up to its epoch, so a resumed run restarts from exactly the last finished
    epoch and runs no epoch twice. It holds everything that training changes: the
    weights, the optimizer's state (its iterations too) and the state of the seed
    generators, so the resumed run draws what an uninterrupted one would. The previous
    checkpoint is kept, so a damaged newest one costs one epoch (`checkpoint_to_resume`);
    older ones are deleted once this one is complete.

    Args:
      run_dir: The run directory.
      epoch: The epoch just finished, counted from 1.
      model: The model; its weights, its optimizer's state and its seed generators'
        states are saved.
      history_rows: One dict of metrics per finished epoch, this one included.
      files: Names of files in the run directory that belong to this epoch's state
        (the best validation weights): copied into the checkpoint where they exist,
        and put back by `restore_files`.

    Returns:
      The checkpoint's path.
    """
    run_dir = pathlib.Path(run_dir)
    checkpoint = run_dir / CHECKPOINTS / f"epoch-{epoch:04d}"

    def write(directory):
        model.save_weights(directory / _WEIGHTS)
        states = [variable.numpy().tolist() for variable in seed_generator_states(model)]
        atomic_write_json(directory / _SEED_STATES, states)
        atomic_write_json(directory / _CHECKPOINT_HISTORY, history_rows)
        for name in files:
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, directory / name)
        write_manifest(directory)  # last: without it the checkpoint is incomplete

    atomic_directory(checkpoint, write)
    atomic_write_text(run_dir / HISTORY, history_csv(history_rows))
    # This one and the newest before it stay; any later one is from an abandoned past.
    earlier = [path for number, path in _checkpoints(run_dir) if number < epoch]
    for number, path in _checkpoints(run_dir):
        if path != checkpoint and path not in earlier[: NUM_KEPT_CHECKPOINTS - 1]:
            shutil.rmtree(path, ignore_errors=True)
    return checkpoint


def restore_files(run_dir, checkpoint, names):
    """Puts back the run directory's `names` as `checkpoint` saved them (see
    `write_checkpoint`); one the checkpoint lacks (or no checkpoint) is removed, so a
    file written by an epoch that never committed does not survive a resume."""
    run_dir = pathlib.Path(run_dir)
    for name in names:
        saved = None if checkpoint is None else pathlib.Path(checkpoint) / name
        if saved is not None and saved.exists():
            atomic_write(run_dir / name, lambda file: file.write(saved.read_bytes()), binary=True)
        else:
            (run_dir / name).unlink(missing_ok=True)


def save_weights(model, path):
    """`model.save_weights(path)`, atomically (`path` ends in `.weights.h5`)."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name[: -len('.weights.h5')]}.tmp.weights.h5")
    model.save_weights(temporary)
    os.replace(temporary, path)


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


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked; the one-line message says why."""


def prepare_run_dir(run_dir, flags, *, overwrite=False, may_differ=()):
    """Decides between a new run, a resume and an overwrite; writes nothing.

    Args:
      run_dir: The run directory, which may not exist.
      flags: This run's flags, as `config.json` records them (`{"flags": ...}`).
      overwrite: Whether a finished run, a run with other flags or a directory that
        is not a run directory may be replaced. Defaults to False.
      may_differ: Flags that may change when a run resumes (the output directory,
        `overwrite`). Defaults to none.

    Returns:
      `"new"` (the directory is missing or empty), `"resume"` (it holds an
      unfinished run with the same flags) or `"overwrite"`.

    Raises:
      RunDirectoryError: Without `overwrite`, if the directory is not a run
        directory, holds a finished run, or holds an unfinished run with other
        flags (named in the message).
    """
    run_dir = pathlib.Path(run_dir)
    config_path = run_dir / CONFIG
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    if overwrite:
        return "overwrite"
    if not config_path.exists():
        raise RunDirectoryError(
            f"--output_dir={run_dir} exists and is not a run directory; "
            "choose another or pass --overwrite"
        )
    if (run_dir / METRICS).exists():
        raise RunDirectoryError(
            f"--output_dir={run_dir} holds a finished run; pass --overwrite to replace it"
        )
    saved = read_json(config_path).get("flags", {})
    changed = sorted(
        name
        for name in set(saved) | set(flags)
        if name not in may_differ and saved.get(name) != flags.get(name)
    )
    if changed:
        raise RunDirectoryError(
            f"--output_dir={run_dir} holds an unfinished run with other settings "
            f"({', '.join('--' + name for name in changed)}); resume it with the same "
            "flags, or pass --overwrite"
        )
    return "resume"
