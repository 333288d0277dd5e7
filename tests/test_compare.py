"""eval.compare and eval.arms on stored result sets whose verdict is known (no training)."""

import json

import numpy as np
import pytest

from eval import adversarial, arms, compare, stats

SEEDS = range(5)
# Seed effects shared by every arm (the pairing removes them), plus small noise.
_SEED_EFFECT = np.array([0.00, 0.02, -0.015, 0.01, -0.005])
_NOISE = np.array([0.001, -0.002, 0.0015, -0.001, 0.0005])


BASELINE = "none"


def _write_run(root, rule, seed, metrics, *, control=False, evals=None, **flags):
    """A run directory with `config.json`, `metrics.json` and `eval/*.json` only."""
    extra = "".join(f"-{name}{value}" for name, value in flags.items())
    run = root / f"{rule}{'-control' if control else ''}{extra}-seed{seed}"
    (run / "eval").mkdir(parents=True)
    config = {"mask_rule": rule, "seed": seed, "model": "cnn", "mask_control": control,
              "mask_alpha": 1.0, "output_dir": str(run), **flags}
    (run / "config.json").write_text(json.dumps({"flags": config}))
    (run / "metrics.json").write_text(json.dumps({"seed": seed, "epochs": 10, **metrics}))
    for name, payload in (evals or {}).items():
        (run / "eval" / f"{name}.json").write_text(json.dumps(payload))
    return run


def _study(root, rule_shift, control_shift, *, rule="mean", with_control=True):
    """`none`, a rule and its control over five seeds; returns the run directories."""
    base = 0.80 + _SEED_EFFECT
    arms_values = {(BASELINE, False): base, (rule, False): base + rule_shift + _NOISE}
    if with_control:
        arms_values[(rule, True)] = base + control_shift - _NOISE[::-1]
    runs = []
    for (arm_rule, control), values in arms_values.items():
        for seed in SEEDS:
            kept = {} if arm_rule == BASELINE else {"kept_fraction/mask_1": 0.83,
                                                    "kept_l1/mask_1": 0.98}
            runs.append(_write_run(root, arm_rule, seed, {"test_accuracy": values[seed], **kept},
                                   control=control))
    return runs


def _report(runs, output_dir, primaries):
    return compare.report([compare.load_run(run) for run in runs], output_dir, primaries)


def _verdict_row(text, primary):
    return next(line for line in text.splitlines() if line.startswith(f"| `{primary}` |"))


@pytest.mark.parametrize(
    "rule_shift, control_shift, expected",
    [
        (0.03, 0.0, stats.BETTER),  # a clear gain over both
        (0.0, 0.0, stats.NO_DIFFERENCE),  # a null
        (0.03, 0.03, stats.NO_DIFFERENCE),  # the control gains as much: not a win
        (-0.03, 0.0, stats.WORSE),  # a loss
    ],
    ids=["gain", "null", "gain-against-none-only", "loss"],
)
def test_the_primary_verdict_is_the_known_one(tmp_path, rule_shift, control_shift, expected):
    runs = _study(tmp_path / "runs", rule_shift, control_shift)
    text = _report(runs, tmp_path / "report", ["mean:test_accuracy:higher"])
    row = _verdict_row(text, "mean:test_accuracy:higher")
    assert f"**{expected}**" in row
    versus_none = f"{rule_shift + _NOISE.mean():+.4f} ["
    assert versus_none in row and "| 5 / 5 |" in row
    assert compare.CONTROL_LIMIT in text
    assert (tmp_path / "report" / "forest.png").read_bytes()[:4] == b"\x89PNG"
    assert "](forest.png)" in text


def test_the_report_lays_out_arms_differences_and_mask_metrics(tmp_path):
    runs = _study(tmp_path / "runs", 0.03, 0.0)
    text = _report(runs, tmp_path / "report", ["mean:test_accuracy:higher"])
    assert "15 runs in 3 arms" in text
    assert "| none | 0, 1, 2, 3, 4 |" in text and "| mean control | 0, 1, 2, 3, 4 |" in text
    arm_row = next(line for line in text.splitlines() if line.startswith("| `test_accuracy`"))
    none = 0.80 + _SEED_EFFECT
    assert arm_row.startswith(
        f"| `test_accuracy` | {none.mean():.4f} ± {none.std(ddof=1):.4f} (n=5) |"
    )
    assert "| metric | mean − none | mean − control |" in text
    differences = next(
        line for line in text.split("Paired differences by seed")[1].splitlines()
        if line.startswith("| `test_accuracy`")
    )
    to_none = stats.describe(_NOISE + 0.03)
    assert f"{to_none.mean:+.4f} [{to_none.low:+.4f}, {to_none.high:+.4f}] (n=5)" in differences
    # Mask metrics per arm; bookkeeping (seed, epochs) is no metric.
    assert "## Mask metrics" in text
    assert "| `kept_l1/mask_1` | – | 0.9800 ± 0.0000 (n=5) |" in text
    assert "`seed`" not in text and "`epochs`" not in text


def test_figures_of_order_1e_4_keep_significant_digits(tmp_path):
    # GSNR near convergence is ~2e-4: four decimals would print 0.0002 ± 0.0000 everywhere.
    runs = [
        _write_run(tmp_path / "runs", rule, seed,
                   {"test_accuracy": 0.9, "gsnr_like": scale * (2e-4 + 1e-5 * seed)})
        for rule, scale in (("none", 1.0), ("mean", 1.5)) for seed in SEEDS
    ]
    text = _report(runs, tmp_path / "report", [])
    row = next(line for line in text.splitlines() if line.startswith("| `gsnr_like`"))
    assert row.startswith("| `gsnr_like` | 2.20e-04 ± 1.58e-05 (n=5) | 3.30e-04 ± 2.37e-05 (n=5) |")
    difference = next(
        line for line in text.split("Paired differences by seed")[1].splitlines()
        if line.startswith("| `gsnr_like`")
    )
    assert "+1.10e-04 [" in difference
    assert "| `test_accuracy` | 0.9000 ± 0.0000 (n=5) |" in text  # ordinary figures unchanged


def test_a_primary_without_its_arms_is_reported_not_measured_and_still_counts(tmp_path):
    runs = _study(tmp_path / "runs", 0.003, 0.0)
    alone = _report(runs, tmp_path / "alone", ["mean:test_accuracy:higher"])
    declared = _report(
        runs, tmp_path / "declared",
        ["mean:test_accuracy:higher", "lateral:test_accuracy:higher", "mean:test_loss:lower"],
    )
    assert "**better**" in _verdict_row(alone, "mean:test_accuracy:higher")
    lateral = _verdict_row(declared, "lateral:test_accuracy:higher")
    assert "not measured: no `lateral` arm" in lateral
    assert "not measured: the `mean` runs have no `test_loss`" in declared
    # Both missing pairs count in the Holm family: the small gain no longer passes.
    assert "**no difference detected**" in _verdict_row(declared, "mean:test_accuracy:higher")
    uncontrolled = _study(tmp_path / "uncontrolled", 0.03, 0.0, with_control=False)
    text = _report(uncontrolled, tmp_path / "u", ["mean:test_accuracy:higher"])
    assert "not measured: no matched control arm" in text
    assert "| metric | mean − none | mean − control |" in text and "no arm" in text


def test_eval_results_are_paired_too_and_named_as_primaries_name_them(tmp_path):
    runs = []
    for seed, jitter in enumerate((0.0, 0.002, -0.001)):
        for rule, control, pgd in (("none", False, 0.30), ("mean", False, 0.20),
                                   ("mean", True, 0.31)):
            evals = {
                "adversarial": {
                    "clean_accuracy": 0.9, "num_examples": 10,
                    "attacks": {"pgd": {"0.1": pgd + jitter}},
                    "settings": {"attacks": ["pgd"], "eps": [0.1], "pgd_steps": 10,
                                 "pgd_step_size": adversarial.PGD_STEP_SIZE_RULE},
                },
                "saliency": {"foreground_focus": {"vanilla": 0.6 + jitter}, "chance": 0.5,
                             "num_examples": 4},
            }
            runs.append(_write_run(tmp_path / "runs", rule, seed, {"test_accuracy": 0.9 + jitter},
                                   control=control, evals=evals))
    text = _report(runs, tmp_path / "report", ["mean:adversarial/pgd/0.1:higher"])
    assert "**worse**" in _verdict_row(text, "mean:adversarial/pgd/0.1:higher")
    assert "| `saliency/vanilla` |" in text and "| `saliency/chance` |" in text
    differences = text.split("Paired differences by seed")
    assert all("`saliency/chance`" not in part.split("## ")[0] for part in differences[1:])
    assert (tmp_path / "report" / "adversarial.png").is_file()


def test_arms_of_one_rule_are_told_apart_and_paired_with_their_own_control(tmp_path):
    runs = []
    for seed in range(2):
        runs.append(_write_run(tmp_path, "none", seed, {"test_accuracy": 0.8 + seed / 100}))
        for alpha, shift in ((1.0, 0.01), (2.0, -0.01)):
            for control in (False, True):
                accuracy = 0.8 + seed / 100 + (0 if control else shift) + seed / 1000
                runs.append(_write_run(tmp_path, "mean", seed, {"test_accuracy": accuracy},
                                       control=control, mask_alpha=alpha))
    loaded = [compare.load_run(run) for run in runs]
    found = arms.group_runs(loaded, lambda run: run.measures)
    labels = [arm.label for arm in found]
    assert labels == ["none", "mean (mask_alpha=1.0)", "mean control (mask_alpha=1.0)",
                      "mean (mask_alpha=2.0)", "mean control (mask_alpha=2.0)"]
    for arm, baseline, control in arms.pairings(found):
        assert baseline.label == "none"
        assert control.label == arm.label.replace("mean", "mean control")
        assert arms.paired(arm, control, "test_accuracy").mean == pytest.approx(
            0.01 if "1.0" in arm.label else -0.01, abs=1e-3)
    text = compare.report(loaded, tmp_path / "report", ["mean:test_accuracy:higher"])
    assert "not measured: 2 `mean` arms" in text
    # A primary naming one arm by its flags is judged against that arm's own control.
    text = compare.report(loaded, tmp_path / "report", [
        "mean[mask_alpha=2.0]:test_accuracy:lower", "mean[mask_alpha=3]:test_accuracy:higher"])
    row = _verdict_row(text, "mean[mask_alpha=2.0]:test_accuracy:lower")
    assert "not measured" not in row and "| 2 / 2 |" in row
    assert "not measured: no `mean[mask_alpha=3]` arm" in text
    named = arms.Primary("mean", "test_accuracy", "higher", (("mask_alpha", 1),), name="mean-a1")
    assert str(named) == "mean-a1:test_accuracy:higher"
    assert [a.label for a in found if named.selects(a)] == ["mean (mask_alpha=1.0)"]


@pytest.mark.parametrize(
    "primary, named",
    [
        ("mean:test_accuracy:higher,local:test_accuracy:higher,lateral:test_accuracy:higher,"
         "log:test_accuracy:higher", "at most 3"),
        ("mean:test_accuracy", "expected rule:metric:direction"),
        ("mean:test_accuracy:up", "direction 'up'"),
        ("random:test_accuracy:higher", "not a masked rule"),
        ("none:test_accuracy:higher", "not a masked rule"),
        ("mean:test_accuracy:higher,mean:test_accuracy:lower", "given twice"),
        ("mean[mask_alpha]:test_accuracy:higher", "rule[flag=value;...]:metric:direction"),
        ("mean[]:test_accuracy:higher", "rule[flag=value;...]:metric:direction"),
    ],
)
def test_bad_primaries_fail_in_one_line(tmp_path, capsys, primary, named):
    run = _write_run(tmp_path, "mean", 0, {"test_accuracy": 0.9})
    with pytest.raises(SystemExit) as exit_info:
        compare.main(
            ["compare", str(run), f"--output_dir={tmp_path / 'r'}", f"--primary={primary}"]
        )
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1
    assert message.startswith("python -m eval.compare: error: flag --primary")
    assert named in message
    assert not (tmp_path / "r").exists()


def test_two_runs_of_one_arm_and_seed_fail_in_one_line(tmp_path, capsys):
    first = _write_run(tmp_path / "a", "mean", 0, {"test_accuracy": 0.9})
    second = _write_run(tmp_path / "b", "mean", 0, {"test_accuracy": 0.8})
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["compare", str(first), str(second), f"--output_dir={tmp_path / 'r'}"])
    assert exit_info.value.code == 2
    assert "same configuration and seed 0" in capsys.readouterr().err


def test_the_forest_has_a_panel_per_metric_and_a_line_at_zero():
    from eval import figures

    rows = [
        dict(metric=metric, rule=rule, versus=versus, mean=0.01, low=-0.01, high=0.03)
        for metric in ("test_accuracy", "adversarial/pgd/0.1")
        for rule in ("mean", "lateral")
        for versus in ("none", "matched control")
    ]
    figure = figures.plot_forest(rows)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["test_accuracy", "adversarial/pgd/0.1"]
    for ax in panels:
        assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.get_lines())
    assert [label.get_text() for label in panels[0].get_yticklabels()] == ["mean", "lateral"]
    with pytest.raises(ValueError, match="rows"):
        figures.plot_forest([])
