"""eval.study end to end (smoke settings, with an interruption) and its plan's checks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, environment, start


def _study(args):
    # Its own process group, killed with its children; they are forked from the warm
    # interpreter (tests/warm.py), as the study itself.
    return start(args, "-m eval.study", new_session=True)


def test_a_study_made_from_flags_is_a_plan_of_one_regime(tmp_path):
    """A study without --plan runs as a plan of one unnamed regime: its runs straight
    under the study directory, with the controls and the declared primary."""
    from eval import study

    options = study.settings(study.parse([
        "study", "--quick", "--smoke", f"--output_dir={tmp_path}", "--rules=mean",
        "--seeds=1", "--evals=", "--epochs=1", "--train_flags=--batch_size=16"]))
    options["results_dir"] = None
    (regime,) = study.regimes_of(options)
    assert regime["name"] is None and regime["directory"] == tmp_path
    assert [run.name for run in regime["runs"]] == ["none-seed0", "mean-seed0",
                                                    "mean-control-seed0"]
    assert [run.run_dir for run in regime["runs"]] == [
        tmp_path / "runs" / run.name for run in regime["runs"]]
    assert [run.what for run in regime["runs"]] == [
        "none, seed 0", "mean, seed 0", "mean control, seed 0"]
    command = list(regime["runs"][2].train_command)
    assert "--mask_control" in command and "--epochs=1" in command
    assert "--batch_size=16" in command and regime["evals"] == []
    assert [str(p) for p in regime["primary"]] == ["mean:test_accuracy:higher"]


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

    with pytest.raises(ValueError, match=named):
        study.settings(study.parse(["study", *args]))


def test_the_plan_lists_masked_rules_once_and_none_runs_anyway():
    from eval import study

    options = study.settings(study.parse(
        ["study", "--rules=none,mean,lateral,mean", "--nocontrols", "--primary=", "--evals="]))
    # The flags make a plan of one regime: none, then each masked rule once.
    (regime,) = options["plan"]["regimes"]
    assert regime["arms"] == ["none", "mean", "lateral"]
    assert regime["primary"] == [] and regime["evals"] == []


def _plan_settings(*args):
    from eval import study

    return study.settings(study.parse(["study", *args]))


def test_regimes_picks_some_of_a_plan_and_quick_shrinks_but_never_enlarges_a_regime():
    from eval import study

    options = _plan_settings("--plan=regimes", "--regimes=small-data,label-noise", "--quick")
    assert [r["name"] for r in options["plan"]["regimes"]] == ["label-noise", "small-data"]
    options["results_dir"] = None
    noisy = study.regimes_of(options)[0]
    command = list(noisy["runs"][0].train_command)
    # --quick takes 2,000 examples and 1 epoch, the evaluations at their smoke settings.
    assert "--max_train_examples=2000" in command and "--epochs=1" in command
    assert "--max_train_examples=4000" not in command and "--epochs=30" not in command
    assert "--label_noise=0.4" in command and "--mask_rule=none" in command
    assert "--smoke" in noisy["runs"][0].eval_flags
    # A regime whose own subset is smaller keeps it.
    options["plan"]["regimes"][0]["flags"]["max_train_examples"] = 500
    command = list(study.regimes_of(options)[0]["runs"][0].train_command)
    assert "--max_train_examples=500" in command and "--max_train_examples=2000" not in command
    with pytest.raises(ValueError, match=r"flag --regimes: no regime bogus in plan regimes; "
                                         r"its regimes: label-noise, small-data, clean"):
        _plan_settings("--plan=regimes", "--regimes=bogus")


def _tiny_plan():
    return {
        "notes": "test plan",
        "seeds": 1,
        "arms": [{"name": "none", "rule": "none"}, {"name": "mean", "rule": "mean"}],
        "regimes": [
            {"name": "clean", "evals": ["quality"]},
            {"name": "fast", "flags": {"learning_rate": 0.01}, "arms": ["none"], "evals": []},
        ],
    }


def test_a_plan_resumes_after_an_interruption_and_rebuilds_from_its_results(tmp_path, idx_dir):
    """End to end, the fewest arms of a verdict (`none`, `mean`, its control; one seed,
    the verdicts themselves are tested on stored results in test_compare.py), a second
    regime with its own flags, arms and an evaluation; killed after its first run,
    resumed, a damaged result healed, then rebuilt on "another machine" from
    `--results_dir` alone."""
    plan = _tiny_plan()
    plan["controls"] = True
    plan["regimes"][0]["primary"] = ["mean:test_accuracy:higher"]
    # One evaluation in all (each is a process importing TensorFlow).
    plan["regimes"][0]["evals"], plan["regimes"][1]["evals"] = [], ["quality"]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(plan))
    directory, results = tmp_path / "study", tmp_path / "results"
    args = [
        f"--plan={path}", "--quick", "--smoke", f"--output_dir={directory}",
        f"--results_dir={results}", f"--data_dir={idx_dir}", "--epochs=1",
        "--max_train_examples=32", "--max_test_examples=16", "--eval_examples=16",
        "--gsnr_every=2", "--train_flags=--batch_size=16",
    ]
    process = _study(args)
    first = directory / "clean" / "runs" / "none-seed0" / "metrics.json"
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
    assert "[1/" in stdout and "train clean: mean-control, seed 0" in stdout
    assert "min so far" in stdout and "evaluate fast: none, seed 0" in stdout
    for regime, arms in (("clean", ("none", "mean", "mean-control")), ("fast", ("none",))):
        for arm in arms:
            run = directory / regime / "runs" / f"{arm}-seed0"
            assert (run / "metrics.json").is_file(), stderr[-3000:]
            flags = json.loads((run / "config.json").read_text())["flags"]
            assert flags["mask_control"] == (arm == "mean-control") and flags["seed"] == 0
            stored = results / regime / f"{arm}-seed0"
            assert sorted(p.name for p in stored.iterdir() if p.is_file()) == [
                "config.json", "history.csv", "metrics.json"]
        assert (directory / regime / "report.md").is_file()
        # The report travels with the results it was built from.
        assert (results / regime / "report.md").read_bytes() == (
            directory / regime / "report.md").read_bytes()
    assert (results / "report.md").is_file() and not list(results.rglob("*.tmp"))
    flags = json.loads((directory / "fast" / "runs" / "none-seed0" / "config.json").read_text())
    assert flags["flags"]["learning_rate"] == 0.01 and flags["flags"]["epochs"] == 1
    assert [p.name for p in (results / "fast" / "none-seed0" / "eval").iterdir()] == [
        "quality.json"]
    assert not (results / "clean" / "mean-seed0" / "eval").exists()
    assert not (directory / "fast" / "runs" / "mean-seed0").exists()
    index = (directory / "report.md").read_text()
    assert "[clean/report.md](clean/report.md)" in index and "test plan" in index
    report = (directory / "clean" / "report.md").read_text()
    assert "| metric | none | mean | mean control |" in report
    assert "| metric | mean − none | mean − control |" in report
    verdict = next(line for line in report.splitlines()
                   if line.startswith("| `mean:test_accuracy:higher` |"))
    # One seed pairs nothing: the declared primary is reported, as not measured.
    assert "not measured: 1 seed(s)" in verdict
    assert "## Mask metrics" in report and "`kept_l1/" in report
    assert not (directory / "clean" / "forest.png").exists()  # nothing paired to draw
    record = json.loads((directory / "study.json").read_text())
    assert record["wall_seconds_total"] >= record["wall_seconds_this_invocation"] > 0

    # A damaged result (a copy cut short) heals from the run directory's intact copy, in
    # one line on stderr; nothing is trained, nothing deleted.
    copy = results / "clean" / "mean-seed0" / "metrics.json"
    intact = copy.read_bytes()
    copy.write_bytes(intact[: len(intact) // 2])
    process = _study(args)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "damaged" in line]
    assert line.startswith("python -m eval.study: results of clean: mean, seed 0 are damaged "
                           f"({copy}: not JSON: "), line
    assert "restored from " in line and copy.read_bytes() == intact
    assert copy.with_name("metrics.json.damaged").read_bytes() == intact[: len(intact) // 2]
    assert json.loads((directory / "study.json").read_text())["runs_trained_this_invocation"] == 0

    # Another machine: the study directory is gone, the results are kept.
    import shutil

    shutil.rmtree(directory)
    process = _study(args)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert not (directory / "clean" / "runs").exists(), "nothing is trained again"
    assert json.loads((directory / "study.json").read_text())["runs_trained_this_invocation"] == 0
    report = (directory / "clean" / "report.md").read_text()
    assert "| metric | none | mean | mean control |" in report and "GSNR" in report
    assert "GSNR (mean over parameters)" in (directory / "fast" / "report.md").read_text()
    assert (directory / "report.md").is_file()


@pytest.mark.parametrize("name", ["claims", "regimes", "label-noise-2x2"])
def test_the_shipped_plans_are_valid(name):
    from eval import plans

    plan = plans.load(name)
    if name == "label-noise-2x2":  # issue 17: fresh seeds, primaries in one cell
        assert plan["seeds"] == [5, 6, 7, 8, 9]
        assert [len(r["arms"]) for r in plan["regimes"]] == [3, 3, 3, 3]
        assert [len(r["primary"]) for r in plan["regimes"]] == [2, 0, 0, 0]
        return
    assert plan["seeds"] == [0, 1, 2, 3, 4]
    if name == "regimes":
        assert [len(r["arms"]) for r in plan["regimes"]] == [10, 5, 5]


def _edit(change):
    plan = _tiny_plan()
    plan["controls"] = True
    plan["regimes"][0]["primary"] = ["mean:test_accuracy:higher"]
    change(plan)
    return plan


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda p: p.update(colour=1), r"plan\.colour: unknown key"),
        (lambda p: p["arms"][1].update(colour=1), r"arms\[1\]\.colour: unknown key"),
        (lambda p: p["regimes"][0].update(colour=1), r"regimes\[0\]\.colour: unknown key"),
        (lambda p: p["arms"][1].update(rule="bogus"), r"arms\[1\]\.rule: unknown rule"),
        (lambda p: p["arms"][1].update(options={"bogus_flag": 1}),
         r"arms\[1\]\.options\.bogus_flag: not a train.py flag"),
        (lambda p: p["regimes"][0].update(flags={"seed": 3}),
         r"regimes\[0\]\.flags\.seed: set by the study"),
        (lambda p: p["regimes"][0].update(primary=["mean:a:higher", "mean:b:higher",
                                                   "mean:c:higher", "mean:d:higher"]),
         r"regimes\[0\]\.primary: at most 3"),
        (lambda p: p["regimes"][0].update(primary=["lateral:test_accuracy:higher"]),
         "names lateral, which no arm of the regime runs"),
        (lambda p: p.update(controls=False), "runs no matched control of mean"),
        (lambda p: p["regimes"][0].update(arms=["mean"]), "runs no `none` arm"),
        (lambda p: p["regimes"][0].update(arms=["median"]), r"regimes\[0\]\.arms: no arm"),
        (lambda p: p["regimes"][0].update(evals=["robustness"]), r"regimes\[0\]\.evals"),
        (lambda p: p.update(seeds=0), "seeds: expected a count"),
        (lambda p: p.pop("regimes"), "regimes: missing"),
        (lambda p: p["arms"].append({"name": "mean", "rule": "local"}), "given twice"),
        (lambda p: p["arms"].append({"name": "mean-b", "rule": "mean",
                                     "options": {"mask_placement": "block"}}),
         r"mean:test_accuracy:higher matches 2 arms \(mean, mean-b\); name one arm"),
        (lambda p: (p["arms"].append({"name": "mean-sgd", "rule": "mean",
                                      "options": {"optimizer": "sgd"}}),
                    p["regimes"][0].update(primary=["mean-sgd:test_accuracy:higher"])),
         "no `none` arm with the options of mean-sgd"),
    ],
)
def test_a_bad_plan_file_fails_in_one_line_naming_the_key(tmp_path, change, named):
    from eval import plans

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_edit(change)))
    with pytest.raises(ValueError, match=named) as caught:
        plans.load(str(path))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"plan {path}: ")


def test_a_plan_primary_may_name_an_arm():
    from eval import plans

    plan = _edit(lambda p: (
        p["arms"].extend([{"name": "none-sgd", "rule": "none", "options": {"optimizer": "sgd"}},
                          {"name": "mean-sgd", "rule": "mean", "options": {"optimizer": "sgd"}}]),
        p["regimes"][0].update(primary=["mean-sgd:memorisation:lower"])))
    checked = plans.check(plan, "named.json")
    (primary,) = plans.primaries(checked, checked["regimes"][0])
    assert checked["regimes"][0]["primary"] == ["mean-sgd:memorisation:lower"]
    assert (primary.rule, primary.metric, primary.direction, primary.where) == (
        "mean", "memorisation", "lower", (("optimizer", "sgd"),))
    assert primary.subject == "mean[optimizer=sgd]"


def test_a_plan_accepts_the_regime_train_flags_and_writes_bools_as_flags():
    from eval import plans

    plan = _edit(lambda p: p["regimes"][0].update(
        flags={"label_noise": 0.4, "examples_per_class": 100, "augment": False}))
    assert plans.check(plan)["regimes"][0]["flags"]["label_noise"] == 0.4
    assert plans.flag_arguments({"augment": True, "mixed_precision": False, "epochs": 3}) == [
        "--augment", "--nomixed_precision", "--epochs=3"]
    from gradmask_tf.config import FIELD_NAMES

    assert "mask_placement" in FIELD_NAMES


def test_a_committed_regime_rebuilds_its_report_byte_for_byte(tmp_path):
    """The one command rebuilds a committed report from the committed results alone, in
    a process where TensorFlow cannot be imported: a report needs no TensorFlow."""
    from tests.backends import BLOCK_TENSORFLOW

    results = ROOT / "docs" / "results" / "regimes"
    committed = {path.name: path.read_bytes() for path in (results / "small-data").glob("*")
                 if path.is_file()}
    assert set(committed) == {"report.md", "forest.png"}
    args = ["--plan=regimes", "--regimes=small-data",
            f"--results_dir={results.relative_to(ROOT)}", f"--output_dir={tmp_path / 'study'}"]
    code = BLOCK_TENSORFLOW + f"""
import runpy
sys.argv = ["eval.study", *{args!r}]
runpy.run_module("eval.study", run_name="__main__")
"""
    # From the checkout: the report names its runs relative to it.
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "study" / "small-data" / "runs").exists(), "nothing is trained"
    for name, content in committed.items():
        assert (tmp_path / "study" / "small-data" / name).read_bytes() == content, name
        assert (results / "small-data" / name).read_bytes() == content, name


PROGRAM = "eval.study"


def test_flag_values_match_across_their_spellings():
    from eval.arms import same_value

    assert same_value(True, True) and same_value(True, "true") and same_value(False, "False")
    assert same_value(1, 1.0) and same_value(1, "1.0") and same_value("sgd", "SGD")
    assert not same_value(True, 1) and not same_value(True, False) and not same_value(1, 2)
