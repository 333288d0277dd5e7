r"""Compares runs side by side: one table per claim, runs of a configuration grouped.

  python -m eval.compare runs/a runs/b runs/c --output_dir=reports/ab

Reads each run's `config.json`, `metrics.json` and `eval/*.json` and writes
`DIR/report.md` with one table per claim (accuracy; accuracy under attack at each eps;
accuracy after pruning at each sparsity; saliency foreground focus; GSNR), runs of the
same configuration (all flags but the seed) grouped as mean ± std over seeds, a verdict
per claim where a baseline (`none`) and the control (`random`) are present, and overlay
figures beside it.
"""

import dataclasses
import json
import pathlib
import sys

import numpy as np

PROGRAM = "python -m eval.compare"
BASELINE = "none"
CONTROL = "random"
# Flags that do not change what a run measures: runs differing only in these group.
_NOT_CONFIGURATION = {"seed", "output_dir", "overwrite", "data_dir", "num_cpu_devices"}


@dataclasses.dataclass
class Run:
    path: pathlib.Path
    config: dict
    metrics: dict
    evals: dict
    history: list

    @property
    def rule(self):
        return self.config.get("mask_rule", "?")

    @property
    def seed(self):
        return self.config.get("seed", 0)


def load_run(path):
    """Reads a run directory's results; missing evaluations are simply absent."""
    from gradmask_tf import runs

    path = pathlib.Path(path)
    if not (path / runs.CONFIG).is_file():
        raise ValueError(f"{path} is not a run directory (no {runs.CONFIG})")
    evals = {}
    for file in sorted((path / "eval").glob("*.json")):
        evals[file.stem] = json.loads(file.read_text())
    metrics_path = path / runs.METRICS
    return Run(
        path=path,
        config=runs.read_json(path / runs.CONFIG)["flags"],
        metrics=runs.read_json(metrics_path) if metrics_path.is_file() else {},
        evals=evals,
        history=runs.read_history(path),
    )


def group_runs(runs):
    """Groups runs by configuration (all flags but the seed), labelled by rule.

    Where several configurations share a rule, the flags that tell them apart are
    added to the label.
    """
    groups = {}
    for run in runs:
        key = json.dumps(
            {k: v for k, v in sorted(run.config.items()) if k not in _NOT_CONFIGURATION},
            sort_keys=True,
        )
        groups.setdefault(key, []).append(run)
    configurations = [json.loads(key) for key in groups]
    labelled = {}
    for configuration, members in zip(configurations, groups.values()):
        rule = configuration.get("mask_rule", "?")
        # Only flags that tell apart configurations of the same rule go in the label.
        siblings = [c for c in configurations if c.get("mask_rule") == rule]
        varying = sorted(
            name
            for name in set().union(*siblings)
            if len({json.dumps(c.get(name)) for c in siblings}) > 1
        )
        extra = [f"{name}={configuration.get(name)}" for name in varying]
        label = rule + (" (" + ", ".join(extra) + ")" if extra else "")
        labelled[label] = sorted(members, key=lambda run: run.seed)
    return labelled


def metric_rows(run):
    """Every figure of one run, by claim: {claim: {metric: value}} (higher is better)."""
    rows = {"accuracy": {}, "adversarial": {}, "pruning": {}, "saliency": {}, "quality": {}}
    if "test_accuracy" in run.metrics:
        rows["accuracy"]["test accuracy"] = run.metrics["test_accuracy"]
    adversarial = run.evals.get("adversarial")
    if adversarial:
        rows["adversarial"]["clean"] = adversarial["clean_accuracy"]
        for attack, by_eps in adversarial["attacks"].items():
            for eps, accuracy in by_eps.items():
                rows["adversarial"][f"{attack.upper()} ε={eps}"] = accuracy
    pruning = run.evals.get("pruning")
    if pruning:
        rows["pruning"]["dense"] = pruning["dense_accuracy"]
        for mode in ("one_shot", "fine_tuned"):
            for sparsity, result in pruning.get(mode, {}).items():
                name = mode.replace("_", "-")
                rows["pruning"][f"{name} {sparsity}"] = result["accuracy"]
    saliency = run.evals.get("saliency")
    if saliency:
        for method, focus in saliency["foreground_focus"].items():
            rows["saliency"][f"focus: {method}"] = focus
        if "chance" in saliency:
            rows["saliency"]["chance (object share)"] = saliency["chance"]
    quality = run.evals.get("quality")
    if quality:
        rows["quality"]["GSNR (mean over parameters)"] = quality["gsnr"]
        if "gsnr_mean_of_layer_medians" in quality:
            rows["quality"]["GSNR (mean of layer medians)"] = quality["gsnr_mean_of_layer_medians"]
        for name, kept in quality.get("kept_fraction", {}).items():
            rows["quality"][f"kept: {name}"] = kept
    return rows


def _summary(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None, None, 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std, len(values)


def _format(mean, std, count):
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.4f}" if count else "–"
    return f"{mean:.4f} ± {std:.4f}"


def verdict(group, baseline, control):
    """Whether `group` beats baseline and control by more than the seed spread.

    Each argument is a list of values over seeds (higher is better). The spread is
    the largest of the three sample standard deviations.
    """
    g, b, c = (_summary(values) for values in (group, baseline, control))
    if None in (g[0], b[0], c[0]):
        return "–"
    if min(g[2], b[2], c[2]) < 2:
        return "one seed: no spread to judge by"
    spread = max(g[1], b[1], c[1])
    over_baseline, over_control = g[0] - b[0], g[0] - c[0]
    if over_baseline > spread and over_control > spread:
        return f"better (+{over_baseline:.4f} vs none, +{over_control:.4f} vs random; spread {spread:.4f})"
    if over_baseline < -spread:
        return f"worse ({over_baseline:+.4f} vs none; spread {spread:.4f})"
    return f"no effect ({over_baseline:+.4f} vs none, {over_control:+.4f} vs random; spread {spread:.4f})"


CLAIMS = {
    "accuracy": "Accuracy (test split)",
    "adversarial": "Accuracy under L∞ attack (exact gradients)",
    "pruning": "Accuracy after magnitude pruning (TF-MOT)",
    "saliency": "Saliency foreground focus (share of saliency on object pixels)",
    "quality": "Gradient quality: GSNR on a probe batch, masks active (secondary: no verdict)",
}


def report(runs, output_dir):
    """Writes `output_dir/report.md` and its figures; returns the report's text."""
    from gradmask_tf import runs as run_files

    output_dir = pathlib.Path(output_dir)
    groups = group_runs(runs)
    per_run = {id(run): metric_rows(run) for run in runs}
    lines = ["# Gradient Mask: comparison report", ""]
    lines.append(
        f"{len(runs)} runs in {len(groups)} configurations. Values are mean ± sample "
        "standard deviation over seeds (a single value where there is one seed). A "
        "verdict says whether a masked rule beat both the baseline (`none`) and the "
        "random-mask control (`random`) by more than the largest seed-to-seed spread."
    )
    lines.append("")
    lines.append("| configuration | seeds | runs |")
    lines.append("| --- | --- | --- |")
    for label, members in groups.items():
        seeds = ", ".join(str(run.seed) for run in members)
        paths = ", ".join(f"`{run.path}`" for run in members)
        if members[0].rule == CONTROL:
            label += f" (keep_fraction={members[0].config.get('mask_keep_fraction')})"
        lines.append(f"| {label} | {seeds} | {paths} |")
    for claim, heading in CLAIMS.items():
        metrics = list(
            dict.fromkeys(m for run in runs for m in per_run[id(run)][claim])
        )
        if not metrics:
            continue
        lines += ["", f"## {heading}", ""]
        lines.append("| metric | " + " | ".join(groups) + " |")
        lines.append("| --- |" + " --- |" * len(groups))
        values = {}
        for metric in metrics:
            cells = []
            for label, members in groups.items():
                values[(metric, label)] = [per_run[id(r)][claim].get(metric) for r in members]
                cells.append(_format(*_summary(values[(metric, label)])))
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        baseline = next((l for l, m in groups.items() if m[0].rule == BASELINE), None)
        control = next((l for l, m in groups.items() if m[0].rule == CONTROL), None)
        masked = [l for l, m in groups.items() if m[0].rule not in (BASELINE, CONTROL)]
        judged = [m for m in metrics if not m.startswith(("chance", "kept", "GSNR"))]
        if baseline and control and masked and judged:
            lines += ["", "Verdicts:", ""]
            lines.append("| metric | " + " | ".join(masked) + " |")
            lines.append("| --- |" + " --- |" * len(masked))
            for metric in judged:
                cells = [
                    verdict(values[(metric, l)], values[(metric, baseline)], values[(metric, control)])
                    for l in masked
                ]
                lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    figures_written = _figures(runs, groups, output_dir)
    if figures_written:
        lines += ["", "## Figures", ""]
        for name, caption in figures_written:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    text = "\n".join(lines).rstrip() + "\n"
    run_files.atomic_write_text(output_dir / "report.md", text)
    return text


def _mean_curve(members, key):
    by_epoch = {}
    for run in members:
        for row in run.history:
            if key in row and np.isfinite(row[key]):
                by_epoch.setdefault(int(row["epoch"]), []).append(row[key])
    return sorted(by_epoch.items())


def _figures(runs, groups, output_dir):
    """Writes the overlay figures; returns `[(file name, caption)]`."""
    from eval import figures

    first = {label: members[0] for label, members in groups.items()}
    drawn = []
    for name, plot, title, caption in (
        ("adversarial", figures.plot_adversarial,
         "Accuracy under attack (first seed of each configuration)",
         "Accuracy vs ε, one colour per configuration"),
        ("pruning", figures.plot_pruning,
         "Accuracy after pruning (first seed of each configuration)",
         "Accuracy vs sparsity, one colour per configuration"),
    ):
        evaluated = {label: run.evals[name] for label, run in first.items() if name in run.evals}
        if evaluated:
            figure = plot(list(evaluated.values()), labels=list(evaluated), title=title)
            drawn.append((f"{name}.png", figure, caption))
    curves = {label: _mean_curve(members, "gsnr") for label, members in groups.items()}
    if any(curves.values()):
        curves = {label: [(epoch, np.mean(values)) for epoch, values in curve]
                  for label, curve in curves.items()}
        drawn.append(("gsnr.png", figures.plot_gsnr_over_training(curves),
                      "GSNR over training, mean over seeds"))
    maps_files = {label: run.path / "eval" / "saliency_maps.npz" for label, run in first.items()}
    saved = {label: np.load(path) for label, path in maps_files.items() if path.is_file()}
    if saved:
        drawn.append(("saliency.png", figures.plot_saliency_comparison(saved),
                      "Saliency maps of the same test images, side by side"))
    for name, figure, _ in drawn:
        figures.save(figure, output_dir / name)
    return [(name, caption) for name, _, caption in drawn]


def main(argv=None, *, stderr=None):
    """`python -m eval.compare RUN [RUN ...] --output_dir=DIR`; returns 0.

    Args:
      argv: The program name and its arguments. Defaults to None (`sys.argv`).
      stderr: A `eval.cli.DeferredStderr` holding back native output, or None to
        write errors directly. Defaults to None.

    Raises:
      SystemExit: With status 2 after one line on stderr, on a bad argument or run.
    """
    from absl import flags

    from eval.cli import ImmediateStderr, parse_flags_or_fail

    stderr = stderr or ImmediateStderr()
    flag_values = flags.FlagValues()
    flags.DEFINE_string("output_dir", None, "Where to write report.md and the figures.",
                        flag_values=flag_values)
    flags.DEFINE_bool("help", False, "Show this help.", flag_values=flag_values)
    paths = parse_flags_or_fail(flag_values, list(sys.argv if argv is None else argv), stderr,
                                PROGRAM)[1:]
    if flag_values.help:
        stderr.release()
        print(__doc__.strip(), flag_values.get_help(), sep="\n\n")
        return 0
    if not flag_values.output_dir:
        stderr.fail(PROGRAM, "flag --output_dir is required")
    if not paths:
        stderr.fail(
            PROGRAM, "give at least one run directory: python -m eval.compare RUN [RUN ...]"
        )
    try:
        loaded = [load_run(path) for path in paths]
    except ValueError as error:
        stderr.fail(PROGRAM, error)
    stderr.release()
    report(loaded, flag_values.output_dir)
    print(f"Wrote {pathlib.Path(flag_values.output_dir) / 'report.md'} ({len(loaded)} runs)")
    return 0


if __name__ == "__main__":
    from eval.cli import DeferredStderr

    sys.exit(main(sys.argv, stderr=DeferredStderr()))
