r"""Compares arms of runs, paired by seed, with `none` and each rule's matched control.

  python -m eval.compare RUN [RUN ...] --output_dir=DIR --primary=mean:test_accuracy:higher

Reads each run's `config.json`, `metrics.json` and `eval/*.json`, groups the runs into
arms paired by seed (`eval.arms`), and writes `DIR/report.md`: the arms; the verdicts
of the primary comparisons declared with `--primary` (`eval.stats.judge`); per claim
(accuracy; the mask metrics; accuracy under attack at each eps; after pruning at each
sparsity; saliency foreground focus; GSNR) each arm's mean ± std over seeds and each
masked rule's paired differences to `none` and to its matched control with 95%
t-intervals (unadjusted: secondary, never a verdict); and the figures, `forest.png`
(those paired differences) first.
"""

import dataclasses
import functools
import pathlib
import sys

import numpy as np

from eval import arms as study_arms
from eval import stats
from gradmask_tf import files

PROGRAM = "python -m eval.compare"
CONTROL_LIMIT = (
    "The control's limit (METHOD.md section 2): a random subset scaled to the same mass "
    "is the true gradient plus sampling noise, so beating it shows the rule's selection "
    "is better than an uninformed one of the same size, not why."
)
# metrics.json entries that record the run rather than measure it.
_BOOKKEEPING = {"num_test_examples", "epochs", "train_seconds", "mean_epoch_seconds", "seed"}


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

    @functools.cached_property
    def rows(self):
        """`metric_rows` of the run."""
        return metric_rows(self)

    @functools.cached_property
    def measures(self):
        """Every figure of the run by name: `{metric: value}` over all claims."""
        return {name: value for rows in self.rows.values() for name, value in rows.items()}


def load_run(path):
    """Reads a run directory's results; missing evaluations are simply absent.

    Raises:
      ValueError: No `config.json`, or a result file damaged (one line naming the file
        and why: `eval.result_files`).
    """
    from eval import result_files

    path = pathlib.Path(path)
    if not (path / files.CONFIG).is_file():
        raise ValueError(f"{path} is not a run directory (no {files.CONFIG})")
    name = files.CONFIG
    try:
        config = result_files.read_json(path / name)["flags"]
        evals = {}
        for file in result_files.evaluation_files(path):
            name = f"eval/{file.name}"
            evals[file.stem] = result_files.read_json(file)
        name = files.METRICS
        metrics = result_files.read_json(path / name) if (path / name).is_file() else {}
        name = files.HISTORY
        history = result_files.read_history(path / name) if (path / name).is_file() else []
        if metrics and history:
            result_files.check_epochs(metrics, history)
    except result_files.DamagedFile as error:
        raise ValueError(f"results of {path} are damaged ({name}: {error})") from None
    return Run(path=path, config=config, metrics=metrics, evals=evals, history=history)


def metric_rows(run):
    """Every figure of one run, by claim: {claim: {metric: value}}."""
    rows = {claim: {} for claim in CLAIMS}
    for name, value in run.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if name.startswith(files.MASK_METRIC_PREFIXES):
                rows["mask"][name] = value
            elif name not in _BOOKKEEPING:
                rows["accuracy"][name] = value
    adversarial = run.evals.get("adversarial")
    if adversarial:
        rows["adversarial"]["adversarial/clean"] = adversarial["clean_accuracy"]
        for attack, by_eps in adversarial["attacks"].items():
            for eps, accuracy in by_eps.items():
                rows["adversarial"][f"adversarial/{attack}/{eps}"] = accuracy
    pruning = run.evals.get("pruning")
    if pruning:
        rows["pruning"]["pruning/dense"] = pruning["dense_accuracy"]
        for mode in ("one_shot", "fine_tuned"):
            for sparsity, result in pruning.get(mode, {}).items():
                rows["pruning"][f"pruning/{mode}/{sparsity}"] = result["accuracy"]
    saliency = run.evals.get("saliency")
    if saliency:
        for method, focus in saliency["foreground_focus"].items():
            rows["saliency"][f"saliency/{method}"] = focus
        if "chance" in saliency:
            rows["saliency"]["saliency/chance"] = saliency["chance"]
    quality = run.evals.get("quality")
    if quality:
        rows["quality"]["GSNR (mean over parameters)"] = quality["gsnr"]
        if "gsnr_mean_of_layer_medians" in quality:
            rows["quality"]["GSNR (mean of layer medians)"] = quality["gsnr_mean_of_layer_medians"]
        for name, kept in quality.get("kept_fraction", {}).items():
            rows["quality"][f"kept: {name}"] = kept
    return rows


def _descriptive(claim, metric):
    """Figures that describe an arm rather than an outcome: no paired difference."""
    return claim == "mask" or metric == "saliency/chance" or metric.startswith("kept")


CLAIMS = {
    "accuracy": "Accuracy (test split) and the run's other final metrics",
    "mask": "Mask metrics (last epoch; over the non-zero gradient entries)",
    "adversarial": "Accuracy under L∞ attack (exact gradients)",
    "pruning": "Accuracy after magnitude pruning (TF-MOT)",
    "saliency": "Saliency foreground focus (share of saliency on object pixels)",
    "quality": "Gradient quality: GSNR on a probe batch, masks active (secondary: no verdict)",
}


def _tiny(*values):
    """Whether figures this small need significant digits, not 4 decimals (GSNR near
    convergence is of order 1e-4: `0.0002 ± 0.0000` would hide every difference)."""
    largest = max(abs(value) for value in values)
    return 0 < largest < 0.001


def _arm_cell(values):
    values = list(values.values())
    if not values:
        return "–"
    mean = np.mean(values)
    form = ".2e" if _tiny(mean) else ".4f"
    if len(values) == 1:
        return f"{mean:{form}} (n=1)"
    return f"{mean:{form}} ± {np.std(values, ddof=1):{form}} (n={len(values)})"


def _signed(value, tiny=False):
    if tiny:
        return f"{value:+.2e}"
    return f"{round(value, 4) or 0.0:+.4f}"  # rounding to zero gives +0.0000, never -0.0000


def _interval(difference):
    tiny = _tiny(difference.mean, difference.low, difference.high)
    return (f"{_signed(difference.mean, tiny)} [{_signed(difference.low, tiny)}, "
            f"{_signed(difference.high, tiny)}]")


def _p(value):
    return "< 0.0001" if value < 0.0001 else f"{value:.4f}"


def _intro(runs, arms):
    return [
        "# Gradient Mask: comparison report",
        "",
        f"{len(runs)} runs in {len(arms)} arms (an arm: the runs of one configuration, "
        "one per seed). Arm values are mean ± sample standard deviation over seeds (n "
        "seeds). Arms are compared **paired by seed**: each masked rule's per-seed "
        "differences to `none` and to its matched control (the same flags with "
        "`--mask_control`: as many entries kept, the same L1 mass, uniformly random "
        "places). Only the primary comparisons declared with `--primary` get a verdict; "
        "every other difference is secondary, reported with its 95% t-interval "
        "(unadjusted), never called a win.",
        "",
        "| arm | seeds | runs |",
        "| --- | --- | --- |",
        *(
            f"| {arm.label} | {', '.join(str(run.seed) for run in arm.runs)} | "
            + ", ".join(f"`{run.path}`" for run in arm.runs) + " |"
            for arm in arms
        ),
    ]


def _primary_section(judged):
    lines = ["", "## Primary comparisons: verdicts", ""]
    if not judged:
        lines.append(
            "No primary comparison was declared (`--primary`): every difference below is "
            "secondary."
        )
        return lines + ["", CONTROL_LIMIT]
    count = len(judged)
    lines += [
        "| primary | rule − none [95% CI] | rule − control [95% CI] | pairs | p | "
        "Holm p | Holm p, worse than none | detectable (80% power) | verdict |",
        "| --- |" + " --- |" * 8,
    ]
    for primary, outcome in judged:
        if isinstance(outcome, str):
            lines.append(f"| `{primary}` |" + " – |" * 7 + f" {outcome} |")
            continue
        lines.append(
            f"| `{primary}` | {_interval(outcome.versus_none)} | "
            f"{_interval(outcome.versus_control)} | "
            f"{outcome.versus_none.num_pairs} / {outcome.versus_control.num_pairs} | "
            f"{_p(outcome.p_value)} | {_p(outcome.adjusted_p_value)} | "
            f"{_p(outcome.worse_adjusted_p_value)} | {outcome.detectable:.4f} | "
            f"**{outcome.verdict}** |"
        )
    lines += [
        "",
        "p: the larger of two one-sided paired t-tests in the declared direction, the rule "
        "against `none` and against its matched control (both must hold). Holm p: "
        f"Holm–Bonferroni over the {count} declared primaries at family-wise "
        f"{stats.LEVEL} (any not measured count with p = 1). **Better** where Holm p < "
        f"{stats.LEVEL}; **worse** where the opposite test against `none`, adjusted the "
        "same way, is; otherwise no difference detected. Detectable: the smallest true "
        "mean difference that each of the two paired tests finds with 80% power at "
        f"{stats.LEVEL}/{count}, from the observed spread of the paired differences; a "
        "smaller effect could be missed.",
        "",
        CONTROL_LIMIT,
    ]
    return lines


def _claim_section(claim, heading, arms, pairings):
    metrics = list(
        dict.fromkeys(metric for arm in arms for run in arm.runs for metric in run.rows[claim])
    )
    if not metrics:
        return []
    lines = ["", f"## {heading}", ""]
    lines.append("| metric | " + " | ".join(arm.label for arm in arms) + " |")
    lines.append("| --- |" + " --- |" * len(arms))
    for metric in metrics:
        cells = [_arm_cell(arm.values(metric)) for arm in arms]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    compared = [m for m in metrics if not _descriptive(claim, m)]
    if not (pairings and compared):
        return lines
    lines += ["", "Paired differences by seed: mean [95% t-interval, unadjusted] (n pairs).", ""]
    columns = [
        (arm, other, f"{arm.label} − {name}")
        for arm, baseline, control in pairings
        for other, name in ((baseline, "none"), (control, "control"))
    ]
    lines.append("| metric | " + " | ".join(title for _, _, title in columns) + " |")
    lines.append("| --- |" + " --- |" * len(columns))
    for metric in compared:
        cells = [_difference(arm, other, metric) for arm, other, _ in columns]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return lines


def _difference(arm, other, metric):
    if other is None:
        return "no arm"
    difference = study_arms.paired(arm, other, metric)
    if difference is None:
        return "under 2 shared seeds"
    return f"{_interval(difference)} (n={difference.num_pairs})"


def _forest(pairings, metrics, output_dir):
    """Writes `forest.png` where any paired difference has an interval; its caption."""
    from eval import figures

    rows = []
    for metric in metrics:
        for arm, baseline, control in pairings:
            for other, name in ((baseline, "none"), (control, "matched control")):
                if other is None:
                    continue
                difference = study_arms.paired(arm, other, metric)
                if difference is not None:
                    rows.append(dict(metric=metric, rule=arm.label, versus=name,
                                     mean=difference.mean, low=difference.low,
                                     high=difference.high))
    if not rows:
        return []
    figures.save(figures.plot_forest(rows), output_dir / "forest.png")
    return [("forest.png", "Paired differences by seed to `none` and to the matched control, "
                           "95% t-intervals (unadjusted)")]


def report(runs, output_dir, primaries=()):
    """Writes `output_dir/report.md` and its figures; returns the report's text.

    Args:
      runs: `Run`s, as `load_run` reads them.
      output_dir: Where to write `report.md` and the figures.
      primaries: The primary comparisons, `eval.arms.Primary`s or
        `rule:metric:direction` strings, at most three. Defaults to () (none: no
        verdict).

    Raises:
      ValueError: If a primary is malformed or two runs share configuration and seed.
    """
    output_dir = pathlib.Path(output_dir)
    primaries = study_arms.parse_primaries(primaries)
    arms = study_arms.group_runs(runs, lambda run: run.measures)
    pairings = study_arms.pairings(arms)
    lines = _intro(runs, arms)
    lines += _primary_section(study_arms.judge_primaries(primaries, arms))
    for claim, heading in CLAIMS.items():
        lines += _claim_section(claim, heading, arms, pairings)
    forest_metrics = list(dict.fromkeys([p.metric for p in primaries] + ["test_accuracy"]))
    figures_written = _forest(pairings, forest_metrics, output_dir)
    figures_written += _figures(runs, {arm.label: arm.runs for arm in arms}, output_dir)
    if figures_written:
        lines += ["", "## Figures", ""]
        for name, caption in figures_written:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    text = "\n".join(lines).rstrip() + "\n"
    files.atomic_write_text(output_dir / "report.md", text)
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
    from eval import figures, saliency_file

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
    maps_files = {
        label: run.path / "eval" / saliency_file.FILE_NAME for label, run in first.items()
    }
    saved = {label: np.load(path) for label, path in maps_files.items() if path.is_file()}
    if saved:
        drawn.append(("saliency.png", figures.plot_saliency_comparison(saved),
                      "Saliency maps of the same test images, side by side"))
    for name, figure, _ in drawn:
        figures.save(figure, output_dir / name)
    return [(name, caption) for name, _, caption in drawn]


def main(argv=None, *, stderr=None):
    """`python -m eval.compare RUN [RUN ...] --output_dir=DIR [--primary=...]`; returns 0.

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
    flags.DEFINE_list(
        "primary", [],
        f"At most {study_arms.MAX_PRIMARIES} primary comparisons, declared before the runs, each "
        "rule:metric:direction (direction: higher or lower is better), e.g. "
        "mean:test_accuracy:higher. Only these get a verdict.",
        flag_values=flag_values,
    )
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
        primaries = study_arms.parse_primaries(flag_values.primary)
        loaded = [load_run(path) for path in paths]
        study_arms.group_runs(loaded, lambda run: {})  # a configuration and seed twice
    except ValueError as error:
        stderr.fail(PROGRAM, error)
    stderr.release()
    report(loaded, flag_values.output_dir, primaries)
    print(f"Wrote {pathlib.Path(flag_values.output_dir) / 'report.md'} ({len(loaded)} runs)")
    return 0


if __name__ == "__main__":
    from eval.cli import DeferredStderr

    sys.exit(main(sys.argv, stderr=DeferredStderr()))
