"""Tests of `gradmask_tf.runs`: checkpoints, their history and the run decision."""

import json

import keras
import numpy as np
import pytest

from gradmask_tf import files, runs

FLAGS = {"epochs": 3, "seed": 0, "output_dir": "a", "overwrite": False}
MAY_DIFFER = ("output_dir", "overwrite")


def test_the_file_helpers_are_re_exported_from_files():
    for name in ("atomic_write", "atomic_write_text", "atomic_write_json", "read_json",
                 "atomic_directory", "history_csv", "read_history", "CONFIG", "HISTORY",
                 "METRICS", "MODEL", "SAVED_MODEL", "LOGS", "CHECKPOINTS"):
        assert getattr(runs, name) is getattr(files, name), name


def _model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8)(inputs))  # a seed generator
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    return model


def _write_epochs(run_dir, model, epochs, rows=None):
    """Fits one step per epoch and checkpoints it, with a `best.weights.h5` of its own."""
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 2), "float32")
    rows = [] if rows is None else rows
    for epoch in epochs:
        model.fit(x, y, verbose=0)
        rows.append({"epoch": epoch, "loss": float(epoch)})
        (run_dir / BEST).write_text(f"best of epoch {epoch}")
        runs.write_checkpoint(run_dir, epoch, model, rows, files=[BEST])
    return rows


def _names(directory):
    return sorted(path.name for path in directory.iterdir())


BEST = "best.weights.h5"


def test_checkpoints_resume_from_the_last_finished_epoch(tmp_path):
    assert runs.latest_checkpoint(tmp_path) == (0, None)
    assert runs.checkpoint_to_resume(tmp_path) == (0, None)
    model = _model(0)
    rows = _write_epochs(tmp_path, model, (1, 2))
    epoch, path = runs.checkpoint_to_resume(tmp_path)
    assert epoch == 2 and path.name == "epoch-0002"
    assert runs.latest_checkpoint(tmp_path) == (epoch, path)
    assert runs.read_history(tmp_path) == rows

    restored = _model(1)
    assert runs.restore_checkpoint(restored, path) == rows
    for got, expected in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_the_two_newest_checkpoints_are_kept_each_with_its_manifest(tmp_path):
    _write_epochs(tmp_path, _model(0), (1, 2, 3, 4))
    checkpoints = tmp_path / runs.CHECKPOINTS
    assert _names(checkpoints) == ["epoch-0003", "epoch-0004"]
    for path in checkpoints.iterdir():
        manifest = files.read_json(path / files.MANIFEST)["files"]
        assert sorted(manifest) == sorted(
            [BEST, "history.json", "seed_generators.json", "state.weights.h5"])
        for name, entry in manifest.items():
            assert entry["size"] == (path / name).stat().st_size > 0
            assert entry["sha256"] == files.file_sha256(path / name)
        assert files.check_manifest(path) is None
    # A checkpoint directory without weights (not one this module writes) is passed over.
    (checkpoints / "epoch-0005").mkdir()
    assert runs.latest_checkpoint(tmp_path)[0] == 4


def _damage(path, how):
    weights = path / "state.weights.h5"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "emptied":
        weights.write_bytes(b"")
    elif how == "one byte changed":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif how == "a file missing":
        (path / "history.json").unlink()
    elif how == "manifest missing":
        (path / files.MANIFEST).unlink()
    elif how == "manifest unreadable":
        (path / files.MANIFEST).write_text('{"files": {"state.weig')


DAMAGE = {
    "truncated": "state.weights.h5: ",
    "emptied": "state.weights.h5: 0 bytes, expected ",
    "one byte changed": "state.weights.h5: checksum differs",
    "a file missing": "history.json: missing",
    "manifest missing": "no manifest.json",
    "manifest unreadable": "manifest.json unreadable",
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_used(tmp_path, how):
    model = _model(0)
    rows = _write_epochs(tmp_path, model, (1, 2))
    checkpoints = tmp_path / runs.CHECKPOINTS
    _damage(checkpoints / "epoch-0002", how)
    damaged_files = _names(checkpoints / "epoch-0002")

    lines = []
    epoch, path = runs.checkpoint_to_resume(tmp_path, warn=lines.append)
    assert (epoch, path) == (1, checkpoints / "epoch-0001")
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(
        f"checkpoint {checkpoints / 'epoch-0002'} is damaged ({DAMAGE[how]}")
    assert lines[0].endswith(
        f"); moved to {checkpoints / 'damaged-epoch-0002'}; resuming after epoch 1")
    # Moved aside whole, not deleted; history.csv is the chosen checkpoint's again.
    assert _names(checkpoints) == ["damaged-epoch-0002", "epoch-0001"]
    assert _names(checkpoints / "damaged-epoch-0002") == damaged_files
    assert runs.read_history(tmp_path) == rows[:1]
    restored = _model(1)
    assert runs.restore_checkpoint(restored, path) == rows[:1]
    runs.restore_files(tmp_path, path, [BEST])
    assert (tmp_path / BEST).read_text() == "best of epoch 1"

    # The run goes on: epoch 2 runs again, and each epoch is recorded once.
    rows = _write_epochs(tmp_path, restored, (2, 3), rows[:1])
    assert [row["epoch"] for row in runs.read_history(tmp_path)] == [1, 2, 3]
    assert _names(checkpoints) == ["damaged-epoch-0002", "epoch-0002", "epoch-0003"]
    assert runs.checkpoint_to_resume(tmp_path, warn=lines.append)[0] == 3 and len(lines) == 1


def test_a_damaged_checkpoint_is_named_on_stderr_by_default(tmp_path, capsys):
    _write_epochs(tmp_path, _model(0), (1, 2))
    _damage(tmp_path / runs.CHECKPOINTS / "epoch-0002", "truncated")
    (tmp_path / runs.CHECKPOINTS / "damaged-epoch-0002").mkdir()  # an earlier one: kept
    assert runs.checkpoint_to_resume(tmp_path)[0] == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "epoch-0002 is damaged (state.weights.h5: " in captured.err
    assert "moved to " + str(tmp_path / runs.CHECKPOINTS / "damaged-epoch-0002-2") in captured.err
    assert (tmp_path / runs.CHECKPOINTS / "damaged-epoch-0002-2" / "state.weights.h5").exists()


def test_no_intact_checkpoint_is_one_line_and_nothing_is_moved(tmp_path):
    _write_epochs(tmp_path, _model(0), (1, 2))
    checkpoints = tmp_path / runs.CHECKPOINTS
    _damage(checkpoints / "epoch-0002", "truncated")
    _damage(checkpoints / "epoch-0001", "manifest missing")
    before = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    lines = []
    with pytest.raises(runs.RunDirectoryError) as error:
        runs.checkpoint_to_resume(tmp_path, warn=lines.append)
    message = str(error.value)
    assert "\n" not in message and lines == []
    assert message.startswith(f"--output_dir={tmp_path} holds no intact checkpoint (epoch-0002: ")
    assert "epoch-0001: no manifest.json" in message and "pass --overwrite" in message
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == before


def test_a_lone_checkpoint_of_an_older_version_is_used_if_it_opens(tmp_path):
    rows = _write_epochs(tmp_path, _model(0), (1,))
    path = tmp_path / runs.CHECKPOINTS / "epoch-0001"
    (path / files.MANIFEST).unlink()  # as written before checkpoints had manifests
    lines = []
    assert runs.checkpoint_to_resume(tmp_path, warn=lines.append) == (1, path)
    assert len(lines) == 1 and "has no manifest.json" in lines[0] and "unverified" in lines[0]
    assert runs.restore_checkpoint(_model(1), path) == rows

    _damage(path, "truncated")
    with pytest.raises(runs.RunDirectoryError, match="no manifest.json, and its files do not open"):
        runs.checkpoint_to_resume(tmp_path, warn=lines.append)
    assert path.is_dir() and len(lines) == 1


def test_checkpoints_hold_the_seed_generators_so_the_next_step_matches(tmp_path):
    model = _model(0)
    x = np.random.default_rng(0).random((8, 4)).astype("float32")
    y = np.zeros((8, 2), "float32")
    model.fit(x, y, batch_size=4, verbose=0)
    path = runs.write_checkpoint(tmp_path, 1, model, [{"epoch": 1}])
    states = runs.seed_generator_states(model)
    assert len(states) == 1 and states[0].numpy()[1] == 2, "dropout drew twice"

    weights_only = _model(1)
    weights_only.load_weights(path / "state.weights.h5")
    # The weights file alone leaves the generator where a fresh model has it.
    assert not np.array_equal(runs.seed_generator_states(weights_only)[0].numpy(), states[0].numpy())

    restored = _model(1)
    runs.restore_checkpoint(restored, path)
    np.testing.assert_array_equal(runs.seed_generator_states(restored)[0].numpy(), states[0].numpy())
    model.fit(x, y, batch_size=4, verbose=0)
    restored.fit(x, y, batch_size=4, verbose=0)
    for got, expected in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)


def _run_dir(tmp_path, flags=FLAGS, finished=False):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.CONFIG).write_text(json.dumps({"flags": flags}))
    if finished:
        (run_dir / runs.METRICS).write_text("{}")
    return run_dir


def _decide(run_dir, flags=FLAGS, overwrite=False):
    return runs.prepare_run_dir(run_dir, flags, overwrite=overwrite, may_differ=MAY_DIFFER)


def test_prepare_run_dir_starts_anew_in_a_missing_or_empty_directory(tmp_path):
    assert _decide(tmp_path / "missing") == "new"
    assert _decide(tmp_path) == "new"
    assert not (tmp_path / "missing").exists()


def test_prepare_run_dir_resumes_an_unfinished_run_with_the_same_flags(tmp_path):
    run_dir = _run_dir(tmp_path)
    assert _decide(run_dir) == "resume"
    # The directory's own name and --overwrite may differ between the two commands.
    assert _decide(run_dir, {**FLAGS, "output_dir": "b", "overwrite": True}) == "resume"


@pytest.mark.parametrize(
    "setup, message",
    [
        ("not a run", "exists and is not a run directory; choose another or pass --overwrite"),
        ("finished", "holds a finished run; pass --overwrite to replace it"),
        ("other flags", "holds an unfinished run with other settings (--epochs, --seed)"),
    ],
)
def test_prepare_run_dir_refuses_in_one_line_unless_overwrite(tmp_path, setup, message):
    if setup == "not a run":
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("mine")
    else:
        run_dir = _run_dir(tmp_path, finished=setup == "finished")
    flags = {**FLAGS, "epochs": 4, "seed": 1} if setup == "other flags" else FLAGS
    before = sorted(path.name for path in run_dir.iterdir())
    with pytest.raises(runs.RunDirectoryError) as error:
        _decide(run_dir, flags)
    assert str(error.value).startswith(f"--output_dir={run_dir} ")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert _decide(run_dir, flags, overwrite=True) == "overwrite"
    assert sorted(path.name for path in run_dir.iterdir()) == before  # decided, not done
