"""One study per directory (eval.study_lock): held, taken over, broken, released."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from eval import study_lock, study_runs
from tests.helpers import ROOT, environment


def _lock(directory, **holder):
    (directory / study_lock.LOCK).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "started": "then", **holder}))


def _gone_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_lock_is_held_until_released(tmp_path):
    path = study_lock.acquire(tmp_path)
    holder = json.loads(path.read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(study_lock.LockHeld, match=rf"process {os.getpid()} on host "
                                                  rf"{socket.gethostname()} \(started "):
        study_lock.acquire(tmp_path)
    study_lock.release(path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_lock_whose_process_is_gone_is_taken_over_in_one_line(tmp_path):
    pid = _gone_pid()
    _lock(tmp_path, pid=pid)
    lines = []
    path = study_lock.acquire(tmp_path, warn=lines.append)
    (line,) = lines
    assert line.startswith(f"taking over the lock {path} of process {pid} on host ")
    assert line.endswith("which is gone") and json.loads(path.read_text())["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [study_lock.LOCK]


def test_a_reused_process_id_is_not_taken_for_the_holder(tmp_path):
    _lock(tmp_path, pid=os.getpid(), process_start=1)  # this pid, another process's start
    lines = []
    study_lock.acquire(tmp_path, warn=lines.append)
    assert "which is gone" in lines[0]


@pytest.mark.parametrize("content", [None, "{not json"])
def test_a_lock_from_another_host_or_unreadable_needs_break_lock(tmp_path, content):
    if content is None:
        _lock(tmp_path, host="elsewhere", pid=_gone_pid())
    else:
        (tmp_path / study_lock.LOCK).write_text(content)
    with pytest.raises(study_lock.LockHeld, match="pass --break_lock") as caught:
        study_lock.acquire(tmp_path)
    if content is None:
        assert "on host elsewhere" in str(caught.value)
    lines = []
    path = study_lock.acquire(tmp_path, break_lock=True, warn=lines.append)
    assert len(lines) == 1 and lines[0].endswith("(--break_lock)")
    assert json.loads(path.read_text())["pid"] == os.getpid()


def test_release_leaves_another_study_s_lock(tmp_path):
    _lock(tmp_path, pid=1)
    study_lock.release(tmp_path / study_lock.LOCK)
    assert (tmp_path / study_lock.LOCK).is_file()


def test_a_ray_trial_takes_no_lock(tmp_path, monkeypatch):
    """A trial (`StudyRun.run`) is part of the study that holds the directory's lock."""
    _lock(tmp_path, pid=os.getppid())  # a live process holds the study directory
    held = (tmp_path / study_lock.LOCK).read_bytes()
    ran = []
    monkeypatch.setattr(study_runs, "execute", lambda command, log, env=None: ran.append(command))
    run = study_runs.StudyRun(what="none, seed 0", name="none-seed0",
                              run_dir=tmp_path / "runs" / "none-seed0", results=None,
                              log=tmp_path / "logs" / "none-seed0.log",
                              train_command=(sys.executable, "train.py"))
    assert run.run() == {"trained": True, "evaluated": ""} and len(ran) == 1
    assert (tmp_path / study_lock.LOCK).read_bytes() == held


# A study whose train.py is replaced: `sleep` blocks in its first run, `fake` writes a
# finished run's files at once.
DRIVER = """
import json
import sys
from eval import study

def train_command(config):
    if sys.argv[1] == "sleep":
        return [sys.executable, "-c", "import time; time.sleep(600)"]
    return [sys.executable, "-c", FAKE, config.output_dir, json.dumps(config.to_dict())]

FAKE = '''
import json, pathlib, sys
run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)
(run / "config.json").write_text(json.dumps({"flags": json.loads(sys.argv[2])}))
(run / "metrics.json").write_text(json.dumps({"epochs": 1, "test_accuracy": 0.5}))
(run / "history.csv").write_text("epoch,loss\\\\n1,0.5\\\\n")
'''
study.train_command = train_command
sys.exit(study.main(["eval.study", *sys.argv[2:]]))
"""


def _start(args, driver=None):
    command = [str(driver), *args] if driver else ["-m", "eval.study", *args]
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: killed with its child


def _listing(directory):
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*")}


def test_a_second_study_on_a_directory_stops_in_one_line(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    directory = tmp_path / "study"
    args = [f"--output_dir={directory}", "--rules=mean", "--nocontrols", "--primary=",
            "--seeds=1", "--evals=", "--epochs=1"]
    first = _start(["sleep", *args], driver)
    log = directory / "logs" / "none-seed0.log"
    deadline = time.time() + 300
    while not (log.exists() and "sleep" in log.read_text()):  # in its first run, blocked
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # the log's header written: the first study writes nothing more
    try:
        before = _listing(directory)
        second = _start(args)
        stdout, stderr = second.communicate(timeout=300)
        assert second.returncode == 2, stderr
        (line,) = stderr.splitlines()
        assert line.startswith(f"python -m eval.study: error: another study runs on {directory}: "
                               f"process {first.pid} on host {socket.gethostname()} (started ")
        assert _listing(directory) == before, "the second study writes nothing"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # its lock stays behind
        first.communicate()
    assert (directory / study_lock.LOCK).is_file()

    third = _start(["fake", *args], driver)
    stdout, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr[-3000:]
    assert (f"python -m eval.study: taking over the lock {directory / study_lock.LOCK} of "
            f"process {first.pid} on host {socket.gethostname()}") in stderr
    assert (directory / "report.md").is_file() and not (directory / study_lock.LOCK).exists()


def test_the_lock_is_released_when_the_study_fails(tmp_path, monkeypatch):
    from eval import study

    def fail(*args):
        assert (tmp_path / study_lock.LOCK).is_file()  # held while the study runs
        raise RuntimeError("a run failed")

    monkeypatch.setattr(study, "run_study", fail)
    with pytest.raises(RuntimeError, match="a run failed"):
        study.main(["eval.study", f"--output_dir={tmp_path}", "--rules=mean", "--nocontrols",
                    "--primary=", "--seeds=1", "--evals="])
    assert not (tmp_path / study_lock.LOCK).exists()
