"""eval.study --engine=ray: a tiny plan on embedded Ray against the local engine, a trial's
train.py killed mid-run, and the one-line errors.

One module fixture runs the plan twice at once, on embedded Ray and locally, both with
deterministic ops and one thread per run; the tests read what they wrote.
"""

import csv
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, environment, run, start

STUDY = str(ROOT / "eval" / "study.py")
# One run per engine (on Ray each train.py is a fresh process importing TensorFlow),
# killed once on Ray: a trial retried, then its results as the local engine's.
ARMS, SEEDS = ("mean",), (0,)
KILLED = "mean-seed0"  # the run whose train.py is killed after its first epoch
# The engines must agree to this (absolute) tolerance; with deterministic ops and fixed
# thread counts they agree exactly on this machine.
TOLERANCE = 1e-6


def _plan(path):
    path.write_text(json.dumps({
        "notes": "the Ray engine's test plan",
        "seeds": len(SEEDS),
        "arms": [{"name": "mean", "rule": "mean"}],
        # No evaluation: each costs a process importing TensorFlow (the local engine's
        # tests run one); a trial runs them as the local engine does (StudyRun.run).
        "regimes": [{"name": "clean", "evals": []}],
    }))
    return path


def _args(plan, idx_dir, directory):
    return [
        f"--plan={plan}", "--smoke", f"--output_dir={directory}", f"--data_dir={idx_dir}",
        "--epochs=2", "--max_train_examples=32", "--max_test_examples=16",
        "--eval_examples=16", "--gsnr_every=0", "--cpus_per_run=1",
        "--train_flags=--batch_size=16,--deterministic",
    ]


def _start(args, fresh):
    """The study in its own process group. The local engine's is forked from the warm
    interpreter (tests/warm.py), as its train.py; Ray's driver is a fresh interpreter
    (forked, its first call to Ray's GCS waited 60 s when the CPUs were busy)."""
    return start(args, "-m eval.study", fresh, new_session=True)


def _train_pid(run_dir):
    """The pid of the train.py that writes `run_dir` (Linux: read from /proc)."""
    wanted = f"--output_dir={run_dir}".encode()
    for entry in pathlib.Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv and any(arg.endswith(b"train.py") for arg in argv):
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def studies(tmp_path_factory, idx_dir):
    """The plan on embedded Ray (one run's train.py killed after its first epoch) and,
    at the same time, locally."""
    root = tmp_path_factory.mktemp("ray_engine")
    plan = _plan(root / "tiny.json")
    on_ray = _start([*_args(plan, idx_dir, root / "ray"), "--engine=ray",
                     f"--results_dir={root / 'results'}"], fresh=True)
    local = _start(_args(plan, idx_dir, root / "local"), fresh=False)
    try:
        killed = root / "ray" / "clean" / "runs" / KILLED
        deadline = time.time() + 600
        while not (killed / "checkpoints" / "epoch-0001").exists():
            assert on_ray.poll() is None, on_ray.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        pid = _train_pid(killed)
        assert pid is not None and not (killed / "metrics.json").exists()
        os.kill(pid, signal.SIGKILL)
        ray_out, ray_err = on_ray.communicate(timeout=600)
        local_out, local_err = local.communicate(timeout=600)
    finally:
        for process in (on_ray, local):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert on_ray.returncode == 0, ray_err[-3000:]
    assert local.returncode == 0, local_err[-3000:]
    return dict(root=root, plan=plan, idx_dir=idx_dir, ray_out=ray_out, local_out=local_out)


def _history(run_dir):
    with open(run_dir / "history.csv") as file:
        return list(csv.DictReader(file))


def _close(a, b):
    return abs(float(a) - float(b)) <= TOLERANCE


def test_ray_trials_give_the_local_engines_results(studies):
    root = studies["root"]
    for arm in ARMS:
        for seed in SEEDS:
            on_ray = root / "ray" / "clean" / "runs" / f"{arm}-seed{seed}"
            local = root / "local" / "clean" / "runs" / f"{arm}-seed{seed}"
            metrics = [json.loads((d / "metrics.json").read_text()) for d in (on_ray, local)]
            results = {k for k in metrics[1] if "seconds" not in k}
            assert {"test_accuracy", "test_loss"} <= results
            for key in sorted(results):
                assert metrics[0][key] == metrics[1][key] or _close(
                    metrics[0][key], metrics[1][key]), (arm, seed, key, metrics)
            rows = [_history(d) for d in (on_ray, local)]
            assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == ["1", "2"]
            for row, expected in zip(*rows):
                for key in expected:
                    if key not in ("epoch", "epoch_seconds"):
                        assert _close(row[key], expected[key]), (arm, seed, key)
            flags = [json.loads((d / "config.json").read_text())["flags"] for d in (on_ray, local)]
            for value in flags:
                value.pop("output_dir")
            assert flags[0] == flags[1] and flags[0]["deterministic"]


def test_a_killed_train_py_is_retried_and_runs_each_epoch_once(studies):
    root, out = studies["root"], studies["ray_out"]
    killed = root / "ray" / "clean" / "runs" / KILLED
    assert [row["epoch"] for row in _history(killed)] == ["1", "2"]
    log = (root / "ray" / "clean" / "logs" / f"{KILLED}.log").read_text()
    assert log.count("train.py") >= 2 and f"Resuming {killed} after epoch" in log
    assert ("retry clean: mean, seed 0 (1 of at most 3): a command failed (killed by "
            "signal 9") in out, out
    record = json.loads((root / "ray" / "study.json").read_text())
    assert record["engine"]["retries_this_invocation"] == 1
    assert record["runs_trained_this_invocation"] == 1


def test_ray_results_land_in_the_local_engines_files(studies):
    root, out = studies["root"], studies["ray_out"]
    assert "Ray: the embedded Ray: 1 node(s)" in out and "1 of 1 runs to do" in out
    for arm in ARMS:
        for seed in SEEDS:
            stored = root / "results" / "clean" / f"{arm}-seed{seed}"
            assert sorted(p.name for p in stored.iterdir() if p.is_file()) == [
                "config.json", "history.csv", "metrics.json"]
            assert f"clean: {arm}, seed {seed}: trained (" in out
    # The same report as the local engine's, but for the runs' paths.
    reports = [[line for line in (root / engine / "clean" / "report.md").read_text().splitlines()
                if str(root) not in line] for engine in ("ray", "local")]
    assert reports[0] == reports[1] and "| metric | mean |" in reports[0]
    assert "[clean/report.md](clean/report.md)" in (root / "ray" / "report.md").read_text()
    # Ray Tune's own records of each trial, beside the runs.
    (tune,) = (root / "ray" / "ray").glob("tune-*")
    assert (tune / f"clean.{KILLED}" / "result.json").is_file()


def test_a_study_started_again_has_only_what_is_missing_to_do(studies, tmp_path):
    """What a restarted study submits: the runs not trained or not fully evaluated."""
    from eval import ray_engine, study

    results = tmp_path / "results"
    shutil.copytree(studies["root"] / "results", results)
    options = study.settings(study.parse(
        ["study", *_args(studies["plan"], studies["idx_dir"], tmp_path / "elsewhere")]))
    options["results_dir"] = results
    runs = [run for regime in study.regimes_of(options) for run in regime["runs"]]
    assert len(runs) == 1 and ray_engine.pending(runs) == []
    (results / "clean" / "mean-seed0" / "metrics.json").unlink()
    assert [run.name for run in ray_engine.pending(runs)] == ["mean-seed0"]
    # A missing evaluation makes a run pending too (it needs the model: trained again).
    runs = [dataclasses.replace(run, evals=("quality",)) for run in runs]
    assert ray_engine.pending(runs) == runs and all(run.needs_training() for run in runs)


def test_a_trial_on_a_node_without_the_study_directory_fails_saying_so(tmp_path):
    from eval import ray_engine

    marker = tmp_path / "ray" / ray_engine.MARKER  # as the study writes it, not here
    with pytest.raises(RuntimeError, match=f"the study directory {tmp_path} is not on node"):
        ray_engine._trial({"run": "any"}, runs={}, marker=str(marker))


def test_bad_ray_flags_fail_in_one_line_before_anything_is_written(tmp_path):
    directory = tmp_path / "study"
    cases = [
        (["--engine=ray", "--ray_address=127.0.0.1:1"],
         "flag --ray_address=127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1"),
        (["--engine=ray", "--ray_address=head"], "flag --ray_address=head: expected HOST:PORT"),
        (["--engine=ray", "--cpus_per_run=100000"],
         "flag --cpus_per_run=100000: no node of the embedded Ray has 100000 CPUs"),
        (["--engine=ray", "--gpus_per_run=1.5"], "flag --gpus_per_run=1.5: a whole number"),
        (["--gpus_per_run=1"], "flag --gpus_per_run: only with --engine=ray"),
    ]
    # Fresh interpreters: a study imports no TensorFlow, so the warm one saves nothing.
    results = [run([*args, f"--output_dir={directory}"], STUDY, fresh=True) for args, _ in cases]
    for (args, message), result in zip(cases, results):
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr == f"python -m eval.study: error: {result.stderr.split(': error: ')[1]}"
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not directory.exists()


def test_a_cluster_whose_nodes_cannot_hold_one_run_is_named_in_one_line():
    """What a started Ray is checked against (the embedded Ray's CPUs are checked before
    it starts, in the test above: no GPU is needed to check GPUs here)."""
    from eval import ray_engine

    assert ray_engine._unfit("the embedded Ray", 2, 0, 2, 0) is None
    assert ray_engine._unfit("the Ray cluster at head:6379", 1, 1, 4, 2) is None
    assert ray_engine._unfit("the Ray cluster at head:6379", 1, 1, 4, 0) == (
        "flag --gpus_per_run=1: no node of the Ray cluster at head:6379 has 1 GPUs (the "
        "largest has 0); a run's trial runs on one node")
    assert ray_engine._unfit("the embedded Ray", 3, 0, 2, 0).startswith(
        "flag --cpus_per_run=3: no node of the embedded Ray has 3 CPUs (the largest has 2)")


def test_the_ray_engine_without_ray_says_how_to_install_it(tmp_path):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    result = run(["-m", "eval.study", "--engine=ray", f"--output_dir={tmp_path / 'study'}"],
                 script=None, PYTHONPATH=f"{shim.parent}{os.pathsep}{ROOT}")
    assert result.returncode == 2
    assert result.stderr == (
        "python -m eval.study: error: flag --engine=ray: Ray Tune is not installed (No "
        "module named 'ray'); install it with pip install -r requirements-ray.txt, or use "
        "--engine=local\n")
    assert not (tmp_path / "study").exists()


def _children(pid):
    """The pids of the children of every thread of `pid` (Linux)."""
    pids = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except OSError:
            pass
    return [int(child) for child in pids]


def _ended(pid, timeout):
    """Whether `pid` ends (or is a zombie: dead, not yet reaped) within `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_runs_command_dies_with_the_process_that_started_it(tmp_path):
    """A trial's process killed takes its train.py with it: no orphan writes the run.
    As in a Ray worker, the command is started from a thread other than the main one."""
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import pathlib, sys, threading; from eval.study_runs import execute; "
         "t = threading.Thread(target=execute, args=([sys.executable, '-c', "
         "'import time; time.sleep(60)'], pathlib.Path(sys.argv[1]))); t.start(); t.join()",
         str(tmp_path / "log")],
        cwd=ROOT, env=environment(),
    )
    try:
        deadline, children = time.time() + 60, []
        while not children:
            assert time.time() < deadline and starter.poll() is None
            time.sleep(0.05)
            children = _children(starter.pid)
    finally:
        starter.kill()
        starter.wait()
    assert _ended(children[0], timeout=10), "the command outlived the process that started it"
