"""End to end: python -m eval on tiny trained runs, then eval.compare on two of them."""

import json

import pytest

from eval import EVALUATIONS, compare
from tests.helpers import run_all, run_forked


@pytest.fixture(scope="module")
def evaluated_runs(tmp_path_factory, idx_dir):
    """Two tiny runs (none and mean), trained here (a run is a Python call; train.py's
    processes are tested in test_train*.py), evaluated with `python -m eval --smoke`:
    `mean` with every evaluation, `none` with `--evals=quality` alone."""
    from gradmask_tf.config import RunConfig
    from gradmask_tf.trainer import run

    root = tmp_path_factory.mktemp("evaluated")
    runs = {rule: root / rule for rule in ("none", "mean")}
    for rule, run_dir in runs.items():
        run(RunConfig(epochs=2, batch_size=16, max_test_examples=32, gsnr_every=6,
                      mask_rule=rule, data_dir=str(idx_dir), output_dir=str(run_dir)))
    evaluated = run_all([
        (["-m", "eval", f"--run_dir={runs['none']}", "--smoke", "--evals=quality"], None),
        (["-m", "eval", f"--run_dir={runs['mean']}", "--smoke"], None),
    ])
    return runs, evaluated


def test_eval_writes_every_evaluation_with_its_settings(evaluated_runs):
    runs, (only_quality, every) = evaluated_runs
    assert only_quality.returncode == 0, only_quality.stderr[-3000:]
    assert sorted(p.name for p in (runs["none"] / "eval").iterdir()) == [
        "quality.json", "quality.png"]
    assert json.loads((runs["none"] / "eval" / "quality.json").read_text())["gsnr"] > 0
    rule, run_dir, result = "mean", runs["mean"], every
    assert result.returncode == 0, result.stderr[-3000:]
    for name in EVALUATIONS:
        payload = json.loads((run_dir / "eval" / f"{name}.json").read_text())
        assert (run_dir / "eval" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert payload["run"]["mask_rule"] == rule
        assert "settings" in payload and "library_versions" in payload["settings"]
    adversarial = json.loads((run_dir / "eval" / "adversarial.json").read_text())
    assert adversarial["num_examples"] == 48  # all 48 tiny test examples (smoke cap 64)
    assert set(adversarial["attacks"]) == {"fgsm", "pgd"}
    assert "exact" in json.dumps(adversarial["settings"])
    pruning = json.loads((run_dir / "eval" / "pruning.json").read_text())
    assert set(pruning["one_shot"]) == {"0.5", "0.9"} and pruning["fine_tuned"]
    # The fine-tune as the run trained: config.json's flags translated.
    flags = json.loads((run_dir / "config.json").read_text())["flags"]
    settings = pruning["settings"]
    assert settings["learning_rate"] == pytest.approx(flags["learning_rate"] / 10)
    assert settings["fine_tune_batch_size"] == flags["batch_size"] == 16
    assert settings["optimizer"] == flags["optimizer"]
    assert settings["mask_rule"] == rule and settings["model"] == flags["model"]
    saliency = json.loads((run_dir / "eval" / "saliency.json").read_text())
    # Saliency ran after pruning in the same process (TF-MOT's import trap).
    assert all(0 <= f <= 1 for f in saliency["foreground_focus"].values())
    quality = json.loads((run_dir / "eval" / "quality.json").read_text())
    assert quality["gsnr"] > 0 and quality["training_curve"]
    assert (run_dir / "eval" / "saliency_maps.npz").is_file()


def test_compare_reports_two_runs(evaluated_runs, tmp_path, capsys):
    # As `python -m eval.compare RUN RUN --output_dir=... --primary=...` runs it.
    runs, _ = evaluated_runs
    argv = ["compare", *map(str, runs.values()), f"--output_dir={tmp_path}",
            "--primary=mean:test_accuracy:higher"]
    assert compare.main(argv) == 0
    report = (tmp_path / "report.md").read_text()
    for heading in ("Accuracy (test split)", "Accuracy under L∞ attack", "after magnitude pruning",
                    "foreground focus", "GSNR", "Mask metrics"):
        assert heading in report
    assert "| metric | none | mean |" in report
    # One seed and no control: the primary is reported, as not measured.
    assert "| `mean:test_accuracy:higher` |" in report
    assert "not measured: no matched control" in report
    # The mask metrics as train.py names them, per arm.
    assert "| `kept_fraction/" in report and "| `kept_l1/" in report
    for figure in ("adversarial.png", "pruning.png", "gsnr.png", "saliency.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"
        assert f"]({figure})" in report
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["compare", str(runs["mean"])])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "python -m eval.compare: error: flag --output_dir is required"
    )


def test_eval_rejects_bad_input_in_one_line(tmp_path, evaluated_runs):
    runs, _ = evaluated_runs
    cases = [
        ([f"--run_dir={runs['mean']}", "--evals=adversarial,robustness"], "robustness"),
        ([f"--run_dir={tmp_path}"], "no config.json"),
        ([f"--run_dir={runs['mean']}", "--eps=0.1,abc"], "--eps"),
        ([f"--run_dir={runs['mean']}", "--attacks=cw"], "valid: fgsm, pgd, bim, mim"),
        ([], "--run_dir"),
    ]
    results = run_forked([args for args, _ in cases], script="-m eval")
    for (args, named), result in zip(cases, results):
        assert result.returncode == 2, (args, result.stderr[-1000:])
        message = result.stderr.strip()
        assert "\n" not in message and named in message, message
    assert not (tmp_path / "eval").exists()
