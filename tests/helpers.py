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
import tempfile
import time

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


def start(args, script=TRAIN, **env):
    """Starts `python script args` (`script=None`: `python args`, e.g. `-m eval`)."""
    return subprocess.Popen(
        [sys.executable, *([script] if script else []), *args],
        cwd=ROOT,
        env=environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process, timeout=600):
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(args, script=TRAIN, **env):
    return finish(start(args, script, **env))


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


# Runs each command line of a script in a child forked from this one process, which
# imported TensorFlow, the package and tensorflow-datasets once (each costs seconds).
_FORKING_RUNNER = r"""
import json, os, runpy, sys, traceback
import gradmask_tf.trainer, tensorflow_datasets
script, commands, output = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
codes = []
for index, args in enumerate(commands):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, stream in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(f"{output}/{index}.{stream}", os.O_WRONLY | os.O_CREAT, 0o644), fd)
            if script.startswith("-m "):
                sys.argv = [script[3:], *args]
                runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [script, *args]
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def run_forked(commands, script=TRAIN, timeout=600):
    """Runs `python script args` for each `args` of `commands`; results in order.

    `script` is a path, or `-m MODULE` for `python -m MODULE args`.

    Each is its own process with its own exit status, stdout and stderr, forked from
    one process that imported the heavy modules once: for command lines that fail
    before any work (bad flags). What a fresh interpreter prints while importing
    TensorFlow is not part of their stderr; `run` shows that.
    """
    with tempfile.TemporaryDirectory() as output:
        runner = subprocess.run(
            [sys.executable, "-c", _FORKING_RUNNER, script, json.dumps(commands), output],
            cwd=ROOT,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert runner.returncode == 0, runner.stderr[-3000:]
        codes = json.loads(runner.stdout.strip().splitlines()[-1])
        return [
            subprocess.CompletedProcess(
                [script, *args],
                code,
                pathlib.Path(output, f"{index}.stdout").read_text(),
                pathlib.Path(output, f"{index}.stderr").read_text(),
            )
            for index, (args, code) in enumerate(zip(commands, codes))
        ]



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
