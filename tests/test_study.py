"""eval.study end to end (smoke settings, with an interruption) and its plan's checks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, environment


def _study(args):
    return subprocess.Popen(
        [sys.executable, "-m", "eval.study", *args],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killed with its children
    )


def test_quick_study_resumes_after_an_interruption(tmp_path, idx_dir):
    directory = tmp_path / "study"
    # The fewest arms of a verdict: none, mean and mean's matched control, one seed (the
    # verdicts themselves are tested on stored results in test_compare.py); one epoch of
    # two steps, the GSNR logged once, only the quality evaluation, at its smoke settings.
    args = [
        "--quick", "--smoke", f"--output_dir={directory}", f"--data_dir={idx_dir}",
        "--rules=mean", "--seeds=1", "--evals=quality", "--epochs=1",
        "--max_train_examples=32", "--max_test_examples=16", "--eval_examples=16",
        "--gsnr_every=2", "--train_flags=--batch_size=16",
    ]
    process = _study(args)
    first = directory / "runs" / "none-seed0" / "metrics.json"
    deadline = time.time() + 300
    while not first.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (directory / "report.md").exists()
    finished_at = first.stat().st_mtime_ns

    process = _study(args)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert first.stat().st_mtime_ns == finished_at, "a finished run is not trained again"
    assert "[1/7] train none, seed 0" in stdout and "min so far" in stdout
    assert "train mean control, seed 0" in stdout and "evaluate mean control, seed 0" in stdout
    for name in ("none", "mean", "mean-control"):
        for seed in (0,):
            run = directory / "runs" / f"{name}-seed{seed}"
            flags = json.loads((run / "config.json").read_text())["flags"]
            assert flags["mask_control"] == (name == "mean-control") and flags["seed"] == seed
            assert sorted(path.name for path in (run / "eval").glob("*.json")) == ["quality.json"]
    report = (directory / "report.md").read_text()
    assert "| metric | none | mean | mean control |" in report
    assert "| metric | mean − none | mean − control |" in report
    verdict = next(line for line in report.splitlines()
                   if line.startswith("| `mean:test_accuracy:higher` |"))
    # One seed pairs nothing: the declared primary is reported, as not measured.
    assert "not measured: 1 seed(s)" in verdict
    assert "## Mask metrics" in report and "`kept_l1/" in report
    assert not (directory / "forest.png").exists()  # nothing paired, nothing to draw
    record = json.loads((directory / "study.json").read_text())
    assert record["settings"]["primary"] == ["mean:test_accuracy:higher"]
    assert record["wall_seconds_total"] >= record["wall_seconds_this_invocation"] > 0


@pytest.mark.parametrize(
    "args, named",
    [
        (["--rules=mean,random"], "random is not a masked rule"),
        (["--rules=mean,bogus"], "unknown bogus"),
        (["--rules=none"], "no masked rule"),
        (["--rules=lateral"], "names mean, which is not in --rules=lateral"),
        (["--nocontrols"], "--nocontrols leaves out"),
        (["--primary=mean:test_accuracy:up"], "direction 'up'"),
        (["--evals=quality,robustness"], "unknown robustness"),
    ],
)
def test_a_bad_plan_fails_before_any_run(args, named):
    from eval import study

    study.FLAGS(["study", *args])
    try:
        with pytest.raises(ValueError, match=named):
            study.settings()
    finally:
        study.FLAGS.unparse_flags()


def test_the_plan_lists_masked_rules_once_and_none_runs_anyway():
    from eval import study

    study.FLAGS(["study", "--rules=none,mean,lateral,mean", "--nocontrols", "--primary=",
                 "--evals="])
    try:
        options = study.settings()
    finally:
        study.FLAGS.unparse_flags()
    assert options["rules"] == ["mean", "lateral"]
    assert options["primary"] == [] and options["evals"] == [] and not options["controls"]
