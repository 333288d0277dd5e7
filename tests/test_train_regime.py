"""End-to-end tests of train.py on the data of the study regimes: a label-noise run on
small data, killed and resumed, and one short run on the real Fashion-MNIST."""

import json
import pathlib
import threading

import numpy as np
import pytest

from eval.plans import flag_arguments
from gradmask_tf import data
from tests.helpers import assert_complete_run, assert_ok, kill_when, run, start


# A label-noise run on small data (METHOD.md section 6): the idx_dir fixture's rarest
# class has 4 examples. Killed after its first epoch and resumed, beside the same run
# uninterrupted: the best-validation state survives the kill.
REGIME = dict(
    label_noise=0.4, examples_per_class=4, epochs=3, batch_size=8, max_test_examples=32,
    lr_schedule="cosine", optimizer="sgd", momentum=0.5, learning_rate=0.05,
    deterministic=True,
)


@pytest.fixture(scope="module")
def regime_runs(idx_dir, tmp_path_factory):
    """train.py killed after its first epoch, then resumed; meanwhile, in this process,
    the same run uninterrupted (a run is a Python call: one process fewer)."""
    from gradmask_tf.config import RunConfig
    from gradmask_tf.trainer import run as run_in_process

    root = tmp_path_factory.mktemp("regime")
    runs = {name: root / name for name in ("uninterrupted", "resumed")}
    args = [*flag_arguments(REGIME), f"--data_dir={idx_dir}",
            f"--output_dir={runs['resumed']}"]
    process, failures = start(args), []

    def kill():
        try:
            kill_when(process, runs["resumed"] / "checkpoints" / "epoch-0001")
        except BaseException as error:  # noqa: BLE001  (raised below, in the test)
            failures.append(error)
            process.kill()

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        run_in_process(RunConfig(**REGIME, data_dir=str(idx_dir),
                                 output_dir=str(runs["uninterrupted"])))
    finally:
        killer.join()
    if failures:
        raise failures[0]
    return runs, {"resumed": run(args)}


def test_label_noise_run_writes_its_regime_and_metrics(regime_runs, idx_dir):
    runs, _ = regime_runs
    run_dir = runs["uninterrupted"]
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
