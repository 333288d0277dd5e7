r"""The analysis of a grid of regimes across their factors: a rule against its baseline and
its matched control in every cell, and how the rule's gap to its control moves between
the cells.

  python -m eval.grid --plan=label-noise-2x2 --results_dir=docs/results/label-noise-2x2

A plan's *factors* are the train.py flags whose values differ between its regimes; each
regime is a *cell*. This needs two factors of two levels each, every combination one
regime. A factor's levels are ordered ascending where they are numbers, otherwise as the
plan first gives them; a *change* is the second level minus the first. Each run is read
from `RESULTS/<regime>/<arm>-seed<seed>/` (`config.json`, `metrics.json`, `history.csv`);
a run without `metrics.json`, or whose `config.json` disagrees with the plan, is missing.

Written to `OUTPUT/grid.md` (OUTPUT defaults to RESULTS), per metric:

- per cell, each arm's mean ± std over seeds and the rule's paired differences by seed
  to the baseline (`none`) and to its matched control, mean and 95% t-interval;
- the 2x2 of the gap, rule − control: each cell's gap; each factor's change of the gap
  at each level of the other factor and averaged over it; the interaction, the
  difference of those changes.

Every figure is computed per seed first, then summarised over seeds (`eval.stats.
describe`): for seed s, gap(a, b) = rule − control in the cell at level a of the first
factor and b of the second; the change along the first factor at b is gap(a2, b) −
gap(a1, b), averaged over the second factor its mean over b1 and b2; the interaction is
the change at b2 minus the change at b1, which is the same read along either factor. A
seed counts in a figure only where every run the figure needs is there, so n is given
per figure. Runs of different seeds are independent, so the per-seed figures are too
and the t-interval holds whatever a seed shares across cells; pairing by seed removes
what it shares within one (data, label noise, initial weights, order). All of it is
secondary (METHOD.md section 5): unadjusted intervals, no verdict; the plan's
primaries are judged in each regime's report. The curves of `history.csv`
(`memorisation.png`, `clean_train_accuracy.png`) are drawn beside `grid.md`. The code
writes tables and figures only; the reading is written by a person.
"""

import dataclasses
import json
import os
import pathlib
import sys

import numpy as np

from eval import compare, stats
from eval.arms import same_value
from gradmask_tf import files

PROGRAM = "python -m eval.grid"
METRICS = ("memorisation", "test_accuracy_end", "test_accuracy_best_validation")
CURVES = ("memorisation", "clean_train_accuracy")
UNFINISHED = "no metrics.json (not finished)"
ABSENT = "not there"


@dataclasses.dataclass
class Cell:
    """One regime of the grid: its place, and its runs by arm and seed."""

    regime: str
    position: tuple  # (index of the first factor's level, of the second's)
    runs: dict  # arm -> {seed: {"metrics": dict, "history": [row]}}
    missing: list  # [(arm, seed, why)]

    def values(self, arm, metric):
        """`{seed: value}` of one metric of one arm, finite numbers only."""
        values = {seed: run["metrics"].get(metric) for seed, run in self.runs[arm].items()}
        return {seed: float(value) for seed, value in values.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                and np.isfinite(value)}


@dataclasses.dataclass(frozen=True)
class Arms:
    """The arms compared: the rule, its baseline and its matched control."""

    rule: str
    baseline: str
    control: str


def factors(plan):
    """`[(flag, levels)]`: the flags whose values differ between the plan's regimes, in
    the order the regimes give them, each with its levels ordered (see the module)."""
    regimes = plan["regimes"]
    names = dict.fromkeys(flag for regime in regimes for flag in regime["flags"])
    found = []
    for flag in names:
        texts = dict.fromkeys(json.dumps(regime["flags"].get(flag)) for regime in regimes)
        if len(texts) > 1:
            found.append((flag, _ordered([json.loads(text) for text in texts])))
    return found


def _ordered(levels):
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
        return sorted(levels)
    return levels


def positions(plan, found):
    """`{regime: (i, j)}`, its levels' indices, for a full 2x2 of the factors `found`.

    Raises:
      ValueError: If the regimes are not two factors of two levels, each combination one.
    """
    shape = ", ".join(f"{flag} ({', '.join(map(str, levels))})" for flag, levels in found)
    if len(found) != 2 or any(len(levels) != 2 for _, levels in found):
        raise ValueError(
            f"plan {plan['name']}: eval.grid needs regimes that cross two flags of two "
            f"levels each; its regimes vary {len(found)} flag(s): {shape or 'none'}")
    places = {}
    for regime in plan["regimes"]:
        place = tuple(
            next(index for index, level in enumerate(levels)
                 if json.dumps(level) == json.dumps(regime["flags"].get(flag)))
            for flag, levels in found)
        if place in places.values():
            raise ValueError(f"plan {plan['name']}: two regimes share the cell {shape}: "
                             f"{place}; each combination must be one regime")
        places[regime["name"]] = place
    if len(places) != 4:
        raise ValueError(f"plan {plan['name']}: {len(places)} regimes; a 2x2 of {shape} "
                         "needs all 4 combinations")
    return places


def read_cells(plan, results_dir, arm_names, places):
    """The cells of the grid, ordered by their levels, with every planned run found or
    named missing (`Cell.missing`)."""
    cells = []
    for regime in plan["regimes"]:
        cell = Cell(regime["name"], places[regime["name"]], {arm: {} for arm in arm_names}, [])
        for arm in arm_names:
            expected = {"mask_rule": plan["arms"][arm]["rule"],
                        "mask_control": plan["arms"][arm]["control"],
                        **plan["arms"][arm]["options"], **regime["flags"]}
            for seed in plan["seeds"]:
                path = pathlib.Path(results_dir) / regime["name"] / f"{arm}-seed{seed}"
                run, why = _read_run(path, {**expected, "seed": seed})
                if run is None:
                    cell.missing.append((arm, seed, why))
                else:
                    cell.runs[arm][seed] = run
        cells.append(cell)
    return sorted(cells, key=lambda cell: cell.position)


def _read_run(path, expected):
    """`(run, None)`, or `(None, why it is missing)`."""
    if not path.is_dir():
        return None, ABSENT
    if not (path / files.METRICS).is_file():
        return None, UNFINISHED
    try:
        flags = files.read_json(path / files.CONFIG)["flags"]
        metrics = files.read_json(path / files.METRICS)
        history = files.read_history(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"unreadable: {' '.join(str(error).split())}"
    if not isinstance(metrics, dict):
        return None, "unreadable: metrics.json is not an object"
    wrong = [f"{flag}={flags.get(flag)!r}" for flag, value in expected.items()
             if not (flags.get(flag) == value or same_value(flags.get(flag), value))]
    if wrong:
        return None, f"config.json has {', '.join(wrong)}, not the plan's"
    return dict(metrics=metrics, history=history), None


def combine(first, second, sign=-1.0, scale=1.0):
    """`{seed: scale * (first[seed] + sign * second[seed])}` over the seeds in both."""
    return {seed: scale * (first[seed] + sign * second[seed])
            for seed in sorted(set(first) & set(second))}


def gap_grid(cells, arms, metric):
    """The 2x2 of `rule − control` in `metric`, each figure `{seed: value}`.

    Returns:
      A dict: `gap` `{(i, j): ...}`, each cell's gap; `along_first` `{j: ...}`, the
      change along the first factor at level j of the second, and `along_second`
      `{i: ...}`; `average_first` and `average_second`, those changes averaged over the
      other factor; `interaction`, `along_first[1] − along_first[0]`.
    """
    gap = {cell.position: combine(cell.values(arms.rule, metric),
                                  cell.values(arms.control, metric)) for cell in cells}
    along_first = {j: combine(gap[1, j], gap[0, j]) for j in (0, 1)}
    along_second = {i: combine(gap[i, 1], gap[i, 0]) for i in (0, 1)}
    return dict(
        gap=gap, along_first=along_first, along_second=along_second,
        average_first=combine(along_first[1], along_first[0], sign=1.0, scale=0.5),
        average_second=combine(along_second[1], along_second[0], sign=1.0, scale=0.5),
        interaction=combine(along_first[1], along_first[0]),
    )


def summary(by_seed):
    """`eval.stats.describe` of a figure's per-seed values, or None under two seeds."""
    if len(by_seed) < 2:
        return None
    return stats.describe(list(by_seed.values()))


def _figure(by_seed):
    """A figure as the report gives it: mean [95% t-interval] (n)."""
    difference = summary(by_seed)
    if difference is None:
        return f"under 2 seeds (n={len(by_seed)})"
    return f"{compare._interval(difference)} (n={difference.num_pairs})"


def _shown(path):
    """A path as the report shows it: relative to the working directory where inside it."""
    path = pathlib.Path(path)
    try:
        return path.resolve().relative_to(pathlib.Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _intro(plan, found, arms, results_dir):
    (first, first_levels), (second, second_levels) = found
    return [
        f"# Grid of `{plan['name']}`: `{arms.rule}` against `{arms.baseline}` and "
        f"`{arms.control}`",
        "",
        f"Plan: `{_shown(plan['path'])}`; results: `{_shown(results_dir)}`; seeds in the "
        f"plan: {', '.join(map(str, plan['seeds']))}. Factors: `{first}` "
        f"({', '.join(map(str, first_levels))}) × `{second}` "
        f"({', '.join(map(str, second_levels))}); a change is the second level minus the "
        "first.",
        "",
        "Arms are paired by seed. Every figure is computed per seed, then summarised over "
        "seeds: mean [95% t-interval] (n seeds). For seed s, the gap in a cell is "
        f"`{arms.rule}` − `{arms.control}`; a factor's change at one level of the other "
        "factor is the gap at its second level minus the gap at its first; averaged, the "
        "mean of that change over the other factor's two levels; the interaction, the "
        f"change along `{first}` at `{second}`={second_levels[1]} minus that at "
        f"{second_levels[0]} (the same read along `{second}`). A seed counts in a figure "
        "only where every run that figure needs is there, so n is given per figure and "
        "figures of different n need not add up. Runs of different seeds are independent, "
        "so the per-seed figures are too. Arm values are mean ± sample standard deviation "
        "over seeds (n). All of it is secondary: unadjusted intervals, no verdict (the "
        "plan's primaries are judged in each regime's `report.md`).",
    ]


def _runs_section(cells, found, arm_names, plan):
    lines = ["", "## Runs", "",
             "| cell | " + " | ".join(f"`{flag}`" for flag, _ in found) + " | "
             + " | ".join(f"{arm}: seeds" for arm in arm_names) + " |",
             "| --- |" + " --- |" * (len(found) + len(arm_names))]
    for cell in cells:
        levels = [str(found[k][1][cell.position[k]]) for k in range(2)]
        seeds = [", ".join(map(str, sorted(cell.runs[arm]))) or "–" for arm in arm_names]
        lines.append(f"| {cell.regime} | " + " | ".join(levels + seeds) + " |")
    planned = len(cells) * len(arm_names) * len(plan["seeds"])
    missing = sum(len(cell.missing) for cell in cells)
    lines += ["", f"Missing: {missing} of {planned} planned runs."]
    if missing:
        lines += ["", "| cell | missing runs |", "| --- | --- |"]
        for cell in cells:
            reasons = {}
            for arm, seed, why in cell.missing:
                reasons.setdefault(why, []).append(f"{arm}-seed{seed}")
            if len(reasons) == 1 and len(cell.missing) == len(arm_names) * len(plan["seeds"]):
                lines.append(f"| {cell.regime} | {next(iter(reasons))}: all "
                             f"{len(cell.missing)} |")
            elif reasons:
                text = "; ".join(f"{why}: {', '.join(runs)}" for why, runs in reasons.items())
                lines.append(f"| {cell.regime} | {text} |")
    return lines


def _metric_section(metric, cells, found, arms):
    arm_names = (arms.baseline, arms.rule, arms.control)
    lines = [
        "", f"## `{metric}`", "",
        f"Per cell: each arm over seeds, and `{arms.rule}`'s paired differences by seed.", "",
        "| cell | " + " | ".join(arm_names) + f" | {arms.rule} − {arms.baseline} | "
        f"{arms.rule} − {arms.control} |",
        "| --- |" + " --- |" * 5,
    ]
    for cell in cells:
        values = {arm: cell.values(arm, metric) for arm in arm_names}
        lines.append(
            f"| {cell.regime} | "
            + " | ".join(compare._arm_cell(values[arm]) for arm in arm_names)
            + f" | {_figure(combine(values[arms.rule], values[arms.baseline]))}"
            + f" | {_figure(combine(values[arms.rule], values[arms.control]))} |")
    grid = gap_grid(cells, arms, metric)
    (first, (a1, a2)), (second, (b1, b2)) = found
    lines += [
        "", f"The 2x2 of the gap `{arms.rule}` − `{arms.control}`: each cell's gap; the "
        "last column and row, the change of the gap between a factor's levels at each "
        "level of the other; the corner, the interaction.", "",
        f"| `{first}` \\ `{second}` | {b1} | {b2} | {b2} − {b1} |",
        "| --- | --- | --- | --- |",
    ]
    for i, level in enumerate((a1, a2)):
        lines.append(f"| {level} | {_figure(grid['gap'][i, 0])} | "
                     f"{_figure(grid['gap'][i, 1])} | {_figure(grid['along_second'][i])} |")
    lines.append(f"| {a2} − {a1} | {_figure(grid['along_first'][0])} | "
                 f"{_figure(grid['along_first'][1])} | {_figure(grid['interaction'])} |")
    lines += [
        "", "| figure | mean [95% t-interval] (n) | seeds |", "| --- | --- | --- |",
        *(f"| {name} | {_figure(by_seed)} | {', '.join(map(str, by_seed)) or '–'} |"
          for name, by_seed in (
              (f"`{first}`: {a2} − {a1}, averaged over `{second}`", grid["average_first"]),
              (f"`{second}`: {b2} − {b1}, averaged over `{first}`", grid["average_second"]),
              (f"interaction: ({a2} − {a1} at {b2}) − ({a2} − {a1} at {b1})",
               grid["interaction"]),
          )),
    ]
    return lines


def _curve_figures(cells, found, arm_names, output_dir):
    """Draws the history curves; returns the report's lines about them."""
    from eval import figures

    lines = ["", "## Curves", ""]
    for key in CURVES:
        panels = [
            dict(row=f"{found[0][0]}={found[0][1][cell.position[0]]}",
                 column=f"{found[1][0]}={found[1][1][cell.position[1]]}",
                 arms={arm: [cell.runs[arm][seed]["history"] for seed in sorted(cell.runs[arm])
                             if any(key in row for row in cell.runs[arm][seed]["history"])]
                       for arm in arm_names})
            for cell in cells
        ]
        if not any(histories for panel in panels for histories in panel["arms"].values()):
            lines += [f"`{key}.png` not drawn: no run's `history.csv` has `{key}`.", ""]
            continue
        figures.save(figures.plot_curves(panels, key), pathlib.Path(output_dir) / f"{key}.png")
        caption = (f"`{key}` against the epoch, one panel per cell and one colour per arm: "
                   f"the mean over seeds, in a band {figures.curves.BAND}; each panel's "
                   "title gives the seeds per arm")
        lines += [f"![{caption}]({key}.png)", "", f"*{caption}*", ""]
    return lines


def write_grid(plan, results_dir, output_dir=None, *, arms=Arms("mean", "none", "mean-control"),
               metrics=METRICS):
    """Writes `grid.md` and the curves into `output_dir`; returns the path of `grid.md`.

    Args:
      plan: A checked plan (`eval.plans.load`), its regimes a 2x2 of two factors.
      results_dir: Where the runs are, `<regime>/<arm>-seed<seed>/`.
      output_dir: Defaults to None (`results_dir`).
      arms: The `Arms` compared, each run in every regime. Defaults to mean, none and
        mean-control.
      metrics: The `metrics.json` entries analysed. Defaults to `METRICS`.

    Raises:
      ValueError: If the regimes are not a 2x2 (`positions`).
    """
    output_dir = pathlib.Path(results_dir if output_dir is None else output_dir)
    found = factors(plan)
    arm_names = (arms.baseline, arms.rule, arms.control)
    cells = read_cells(plan, results_dir, arm_names, positions(plan, found))
    lines = _intro(plan, found, arms, results_dir)
    lines += _runs_section(cells, found, arm_names, plan)
    for metric in metrics:
        lines += _metric_section(metric, cells, found, arms)
    lines += _curve_figures(cells, found, arm_names, output_dir)
    path = output_dir / "grid.md"
    files.atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def check_arms(plan, arms):
    """Fails unless each arm is the plan's and runs in every regime, and `control` is the
    matched control of `rule`.

    Raises:
      ValueError: One line naming the flag.
    """
    for flag, name in (("rule_arm", arms.rule), ("baseline_arm", arms.baseline),
                       ("control_arm", arms.control)):
        if name not in plan["arms"]:
            raise ValueError(f"flag --{flag}: no arm {name!r} in plan {plan['name']}; "
                             f"arms: {', '.join(plan['arms'])}")
        absent = [regime["name"] for regime in plan["regimes"] if name not in regime["arms"]]
        if absent:
            raise ValueError(f"flag --{flag}: regime {absent[0]} does not run arm {name!r}")
    if len({arms.rule, arms.baseline, arms.control}) < 3:
        raise ValueError(f"flags --rule_arm, --baseline_arm, --control_arm: three different "
                         f"arms expected; received {arms.rule}, {arms.baseline}, {arms.control}")
    rule, control = plan["arms"][arms.rule], plan["arms"][arms.control]
    if rule["control"]:
        raise ValueError(f"flag --rule_arm: {arms.rule!r} is a matched control; give a rule")
    if not control["control"] or (control["rule"], control["options"]) != (
            rule["rule"], rule["options"]):
        raise ValueError(f"flag --control_arm: {arms.control!r} is not the matched control "
                         f"of {arms.rule!r} (the same rule and options, control: true)")


def _define_flags():
    from absl import flags

    flag_values = flags.FlagValues()
    flags.DEFINE_string("plan", None, "The plan: eval/plans/NAME.json, or a path to a .json "
                        "file.", flag_values=flag_values)
    flags.DEFINE_string("results_dir", None, "Where the runs are: <regime>/<arm>-seed<seed>/.",
                        flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Where to write grid.md and the figures. "
                        "Defaults to --results_dir.", flag_values=flag_values)
    flags.DEFINE_string("rule_arm", "mean", "The rule's arm.", flag_values=flag_values)
    flags.DEFINE_string("control_arm", "mean-control", "The rule's matched control arm.",
                        flag_values=flag_values)
    flags.DEFINE_string("baseline_arm", "none", "The baseline arm.", flag_values=flag_values)
    flags.DEFINE_list("metrics", list(METRICS), "The metrics.json entries analysed.",
                      flag_values=flag_values)
    flags.DEFINE_bool("help", False, "Show this help.", flag_values=flag_values)
    return flag_values


def _checked(flag_values, extra):
    """`(plan, arms, metrics)` of the parsed flags, each checked.

    Raises:
      ValueError: One line naming the flag.
    """
    from eval import plans

    if extra:
        raise ValueError(f"unexpected argument {extra[0]!r}; every setting is a flag")
    for name in ("plan", "results_dir"):
        if not flag_values[name].value:
            raise ValueError(f"flag --{name} is required")
    if not os.path.isdir(flag_values.results_dir):
        raise ValueError(f"flag --results_dir: no directory {flag_values.results_dir}")
    metrics = [metric.strip() for metric in flag_values.metrics]
    if not metrics or not all(metrics) or len(set(metrics)) != len(metrics):
        raise ValueError("flag --metrics: expected distinct metrics.json names, e.g. "
                         f"{','.join(METRICS)}; received {','.join(flag_values.metrics)!r}")
    plan = plans.load(flag_values.plan)
    arms = Arms(flag_values.rule_arm, flag_values.baseline_arm, flag_values.control_arm)
    positions(plan, factors(plan))
    check_arms(plan, arms)
    return plan, arms, metrics


def main(argv=None, *, stderr=None):
    """`python -m eval.grid --plan=NAME --results_dir=DIR [...]`; returns 0.

    Args:
      argv: The program name and its arguments. Defaults to None (`sys.argv`).
      stderr: A `eval.cli.DeferredStderr` holding back native output, or None to
        write errors directly. Defaults to None.

    Raises:
      SystemExit: With status 2 after one line on stderr, on a bad flag or plan.
    """
    from eval.cli import ImmediateStderr, parse_flags_or_fail

    stderr = stderr or ImmediateStderr()
    flag_values = _define_flags()
    extra = parse_flags_or_fail(flag_values, list(sys.argv if argv is None else argv), stderr,
                                PROGRAM)[1:]
    if flag_values.help:
        stderr.release()
        print(__doc__.strip(), flag_values.get_help(), sep="\n\n")
        return 0
    try:
        plan, arms, metrics = _checked(flag_values, extra)
    except ValueError as error:
        stderr.fail(PROGRAM, error)
    stderr.release()
    path = write_grid(plan, flag_values.results_dir, flag_values.output_dir, arms=arms,
                      metrics=metrics)
    print(f"Wrote {path} and its figures")
    return 0


if __name__ == "__main__":
    from eval.cli import DeferredStderr

    sys.exit(main(sys.argv, stderr=DeferredStderr()))
