"""Helpers of the end-to-end tests: the project's commands run in subprocesses."""

import os
import pathlib
import subprocess
import sys

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


