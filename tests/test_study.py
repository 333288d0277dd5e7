"""eval.study end to end (smoke settings, with an interruption) and its report logic."""

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
    # The fewest rules with a verdict (none, random) and a control (mean, random); one
    # epoch of two steps, the GSNR logged once, the evaluations at their smoke settings.
    args = [
        "--quick", "--smoke", f"--output_dir={directory}", f"--data_dir={idx_dir}",
        "--rules=none,mean,random", "--epochs=1", "--max_train_examples=32",
        "--max_test_examples=16", "--eval_examples=16", "--gsnr_every=2",
        "--train_flags=--batch_size=16",
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
    report = (directory / "report.md").read_text()
    assert "| metric | none | mean | random |" in report and "Verdicts:" in report
    assert "one seed: no spread to judge by" in report
    # The control runs at the kept fraction the mean rule measured.
    mean_metrics = json.loads((directory / "runs" / "mean-seed0" / "metrics.json").read_text())
    kept = [v for k, v in mean_metrics.items() if k.startswith("kept_fraction/")]
    random_config = json.loads((directory / "runs" / "random-seed0" / "config.json").read_text())
    assert random_config["flags"]["mask_keep_fraction"] == pytest.approx(sum(kept) / len(kept), abs=1e-4)
    for rule in ("none", "mean", "random"):
        assert (directory / "runs" / f"{rule}-seed0" / "eval" / "quality.json").is_file()
    record = json.loads((directory / "study.json").read_text())
    assert record["wall_seconds_total"] >= record["wall_seconds_this_invocation"] > 0
