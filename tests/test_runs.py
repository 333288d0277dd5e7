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


def test_checkpoints_resume_from_the_last_finished_epoch(tmp_path):
    assert runs.latest_checkpoint(tmp_path) == (0, None)
    model = _model(0)
    x, y = np.ones((4, 4), "float32"), np.zeros((4, 2), "float32")
    rows = []
    for epoch in (1, 2):
        model.fit(x, y, verbose=0)
        rows.append({"epoch": epoch, "loss": float(epoch)})
        runs.write_checkpoint(tmp_path, epoch, model, rows)
    # Only the newest checkpoint stays; an incomplete one (no weights) never counts.
    (tmp_path / runs.CHECKPOINTS / "epoch-0003").mkdir()
    assert sorted(p.name for p in (tmp_path / runs.CHECKPOINTS).iterdir()) == [
        "epoch-0002",
        "epoch-0003",
    ]
    epoch, path = runs.latest_checkpoint(tmp_path)
    assert epoch == 2 and path.name == "epoch-0002"
    assert runs.read_history(tmp_path) == rows

    restored = _model(1)
    assert runs.restore_checkpoint(restored, path) == rows
    for got, expected in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())


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
