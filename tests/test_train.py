"""End-to-end tests of train.py, each run in its own process on tiny data."""

import csv
import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gradmask_tf import data
from tests.helpers import MOCK_TRAIN, TRAIN, environment, finish, run, run_all, start

TINY = ["--epochs=2", "--batch_size=16", "--max_test_examples=32"]


def read_history(run_dir):
    with open(run_dir / "history.csv") as file:
        return list(csv.DictReader(file))


def assert_ok(result):
    assert result.returncode == 0, result.stderr[-3000:]


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


ARCHITECTURE_RUNS = [
    ("cnn", "mean"),
    ("cnn", "none"),
    ("vgg", "lateral"),
    ("vgg", "none"),
    ("resnet20", "mean"),
    ("resnet20", "none"),
    ("resnet32", "topk"),
    ("resnet56", "local"),
    ("resnet56", "none"),
    ("resnet32", "none"),
    ("keras.applications.MobileNetV2", "mean"),
]


@pytest.fixture(scope="module")
def architecture_runs(idx_dir, tmp_path_factory):
    """Trains every architecture with masks on and off, two processes at a time."""
    root = tmp_path_factory.mktemp("architectures")
    commands = []
    for model, rule in ARCHITECTURE_RUNS:
        args = [f"--model={model}", f"--mask_rule={rule}", f"--output_dir={root / f'{model}-{rule}'}"]
        if model.startswith("keras.applications."):
            # 28x28 Fashion-MNIST-shaped images, resized up to the 32x32 minimum.
            commands.append(([*args, "--epochs=1", "--batch_size=16", "--max_test_examples=16",
                              f"--data_dir={idx_dir}"], TRAIN))
        elif model == "cnn":
            if rule == "mean":
                args.append("--gsnr_every=2")
            commands.append(([*args, *TINY, f"--data_dir={idx_dir}"], TRAIN))
        else:
            args += ["--dataset=cifar10", "--epochs=1", "--batch_size=8", "--augment"]
            commands.append((args, MOCK_TRAIN))
    results = run_all(commands)
    return {run: (root / f"{run[0]}-{run[1]}", result) for run, result in zip(ARCHITECTURE_RUNS, results)}


@pytest.mark.parametrize("model,rule", ARCHITECTURE_RUNS)
def test_every_architecture_trains_with_masks_on_and_off(architecture_runs, model, rule):
    run_dir, result = architecture_runs[(model, rule)]
    assert_ok(result)
    history, metrics = assert_complete_run(run_dir, epochs=2 if model == "cnn" else 1)
    config = json.loads((run_dir / "config.json").read_text())["flags"]
    assert config["model"] == model and config["mask_rule"] == rule
    kept = [float(value) for key, value in history[-1].items() if key.startswith("kept_fraction/")]
    assert kept, "each mask point reports its kept fraction"
    if rule == "none":
        assert all(value == 1.0 for value in kept)
    else:
        # A mask right before global average pooling sees the same gradient at
        # every position: a tie that `topk` and `mean` keep whole.
        assert all(0 < value <= 1 for value in kept) and min(kept) < 1
    assert float(history[-1]["gradient_norm"]) > 0
    assert "Done: test accuracy" in result.stdout


def test_cnn_learns_the_tiny_task_and_logs_gsnr(architecture_runs):
    run_dir = architecture_runs[("cnn", "mean")][0]
    history, _ = assert_complete_run(run_dir)
    # Not a quality bar: proof that the masked step still trains (chance is 0.1).
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    gsnr = [float(row["gsnr"]) for row in history]
    assert all(np.isfinite(value) and value > 0 for value in gsnr)
    assert any((run_dir / "logs" / "gsnr").rglob("*tfevents*"))


def test_saved_model_serves_without_the_package(architecture_runs, idx_dir):
    run_dir = architecture_runs[("cnn", "mean")][0]
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


def test_finished_run_is_not_overwritten(architecture_runs, idx_dir):
    run_dir = architecture_runs[("cnn", "none")][0]
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}
    args = ["--mask_rule=none", *TINY, f"--data_dir={idx_dir}", f"--output_dir={run_dir}"]
    result = run(args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--overwrite" in result.stderr
    after = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}
    assert after == before
    result = run([*args, "--overwrite", "--epochs=1"])
    assert_ok(result)
    assert_complete_run(run_dir, epochs=1)


def test_resumes_after_sigkill_without_repeating_an_epoch(idx_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "--epochs=6",
        "--batch_size=8",
        "--max_test_examples=16",
        f"--data_dir={idx_dir}",
        f"--output_dir={run_dir}",
    ]
    process = start(args)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "epoch-0002").exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (run_dir / "metrics.json").exists()
    finished = [int(row["epoch"]) for row in read_history(run_dir)]
    assert finished and finished == list(range(1, len(finished) + 1))

    result = run(args)
    assert_ok(result)
    assert f"after epoch {len(finished)}" in result.stdout or f"after epoch {len(finished) + 1}" in result.stdout
    history, _ = assert_complete_run(run_dir, epochs=6)
    # The resumed process ran only the epochs that were missing.
    assert result.stdout.count("Epoch ") <= 6 - len(finished)
    assert len(list((run_dir / "checkpoints").iterdir())) == 1


def test_resume_refuses_other_settings(tmp_path, idx_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"flags": {"epochs": 3, "seed": 0}}))
    result = run([*TINY, f"--data_dir={idx_dir}", f"--output_dir={run_dir}"])
    assert result.returncode == 2 and "other settings" in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


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
]


def test_bad_flags_fail_in_one_line_and_write_nothing(tmp_path):
    commands = [
        ([*flags, f"--output_dir={tmp_path / str(index)}"], TRAIN)
        for index, (flags, _) in enumerate(BAD_FLAGS)
    ]
    for index, ((flags, named), result) in enumerate(zip(BAD_FLAGS, run_all(commands))):
        assert result.returncode == 2, (flags, result.stderr[-2000:])
        message = result.stderr.strip()
        assert "\n" not in message and "Traceback" not in message, message
        assert named in message, (flags, message)
        assert not (tmp_path / str(index)).exists()


def test_flagfile(tmp_path, idx_dir):
    flagfile = tmp_path / "run.flags"
    run_dir = tmp_path / "run"
    flagfile.write_text(
        "\n".join(["--epochs=1", "--batch_size=16", "--max_test_examples=16",
                   "--mask_rule=topk", "--mask_keep_fraction=0.3",
                   "--mask_start_epoch=0", f"--data_dir={idx_dir}", f"--output_dir={run_dir}"])
    )
    assert_ok(run([f"--flagfile={flagfile}"]))
    config = json.loads((run_dir / "config.json").read_text())["flags"]
    assert config["mask_rule"] == "topk" and config["mask_keep_fraction"] == 0.3


def test_mask_start_epoch_and_mirrored_strategy_on_two_cpu_devices(tmp_path, idx_dir):
    run_dir = tmp_path / "run"
    result = run(
        [*TINY, "--epochs=3", "--mask_start_epoch=1", "--strategy=mirrored",
         "--num_cpu_devices=2", f"--data_dir={idx_dir}", f"--output_dir={run_dir}"]
    )
    assert_ok(result)
    history, _ = assert_complete_run(run_dir, epochs=3)
    kept = [float(row["kept_fraction/mask1"]) for row in history]
    assert kept[0] == 1.0 and kept[1] < 1.0 and kept[2] < 1.0


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
