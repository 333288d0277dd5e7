"""Helpers of the end-to-end tests: the project's commands run in subprocesses, and
what a finished run directory holds."""

import csv
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

from tests import warm

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")
MOCK_TRAIN = str(ROOT / "tests" / "mock_tfds_train.py")


def environment(**extra):
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(ROOT),
        GRADMASK_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def start(args, script=TRAIN, fresh=False, *, new_session=False, **env):
    """Starts `python script args` (`script=None`: `python args`, e.g. `-m eval`;
    `script="-m MODULE"`: `python -m MODULE args`).

    The process is forked from this worker's warm interpreter (`tests/warm.py`: no
    seconds spent importing TensorFlow), and so are the `python` commands it starts
    (a study's train.py), unless `fresh`, or `env` sets what that interpreter's
    imports read (`KERAS_BACKEND`, `PYTHONPATH`). `new_session`: its own process
    group (`os.killpg(process.pid, ...)` ends it and its children).
    """
    if script is None and args[:1] == ["-m"]:
        argv, module = list(args[1:]), True
    elif script is not None and script.startswith("-m "):
        argv, module = [script[3:], *args], True
    else:
        argv, module = [*([script] if script else []), *args], False
    if fresh or {"KERAS_BACKEND", "PYTHONPATH"} & set(env):
        return subprocess.Popen(
            [sys.executable, *(["-m"] if module else []), *argv],
            cwd=ROOT,
            env=environment(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
    return warm.WarmProcess(argv, module, environment(**env), ROOT, environment(),
                            start_new_session=new_session)


def finish(process, timeout=600):
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(args, script=TRAIN, fresh=False, **env):
    return finish(start(args, script, fresh, **env))


def run_all(commands, parallel=2):
    """Runs `(args, script)` pairs, `parallel` at a time; results in order."""
    results, running = [None] * len(commands), {}
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < parallel:
            index, (args, script) = pending.pop(0)
            running[index] = start(args, script)
        index = next(iter(running))
        results[index] = finish(running.pop(index))
    return results


def run_forked(commands, script=TRAIN):
    """Runs `python script args` for each `args` of `commands`, one after another, from
    the warm interpreter; results in order. For command lines that fail before any
    work (bad flags): what a fresh interpreter prints while importing TensorFlow is
    not part of their stderr; `run(..., fresh=True)` shows that."""
    return [run(args, script) for args in commands]


# What a finished run directory holds (the end-to-end tests of train.py).


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
    assert 0 <= metrics["test_accuracy"] <= 1 and math.isfinite(metrics["test_loss"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["flags"]["epochs"] == epochs and "tensorflow" in config["versions"]
    return history, metrics


def kill_when(process, path, timeout=300):
    """SIGKILLs `process` as soon as `path` exists (it must not end before)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
