"""eval.grid on synthetic results of a tiny 2x2 plan whose every figure is known."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from scipy import stats as scipy_stats

from eval import figures, grid
from tests.helpers import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = [0, 1, 2]
ARMS = grid.Arms(rule="mean", baseline="none", control="mean-control")
OPTIONS = {"optimizer": "adam"}
# The regimes out of order: the factors' levels are ordered, numbers ascending.
REGIMES = [("n100-constant", 100, "constant"), ("n50-constant", 50, "constant"),
           ("n100-cosine", 100, "cosine"), ("n50-cosine", 50, "cosine")]
# The gap mean − control per cell (i: 50, 100 examples; j: constant, cosine) and seed.
GAPS = {(0, 0): [0.10, 0.12, 0.08], (0, 1): [0.05, 0.02, 0.05],
        (1, 0): [-0.10, -0.06, -0.08], (1, 1): [0.00, 0.01, -0.04]}
# Worked out by hand from GAPS, seed by seed.
EXPECTED = {
    "along_first": {0: [-0.20, -0.18, -0.16], 1: [-0.05, -0.01, -0.09]},  # 100 − 50
    "along_second": {0: [-0.05, -0.10, -0.03], 1: [0.10, 0.07, 0.04]},  # cosine − constant
    "average_first": [-0.125, -0.095, -0.125],
    "average_second": [0.025, -0.015, 0.005],
    "interaction": [0.15, 0.17, 0.07],
}


def raw_plan():
    return {
        "seeds": SEEDS,
        "controls": True,
        "arms": [{"name": "none", "rule": "none", "options": OPTIONS},
                 {"name": "mean", "rule": "mean", "options": OPTIONS}],
        "regimes": [{"name": name, "flags": {"max_train_examples": examples,
                                             "lr_schedule": schedule}, "evals": []}
                    for name, examples, schedule in REGIMES],
    }


def checked_plan(path):
    """What `eval.plans.load` makes of `raw_plan()` (held to it by a test below)."""
    return {
        "name": path.stem, "path": str(path), "notes": "", "seeds": SEEDS,
        "arms": {"none": dict(rule="none", options=OPTIONS, control=False),
                 "mean": dict(rule="mean", options=OPTIONS, control=False),
                 "mean-control": dict(rule="mean", options=OPTIONS, control=True)},
        "regimes": [{"name": name, "flags": {"max_train_examples": examples,
                                             "lr_schedule": schedule},
                     "arms": ["none", "mean", "mean-control"], "evals": [], "primary": []}
                    for name, examples, schedule in REGIMES],
    }


def memorisation(position, arm, seed):
    i, j = position
    control = 0.3 + 0.01 * seed + 0.1 * i + 0.05 * j
    rule = control + GAPS[position][SEEDS.index(seed)]
    return {"mean-control": control, "mean": rule, "none": rule + 0.2 + 0.01 * seed**2}[arm]


def write_run(path, flags, value):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"flags": flags}))
    (path / "metrics.json").write_text(json.dumps(
        {"memorisation": value, "test_accuracy_end": 0.8 - value / 10,
         "test_accuracy_best_validation": 0.85, "seed": flags["seed"]}))
    rows = ["epoch,clean_train_accuracy,memorisation,test_accuracy,val_accuracy"]
    rows += [f"{epoch},{0.5 + 0.1 * epoch},{value * epoch / 3},0.8,0.5" for epoch in (1, 2, 3)]
    (path / "history.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def study(tmp_path):
    """`(plan path, results directory)`: every planned run there."""
    plan_path = tmp_path / "tiny-2x2.json"
    plan_path.write_text(json.dumps(raw_plan()))
    results = tmp_path / "results"
    for name, examples, schedule in REGIMES:
        position = ([50, 100].index(examples), ["constant", "cosine"].index(schedule))
        for arm, rule, control in (("none", "none", False), ("mean", "mean", False),
                                   ("mean-control", "mean", True)):
            for seed in SEEDS:
                flags = dict(mask_rule=rule, mask_control=control, seed=seed,
                             max_train_examples=examples, lr_schedule=schedule,
                             label_noise=0.4, **OPTIONS)
                write_run(results / name / f"{arm}-seed{seed}", flags,
                          memorisation(position, arm, seed))
    return plan_path, results


def _cells(plan, results):
    places = grid.positions(plan, grid.factors(plan))
    return grid.read_cells(plan, results, ("none", "mean", "mean-control"), places)


def _assert_seeds(by_seed, seeds, values):
    assert list(by_seed) == seeds
    assert list(by_seed.values()) == pytest.approx(values, abs=1e-12)


def test_gap_grid_computes_every_figure_per_seed(study):
    plan_path, results = study
    plan = checked_plan(plan_path)
    assert grid.factors(plan) == [("max_train_examples", [50, 100]),
                                  ("lr_schedule", ["constant", "cosine"])]
    cells = _cells(plan, results)
    assert [cell.regime for cell in cells] == [
        "n50-constant", "n50-cosine", "n100-constant", "n100-cosine"]
    assert all(not cell.missing for cell in cells)
    figures_by_seed = grid.gap_grid(cells, ARMS, "memorisation")
    for position, gaps in GAPS.items():
        _assert_seeds(figures_by_seed["gap"][position], SEEDS, gaps)
    for name in ("along_first", "along_second"):
        for level, values in EXPECTED[name].items():
            _assert_seeds(figures_by_seed[name][level], SEEDS, values)
    for name in ("average_first", "average_second", "interaction"):
        _assert_seeds(figures_by_seed[name], SEEDS, EXPECTED[name])
    # The interaction is the same read along either factor.
    along_second = figures_by_seed["along_second"]
    _assert_seeds(grid.combine(along_second[1], along_second[0]), SEEDS,
                  EXPECTED["interaction"])


def test_summary_is_the_t_interval_over_seeds():
    values = EXPECTED["interaction"]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = scipy_stats.t.ppf(0.975, 2) * std / math.sqrt(3)
    described = grid.summary(dict(zip(SEEDS, values)))
    assert (described.mean, described.low, described.high, described.num_pairs) == (
        pytest.approx(0.13), pytest.approx(0.13 - half), pytest.approx(0.13 + half), 3)
    assert grid.summary({5: 0.1}) is None


def _formatted(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] (n={len(values)})"


def test_grid_md_gives_every_figure_and_the_curves(study, tmp_path):
    plan_path, results = study
    output = tmp_path / "out"
    path = grid.write_grid(checked_plan(plan_path), results, output)
    assert path == output / "grid.md"
    text = path.read_text()
    assert "Missing: 0 of 36 planned runs." in text
    assert "Factors: `max_train_examples` (50, 100) × `lr_schedule` (constant, cosine)" in text
    assert "| `max_train_examples` \\ `lr_schedule` | constant | cosine | cosine − constant |" in text
    interaction = _formatted(EXPECTED["interaction"])
    assert (f"| 100 − 50 | {_formatted(EXPECTED['along_first'][0])} | "
            f"{_formatted(EXPECTED['along_first'][1])} | {interaction} |") in text
    assert (f"| 50 | {_formatted(GAPS[0, 0])} | {_formatted(GAPS[0, 1])} | "
            f"{_formatted(EXPECTED['along_second'][0])} |") in text
    assert (f"| `lr_schedule`: cosine − constant, averaged over `max_train_examples` | "
            f"{_formatted(EXPECTED['average_second'])} | 0, 1, 2 |") in text
    rule_minus_none = [-0.2 - 0.01 * seed**2 for seed in SEEDS]
    assert f"| {_formatted(rule_minus_none)} | {_formatted(GAPS[1, 1])} |" in text
    for metric in grid.METRICS:
        assert f"## `{metric}`" in text
    for key in grid.CURVES:
        assert (output / f"{key}.png").read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({key}.png)" in text
    assert not (results / "grid.md").exists()


def test_missing_runs_are_named_and_leave_their_seeds_out(study):
    plan_path, results = study
    plan = checked_plan(plan_path)
    for path in (results / "n100-cosine" / "mean-seed2").iterdir():
        path.unlink()
    (results / "n100-cosine" / "mean-seed2").rmdir()
    (results / "n50-constant" / "mean-control-seed0" / "metrics.json").unlink()
    config = results / "n50-cosine" / "mean-seed1" / "config.json"
    flags = json.loads(config.read_text())["flags"]
    config.write_text(json.dumps({"flags": {**flags, "lr_schedule": "constant"}}))
    cells = _cells(plan, results)
    figures_by_seed = grid.gap_grid(cells, ARMS, "memorisation")
    assert list(figures_by_seed["gap"][0, 0]) == [1, 2]
    assert list(figures_by_seed["gap"][0, 1]) == [0, 2]
    assert list(figures_by_seed["gap"][1, 1]) == [0, 1]
    _assert_seeds(figures_by_seed["along_first"][0], [1, 2], EXPECTED["along_first"][0][1:])
    _assert_seeds(figures_by_seed["along_first"][1], [0], EXPECTED["along_first"][1][:1])
    assert figures_by_seed["interaction"] == {}
    text = grid.write_grid(plan, results).read_text()
    assert "Missing: 3 of 36 planned runs." in text
    assert "| n100-cosine | not there: mean-seed2 |" in text
    assert "| n50-constant | no metrics.json (not finished): mean-control-seed0 |" in text
    assert "config.json has lr_schedule='constant', not the plan's: mean-seed1" in text
    assert "| interaction: (100 − 50 at cosine) − (100 − 50 at constant) | under 2 seeds " \
           "(n=0) | – |" in text


def test_no_results_yet_is_a_report_of_missing_runs(study, tmp_path):
    plan_path, _ = study
    empty = tmp_path / "empty"
    empty.mkdir()
    text = grid.write_grid(checked_plan(plan_path), empty).read_text()
    assert "Missing: 36 of 36 planned runs." in text
    assert "| n50-constant | not there: all 9 |" in text
    assert "`memorisation.png` not drawn: no run's `history.csv` has `memorisation`." in text
    assert not list(empty.glob("*.png"))


def test_plot_curves_lays_the_cells_out_by_their_factors():
    history = [{"epoch": 1, "memorisation": 0.1}, {"epoch": 2, "memorisation": 0.3}]
    cells = [dict(row=f"n={n}", column=f"lr={lr}",
                  arms={"none": [history, history], "mean": [] if n == 1 else [history]})
             for n in (1, 2) for lr in ("constant", "cosine")]
    figure = figures.plot_curves(cells, "memorisation")
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title().splitlines()[0] for ax in axes] == [
        "n=1 · lr=constant", "n=1 · lr=cosine", "n=2 · lr=constant", "n=2 · lr=cosine"]
    assert axes[0].get_title().splitlines()[1] == "seeds: none 2, mean 0"
    assert [len(ax.lines) for ax in axes] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="at least one history with `clean_train_accuracy`"):
        figures.plot_curves(cells, "clean_train_accuracy")
    with pytest.raises(ValueError, match="one cell per row and column"):
        figures.plot_curves(cells + cells[:1], "memorisation")


def test_the_command_writes_the_grid_from_the_checked_plan(study, tmp_path, capsys):
    from eval import plans

    plan_path, results = study
    assert plans.load(str(plan_path)) == checked_plan(plan_path)
    output = tmp_path / "out"
    assert grid.main(["grid", f"--plan={plan_path}", f"--results_dir={results}",
                      f"--output_dir={output}", "--metrics=memorisation"]) == 0
    assert capsys.readouterr().out.strip() == f"Wrote {output / 'grid.md'} and its figures"
    text = (output / "grid.md").read_text()
    assert "## `memorisation`" in text and "## `test_accuracy_end`" not in text


@pytest.mark.parametrize("arguments, message", [
    (["--nope=1"], "Unknown command line flag 'nope'"),
    ([], "flag --plan is required"),
    (["--plan=PLAN", "--results_dir=/no/such/dir"], "flag --results_dir: no directory"),
    (["--plan=PLAN", "--results_dir=RESULTS", "extra"], "unexpected argument 'extra'"),
    (["--plan=PLAN", "--results_dir=RESULTS", "--metrics=memorisation,memorisation"],
     "flag --metrics: expected distinct"),
    (["--plan=no-such-plan", "--results_dir=RESULTS"], "flag --plan: no plan"),
    (["--plan=regimes", "--results_dir=RESULTS"], "eval.grid needs regimes that cross two"),
    (["--plan=PLAN", "--results_dir=RESULTS", "--rule_arm=topk"],
     "flag --rule_arm: no arm 'topk' in plan tiny-2x2"),
    (["--plan=PLAN", "--results_dir=RESULTS", "--control_arm=none", "--baseline_arm=mean-control"],
     "flag --control_arm: 'none' is not the matched control of 'mean'"),
])
def test_a_bad_command_is_one_line(study, capsys, arguments, message):
    plan_path, results = study
    arguments = [a.replace("PLAN", str(plan_path)).replace("RESULTS", str(results))
                 for a in arguments]
    with pytest.raises(SystemExit) as exit_info:
        grid.main(["grid", *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("python -m eval.grid: error: ")
    assert message in error


def test_the_analysis_imports_no_tensorflow(study, tmp_path):
    plan_path, results = study
    checked = tmp_path / "checked.json"
    checked.write_text(json.dumps(checked_plan(plan_path)))
    script = textwrap.dedent(f"""
        import json, pathlib, sys
        from eval import grid
        plan = json.loads(pathlib.Path({str(checked)!r}).read_text())
        grid.write_grid(plan, {str(results)!r}, {str(tmp_path / "out")!r})
        print(json.dumps(sorted(m for m in ("tensorflow", "keras") if m in sys.modules)))
        """)
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    assert process.returncode == 0, process.stderr[-3000:]
    assert json.loads(process.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "out" / "memorisation.png").read_bytes().startswith(PNG_SIGNATURE)
