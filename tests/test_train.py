"""End-to-end tests of train.py: what only a process shows, on tiny data.

Each architecture with masks on and off, and insertion into keras.applications, is
checked in process (tests/test_models.py, tests/test_insert.py). Here one run serves
several checks: the main run (a flagfile; two mirrored CPU devices; masks from the
second epoch; GSNR) is served from its SavedModel, then a copy of it is refused,
overwritten, killed, its newest checkpoint damaged, and resumed, and ends as the same
run uninterrupted. The label-noise regime and the real Fashion-MNIST are in
tests/test_train_regime.py, two workers in tests/test_train_workers.py.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gradmask_tf  # noqa: F401  (registers its layers and model for load_model)
from tests.helpers import (
    MOCK_TRAIN,
    assert_complete_run,
    assert_ok,
    assert_one_line_error,
    environment,
    finish,
    kill_when,
    read_history,
    run,
    run_forked,
    start,
)


def kept_fractions(row):
    return [float(value) for key, value in row.items() if key.startswith("kept_fraction/")]


def file_times(directory):
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*") if path.is_file()}


MAIN_FLAGS = [
    "--epochs=2", "--batch_size=16", "--max_test_examples=32", "--mask_start_epoch=1",
    "--strategy=mirrored", "--num_cpu_devices=2", "--gsnr_every=3",
]


@pytest.fixture(scope="module")
def main_run(idx_dir, tmp_path_factory):
    """The default cnn and rule, its flags from a flagfile: `(run_dir, result)`."""
    root = tmp_path_factory.mktemp("main")
    run_dir = root / "run"
    flagfile = root / "run.flags"
    flagfile.write_text("\n".join([*MAIN_FLAGS, f"--data_dir={idx_dir}", f"--output_dir={run_dir}"]))
    return run_dir, run([f"--flagfile={flagfile}"])


def test_main_run_is_complete_with_the_flagfile_flags(main_run):
    run_dir, result = main_run
    assert_ok(result)
    assert_complete_run(run_dir, epochs=2)
    flags = json.loads((run_dir / "config.json").read_text())["flags"]
    assert (flags["model"], flags["mask_rule"]) == ("cnn", "mean")
    assert (flags["strategy"], flags["num_cpu_devices"], flags["mask_start_epoch"]) == ("mirrored", 2, 1)
    assert "Done: test accuracy" in result.stdout


def test_masks_turn_on_at_the_start_epoch_on_two_mirrored_devices(main_run):
    run_dir, result = main_run
    assert_ok(result)
    history = read_history(run_dir)
    kept = [kept_fractions(row) for row in history]
    assert len(kept[0]) == 3, "each mask point reports its kept fraction"
    assert all(value == 1.0 for value in kept[0]), "masks off in the first epoch"
    for epoch in kept[1:]:
        # A mask point whose neighbourhood is one constant gradient keeps it whole.
        assert all(0 < value <= 1 for value in epoch) and min(epoch) < 1
    assert all(float(row["gradient_norm"]) > 0 for row in history)


def test_cnn_learns_the_tiny_task_and_logs_gsnr(main_run):
    run_dir, result = main_run
    assert_ok(result)
    history = read_history(run_dir)
    # Not a quality bar: proof that the masked step still trains (chance is 0.1).
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    gsnr = [float(row["gsnr"]) for row in history]
    assert all(np.isfinite(value) and value > 0 for value in gsnr)
    assert any((run_dir / "logs" / "gsnr").rglob("*tfevents*"))


def test_saved_model_serves_without_the_package(main_run):
    run_dir, result = main_run
    assert_ok(result)
    script = f"""
import sys
sys.modules["gradmask_tf"] = None  # any import of the package now fails
import numpy as np, tensorflow as tf
serving = tf.saved_model.load({str(run_dir / "saved_model")!r}).signatures["serving_default"]
images = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
outputs = serving(images=tf.constant(images))
np.save({str(run_dir / "served.npy")!r}, outputs["logits"].numpy())
probabilities = outputs["probabilities"].numpy()
assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment(), capture_output=True, text=True
    )
    assert_ok(result)
    import keras

    model = keras.models.load_model(run_dir / "model.keras")
    images = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        np.load(run_dir / "served.npy"), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5
    )


# The copy of the main run is overwritten by a run on another dataset: CIFAR-10
# shaped, from tensorflow-datasets (mocked), with augmentation; everything that draws
# (the data order, the augmentation, the random masks, the cnn's dropout) draws, and
# deterministic ops make a resumed run comparable bit for bit with an uninterrupted one.
OVERWRITE_FLAGS = [
    "--dataset=cifar10", "--augment", "--epochs=4", "--batch_size=8", "--max_test_examples=16",
    "--mask_rule=random", "--gsnr_every=5", "--deterministic",
]


@pytest.fixture(scope="module")
def resumed_run(main_run, tmp_path_factory):
    """A copy of the main run: refused, overwritten, SIGKILLed, its newest checkpoint
    damaged, refused again, resumed.

    Beside it, the same run uninterrupted. Returns a dict of what each step left behind.
    """
    run_dir = tmp_path_factory.mktemp("resumed") / "run"
    uninterrupted_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    uninterrupted = start([*OVERWRITE_FLAGS, f"--output_dir={uninterrupted_dir}"], MOCK_TRAIN)
    shutil.copytree(main_run[0], run_dir)
    args = [*OVERWRITE_FLAGS, f"--output_dir={run_dir}"]
    steps = {"finished_files": file_times(run_dir)}
    steps["refused_finished"] = run(args, fresh=True)  # TensorFlow's start-up lines too
    steps["files_after_refusal"] = file_times(run_dir)

    checkpoints = run_dir / "checkpoints"
    # The copy holds the main run's checkpoints of epochs 1 and 2: its third is new.
    kill_when(start([*args, "--overwrite"], MOCK_TRAIN), checkpoints / "epoch-0003")
    steps["killed_metrics"] = (run_dir / "metrics.json").exists()
    steps["killed_epochs"] = [int(row["epoch"]) for row in read_history(run_dir)]
    # The newest checkpoint truncated, as by a full disk: the resume falls back on the
    # one before it.
    steps["damaged"] = max(path.name for path in checkpoints.glob("epoch-*"))
    weights = checkpoints / steps["damaged"] / "state.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])

    steps["files_before_other_settings"] = file_times(run_dir)
    steps["refused_other_settings"] = run([*args, "--epochs=7"])
    steps["files_after_other_settings"] = file_times(run_dir)
    steps["resumed"] = run(args, MOCK_TRAIN)
    steps["run_dir"] = run_dir
    steps["uninterrupted"] = finish(uninterrupted)
    steps["uninterrupted_dir"] = uninterrupted_dir
    return steps


def test_finished_run_is_not_overwritten(resumed_run):
    assert_one_line_error(resumed_run["refused_finished"], "--overwrite")
    assert resumed_run["files_after_refusal"] == resumed_run["finished_files"]


def test_resume_refuses_other_settings(resumed_run):
    assert_one_line_error(resumed_run["refused_other_settings"], "other settings", "--epochs")
    assert resumed_run["files_after_other_settings"] == resumed_run["files_before_other_settings"]


def test_resumes_after_sigkill_without_repeating_an_epoch(resumed_run):
    assert not resumed_run["killed_metrics"]
    finished = resumed_run["killed_epochs"]
    # Killed once its third checkpoint was written: history.csv has its row of epoch 3
    # if the kill came after it was appended (the checkpoint holds the history too).
    assert len(finished) >= 2 and finished == list(range(1, len(finished) + 1))
    result, run_dir = resumed_run["resumed"], resumed_run["run_dir"]
    assert_ok(result)
    assert_complete_run(run_dir, epochs=4)  # each epoch once in history.csv
    # The resumed process ran only the epochs after the intact checkpoint.
    intact = int(resumed_run["damaged"][-4:]) - 1
    assert result.stdout.count("Epoch ") == 4 - intact
    # The two newest checkpoints are kept: the fallback of a damaged one.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"damaged-{resumed_run['damaged']}", "epoch-0003", "epoch-0004"]


def test_a_damaged_checkpoint_is_named_moved_aside_and_the_one_before_used(resumed_run):
    result, damaged = resumed_run["resumed"], resumed_run["damaged"]
    assert_ok(result)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    named = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(named) == 1 and f"{damaged} is damaged (state.weights.h5: " in named[0], named
    assert f"resuming after epoch {int(damaged[-4:]) - 1}" in named[0]
    moved = resumed_run["run_dir"] / "checkpoints" / f"damaged-{damaged}" / "state.weights.h5"
    assert moved.stat().st_size == 1000  # renamed, never deleted


def gsnr_log(run_dir):
    """`{step: {values}}` of the GSNR TensorBoard log, a killed process's file included."""
    import tensorflow as tf

    logged = {}
    for path in sorted((run_dir / "logs" / "gsnr").glob("*tfevents*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    if value.tag == "gsnr":
                        logged.setdefault(event.step, set()).add(float(tf.make_ndarray(value.tensor)))
        except tf.errors.DataLossError:
            pass  # the last record, cut short by SIGKILL
    return logged


def test_resumed_run_ends_bit_for_bit_as_the_uninterrupted_one(resumed_run):
    run_dir, reference = resumed_run["run_dir"], resumed_run["uninterrupted_dir"]
    assert_ok(resumed_run["resumed"])
    assert_ok(resumed_run["uninterrupted"])
    assert resumed_run["killed_epochs"][:2] == [1, 2], "killed after its third checkpoint"
    import keras

    weights = keras.models.load_model(run_dir / "model.keras").get_weights()
    expected = keras.models.load_model(reference / "model.keras").get_weights()
    for got, want in zip(weights, expected):
        np.testing.assert_array_equal(got, want)
    # The seed generators (three random masks and the dropout) ended in the same state.
    last = pathlib.Path("checkpoints", "epoch-0004", "seed_generators.json")
    assert len(json.loads((reference / last).read_text())) == 4
    assert (run_dir / last).read_text() == (reference / last).read_text()
    # Every logged figure of every epoch, to the last digit; only the times differ.
    rows, expected_rows = read_history(run_dir), read_history(reference)
    for row in rows + expected_rows:
        row.pop("epoch_seconds")
    assert rows == expected_rows and "gsnr" in rows[0]
    # GSNR every 5 of the 8 steps of each epoch, and at each epoch's end: the same steps
    # and values, those the killed process logged after its checkpoint included.
    logged = gsnr_log(run_dir)
    assert logged == gsnr_log(reference)
    assert sorted(logged)[:4] == [5, 8, 10, 15] and max(logged) == 32
    assert all(len(values) == 1 for values in logged.values())


def test_overwritten_by_a_tfds_dataset_with_augmentation(resumed_run):
    run_dir = resumed_run["run_dir"]
    assert_ok(resumed_run["resumed"])
    flags = json.loads((run_dir / "config.json").read_text())["flags"]
    assert (flags["dataset"], flags["augment"], flags["strategy"]) == ("cifar10", True, "default")
    history, _ = assert_complete_run(run_dir, epochs=4)
    kept = kept_fractions(history[-1])
    assert len(kept) == 3 and all(0 < value <= 1 for value in kept) and min(kept) < 1
    import keras

    model = keras.models.load_model(run_dir / "model.keras")
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 3)


BAD_FLAGS = [
    (["--epochs=0"], "--epochs"),
    (["--mask_rule=median"], "--mask_rule"),
    (["--mask_kernel_size=4"], "--mask_kernel_size"),
    (["--mask_keep_fraction=1.5"], "--mask_keep_fraction"),
    (["--mask_keep_fraction=0"], "--mask_keep_fraction"),
    (["--model=alexnet"], "--model"),
    (["--mask_rule=lateral", "--mask_soft"], "--mask_soft"),
    (["--strategy=multi_worker"], "TF_CONFIG"),
    (["--dataset=no_such_dataset"], "no_such_dataset"),
    (["--epochs=3", "--mask_start_epoch=3"], "--mask_start_epoch"),
    (["--jit_compile=maybe"], "--jit_compile"),
    (["--mask_placement=stage"], "--mask_placement"),
    (["--model=keras.applications.MobileNet", "--mask_placement=block"], "--mask_placement"),
    (["--label_noise=1"], "--label_noise"),
    (["--validation_fraction=1.5"], "--validation_fraction"),
    (["--examples_per_class=5", "--max_train_examples=100"], "--examples_per_class"),
    (["--momentum=0.5"], "--momentum"),
    (["--lr_schedule=step"], "--lr_schedule"),
]


def test_bad_flags_fail_in_one_line_and_write_nothing(tmp_path):
    # Forked processes; the refusals above show that a fresh interpreter's stderr,
    # TensorFlow's start-up lines included, is also that one line.
    commands = [[*flags, f"--output_dir={tmp_path / str(index)}"] for index, (flags, _) in enumerate(BAD_FLAGS)]
    for index, ((flags, named), result) in enumerate(zip(BAD_FLAGS, run_forked(commands))):
        assert_one_line_error(result, named)
        assert not (tmp_path / str(index)).exists()
