"""End-to-end tests of train.py: what only a process shows, on tiny data.

Each architecture with masks on and off, and insertion into keras.applications, is
checked in process (tests/test_models.py, tests/test_insert.py). Here one run serves
several checks: the main run (a flagfile; two mirrored CPU devices; masks from the
second epoch; GSNR) is served from its SavedModel, then a copy of it is refused,
overwritten, killed and resumed, and ends as the same run uninterrupted.
"""

import csv
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gradmask_tf import data
from tests.helpers import MOCK_TRAIN, environment, finish, run, run_forked, start

TINY = ["--epochs=2", "--batch_size=16", "--max_test_examples=32"]


def read_history(run_dir):
    with open(run_dir / "history.csv") as file:
        return list(csv.DictReader(file))


def assert_ok(result):
    assert result.returncode == 0, result.stderr[-3000:]


def assert_one_line_error(result, *named):
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    for name in named:
        assert name in message, message


def assert_complete_run(run_dir, epochs=2):
    for name in ("config.json", "history.csv", "metrics.json", "model.keras"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "saved_model" / "saved_model.pb").is_file()
    assert any((run_dir / "logs").rglob("*tfevents*")), "TensorBoard logs"
    assert (run_dir / "checkpoints").is_dir()
    history = read_history(run_dir)
    assert [int(row["epoch"]) for row in history] == list(range(1, epochs + 1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and np.isfinite(metrics["test_loss"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["flags"]["epochs"] == epochs and "tensorflow" in config["versions"]
    return history, metrics


def kept_fractions(row):
    return [float(value) for key, value in row.items() if key.startswith("kept_fraction/")]


def file_times(directory):
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*") if path.is_file()}


MAIN_FLAGS = [
    "--epochs=3", "--batch_size=16", "--max_test_examples=32", "--mask_start_epoch=1",
    "--strategy=mirrored", "--num_cpu_devices=2", "--gsnr_every=2",
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
    assert_complete_run(run_dir, epochs=3)
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
    "--dataset=cifar10", "--augment", "--epochs=6", "--batch_size=8", "--max_test_examples=16",
    "--mask_rule=random", "--gsnr_every=3", "--deterministic",
]


@pytest.fixture(scope="module")
def resumed_run(main_run, tmp_path_factory):
    """A copy of the main run: refused, overwritten, SIGKILLed, refused again, resumed.

    Beside it, the same run uninterrupted. Returns a dict of what each step left behind.
    """
    run_dir = tmp_path_factory.mktemp("resumed") / "run"
    uninterrupted_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    uninterrupted = start([*OVERWRITE_FLAGS, f"--output_dir={uninterrupted_dir}"], MOCK_TRAIN)
    shutil.copytree(main_run[0], run_dir)
    args = [*OVERWRITE_FLAGS, f"--output_dir={run_dir}"]
    steps = {"finished_files": file_times(run_dir)}
    steps["refused_finished"] = run(args)
    steps["files_after_refusal"] = file_times(run_dir)

    process = start([*args, "--overwrite"], MOCK_TRAIN)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "epoch-0001").exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    steps["killed_metrics"] = (run_dir / "metrics.json").exists()
    steps["killed_epochs"] = [int(row["epoch"]) for row in read_history(run_dir)]

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
    assert finished and finished == list(range(1, len(finished) + 1))
    result, run_dir = resumed_run["resumed"], resumed_run["run_dir"]
    assert_ok(result)
    assert f"after epoch {len(finished)}" in result.stdout or f"after epoch {len(finished) + 1}" in result.stdout
    assert_complete_run(run_dir, epochs=6)
    # The resumed process ran only the epochs that were missing.
    assert result.stdout.count("Epoch ") <= 6 - len(finished)
    # The two newest checkpoints are kept: the fallback of a damaged one.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0005", "epoch-0006"]


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
    assert resumed_run["killed_epochs"][0] == 1, "killed after its first epoch"
    import keras

    weights = keras.models.load_model(run_dir / "model.keras").get_weights()
    expected = keras.models.load_model(reference / "model.keras").get_weights()
    for got, want in zip(weights, expected):
        np.testing.assert_array_equal(got, want)
    # The seed generators (three random masks and the dropout) ended in the same state.
    last = pathlib.Path("checkpoints", "epoch-0006", "seed_generators.json")
    assert len(json.loads((reference / last).read_text())) == 4
    assert (run_dir / last).read_text() == (reference / last).read_text()
    # Every logged figure of every epoch, to the last digit; only the times differ.
    rows, expected_rows = read_history(run_dir), read_history(reference)
    for row in rows + expected_rows:
        row.pop("epoch_seconds")
    assert rows == expected_rows and "gsnr" in rows[0]
    # GSNR every 3 of the 8 steps of each epoch, and at each epoch's end: the same steps
    # and values, those the killed process logged after its checkpoint included.
    logged = gsnr_log(run_dir)
    assert logged == gsnr_log(reference)
    assert sorted(logged)[:4] == [3, 6, 8, 9] and max(logged) == 48
    assert all(len(values) == 1 for values in logged.values())


def test_overwritten_by_a_tfds_dataset_with_augmentation(resumed_run):
    run_dir = resumed_run["run_dir"]
    assert_ok(resumed_run["resumed"])
    flags = json.loads((run_dir / "config.json").read_text())["flags"]
    assert (flags["dataset"], flags["augment"], flags["strategy"]) == ("cifar10", True, "default")
    history, _ = assert_complete_run(run_dir, epochs=6)
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


# A label-noise run on small data (METHOD.md section 6): the idx_dir fixture's rarest
# class has 4 examples. Killed after its first epoch and resumed, beside the same run
# uninterrupted: the best-validation state survives the kill.
REGIME_FLAGS = [
    "--label_noise=0.4", "--examples_per_class=4", "--epochs=3", "--batch_size=8",
    "--max_test_examples=32", "--lr_schedule=cosine", "--optimizer=sgd", "--momentum=0.5",
    "--learning_rate=0.05", "--deterministic",
]


@pytest.fixture(scope="module")
def regime_runs(idx_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("regime")
    runs = {name: root / name for name in ("uninterrupted", "resumed")}
    args = {name: [*REGIME_FLAGS, f"--data_dir={idx_dir}", f"--output_dir={path}"]
            for name, path in runs.items()}
    uninterrupted = start(args["uninterrupted"])
    process = start(args["resumed"])
    deadline = time.time() + 300
    while not (runs["resumed"] / "checkpoints" / "epoch-0001").exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    resumed = run(args["resumed"])
    return runs, {"uninterrupted": finish(uninterrupted), "resumed": resumed}


def test_label_noise_run_writes_its_regime_and_metrics(regime_runs, idx_dir):
    runs, results = regime_runs
    run_dir = runs["uninterrupted"]
    assert_ok(results["uninterrupted"])
    history, metrics = assert_complete_run(run_dir, epochs=3)
    flags = json.loads((run_dir / "config.json").read_text())["flags"]
    # The validation share defaults to 0.1 under label noise, recorded as such.
    assert flags["validation_fraction"] == 0.1 and flags["label_noise"] == 0.4
    assert (flags["lr_schedule"], flags["momentum"], flags["examples_per_class"]) == ("cosine", 0.5, 4)
    split = json.loads((run_dir / "split.json").read_text())
    train, validation = split["train_indices"], split["validation_indices"]
    assert (len(train), len(validation)) == (36, 4) and not set(train) & set(validation)
    labels = data.split_labels("fashion_mnist", "train", data_dir=idx_dir)
    assert np.all(np.bincount(labels[train + validation], minlength=10) == 4)
    noise = json.loads((run_dir / "label_noise.json").read_text())
    parts = [record["part"] for record in noise]
    assert parts.count("train") == round(0.4 * 36) and parts.count("validation") == round(0.4 * 4)
    for record in noise:
        assert record["true_label"] == labels[record["index"]] != record["noisy_label"]
        assert record["index"] in (train if record["part"] == "train" else validation)
    for row in history:
        assert 0 <= float(row["val_accuracy"]) <= 1 and 0 <= float(row["test_accuracy"]) <= 1
    tests = [float(row["test_accuracy"]) for row in history]
    validations = [float(row["val_accuracy"]) for row in history]
    assert metrics["test_accuracy_end"] == pytest.approx(np.mean(tests))
    best = int(np.argmax(validations))
    assert metrics["best_validation_epoch"] == best + 1
    assert metrics["best_validation_accuracy"] == pytest.approx(validations[best])
    # The saved best weights are that epoch's: their test accuracy is the one logged.
    assert metrics["test_accuracy_best_validation"] == pytest.approx(tests[best])
    assert (run_dir / "best.weights.h5").is_file()
    for key in ("memorisation", "clean_train_accuracy"):
        assert 0 <= metrics[key] <= 1
        # Recorded each epoch too: the curve ends at the final weights' figure.
        curve = [float(row[key]) for row in history]
        assert len(curve) == 3 and all(0 <= value <= 1 for value in curve)
        assert curve[-1] == pytest.approx(metrics[key], abs=1e-12)
    assert metrics["test_accuracy"] == pytest.approx(tests[-1], abs=1e-6)


def test_label_noise_run_resumes_with_its_best_validation_state(regime_runs):
    runs, results = regime_runs
    assert_ok(results["resumed"])
    assert "Resuming" in results["resumed"].stdout
    import h5py

    def weights(path):
        with h5py.File(path) as file:
            values = []
            file.visititems(lambda name, item: values.append((name, item[()])) if isinstance(item, h5py.Dataset) else None)
        return values

    got, want = (weights(runs[name] / "best.weights.h5") for name in ("resumed", "uninterrupted"))
    assert [name for name, _ in got] == [name for name, _ in want]
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(a, b)
    metrics = [json.loads((runs[name] / "metrics.json").read_text()) for name in runs]
    for values in metrics:
        for key in ("train_seconds", "mean_epoch_seconds"):
            values.pop(key)
    assert metrics[0] == metrics[1]
    assert (runs["resumed"] / "label_noise.json").read_text() == (
        runs["uninterrupted"] / "label_noise.json").read_text()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_worker_run_on_loopback(tmp_path, idx_dir):
    run_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    args = [*TINY, "--strategy=multi_worker", "--gsnr_every=1", f"--data_dir={idx_dir}",
            f"--output_dir={run_dir}"]
    workers = [
        start(args, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        for i in range(2)
    ]
    results = [finish(worker, timeout=300) for worker in workers]
    for result in results:
        assert_ok(result)
    history, _ = assert_complete_run(run_dir)
    assert "Done:" in results[0].stdout and "Done:" not in results[1].stdout
    gsnr = [float(row["gsnr"]) for row in history]
    assert gsnr[0] != gsnr[1], "measured anew at each epoch end"
    # Both workers saw the same synchronized metrics.
    assert results[1].stdout.count("Epoch 2/2") == 1


def test_real_fashion_mnist(tmp_path):
    if not pathlib.Path(data.DEBIAN_FASHION_MNIST_DIR).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    run_dir = tmp_path / "run"
    result = run(
        ["--epochs=1", "--max_train_examples=3000", "--max_test_examples=1000",
         f"--output_dir={run_dir}"]
    )
    assert_ok(result)
    _, metrics = assert_complete_run(run_dir, epochs=1)
    assert metrics["num_test_examples"] == 1000
    # One short epoch on 3000 real images lands far above chance (0.1).
    assert metrics["test_accuracy"] > 0.6


def test_resume_moves_a_damaged_checkpoint_aside_and_runs_its_epoch_again(idx_dir, tmp_path):
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    args = ["--epochs=6", "--batch_size=16", "--max_test_examples=32",
            f"--data_dir={idx_dir}", f"--output_dir={run_dir}"]
    process = start(args)
    deadline = time.time() + 300
    while not (checkpoints / "epoch-0002").exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (run_dir / "metrics.json").exists()
    newest = max(path.name for path in checkpoints.glob("epoch-*"))
    weights = checkpoints / newest / "state.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk

    result = run(args)
    assert_ok(result)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    named = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(named) == 1 and f"{newest} is damaged (state.weights.h5: " in named[0], named
    assert f"resuming after epoch {int(newest[-4:]) - 1}" in named[0]
    assert (checkpoints / f"damaged-{newest}" / "state.weights.h5").stat().st_size == 1000
    assert_complete_run(run_dir, epochs=6)  # each epoch once in history.csv
