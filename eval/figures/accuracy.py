"""The accuracy figures: under attack against eps, and after pruning against sparsity.

Each takes one result of `eval.adversarial` or `eval.pruning` (or one read back from
`RUN/eval/*.json`) or several to overlay, one colour per run.
"""

from matplotlib.lines import Line2D

from eval.figures.look import MARKERS, keys_beside, new_figure, runs_and_labels, styled
from eval.names import ATTACKS, ITERATIVE_ATTACKS, PGD_STEP_SIZE_RULE, PRUNING_MODES

# The clean accuracy is dashed; no attack is. One style and marker per attack.
_ATTACK_LINESTYLES = ("-", "-.", ":", (0, (3, 1, 1, 1, 1, 1)))
_MODE_STYLES = {"one_shot": ("-.", "o"), "fine_tuned": ("-", "s")}
_DENSE_STYLE = (0, (5, 3))


@styled
def plot_adversarial(results, labels=None, title=None):
    """Accuracy against eps: a line per attack from the clean accuracy at eps 0.

    The clean accuracy is also a dashed horizontal line.

    Args:
      results: One `evaluate_adversarial` result, or a sequence of them.
      labels: One name per result. Defaults to None (none for one result, "run 1",
        "run 2", ... for several).
      title: Defaults to None (a description of the evaluation).

    Returns:
      The `Figure`.

    Raises:
      ValueError: If `results` is empty or `labels` does not match it.
    """
    runs, labels = runs_and_labels(
        results, labels, lambda index, _, count: None if count == 1 else f"run {index + 1}"
    )
    several = len(runs) > 1
    figure = new_figure(8.0 if several else 6.4, 4.4)
    axes = figure.add_subplot()
    all_eps, run_handles, attack_handles = {0.0}, [], {}
    for index, (run, label) in enumerate(zip(runs, labels)):
        prefix, clean = ("" if label is None else f"{label}: "), run["clean_accuracy"]
        colour = f"C{index}"
        axes.axhline(clean, color=colour if several else "0.35", linestyle="--", linewidth=1.0,
                     label=f"{prefix}clean ({clean:.3f})", zorder=1)
        run_handles.append(
            Line2D([], [], color=colour, linewidth=2.0, label=f"{label} ({clean:.3f})")
        )
        for attack_index, (attack, by_eps) in enumerate(run["attacks"].items()):
            points = sorted((float(key), value) for key, value in by_eps.items())
            if points[0][0] != 0.0:
                points.insert(0, (0.0, clean))
            all_eps.update(radius for radius, _ in points)
            name = _attack_name(attack, run["settings"]["pgd_steps"])
            style = _attack_style(attack)
            axes.plot(*zip(*points), color=colour if several else f"C{attack_index}",
                      label=f"{prefix}{name}", clip_on=False, zorder=3, **style)
            attack_handles.setdefault(name, Line2D([], [], color="0.3", label=name, **style))
    if several:
        clean_handle = Line2D([], [], color="0.3", linestyle="--", linewidth=1.0, label="clean")
        keys_beside(figure, run_handles, [*attack_handles.values(), clean_handle], "attack")
    else:
        axes.legend(loc="best")
    ticks = sorted(all_eps)
    axes.set_xlim(0.0, ticks[-1] * 1.04 if ticks[-1] > 0 else 1.0)
    axes.set_xticks(ticks, [format(radius, "g") for radius in ticks])
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("L∞ perturbation ε (pixels in [0, 1])")
    axes.set_ylabel("accuracy")
    sizes = " / ".join(str(size) for size in sorted({run["num_examples"] for run in runs}))
    axes.set_title(title or f"Accuracy under L∞ attacks ({sizes} test examples)")
    _footnote(axes, _attack_footnote(runs[0]["settings"]))
    return figure


def _attack_name(attack, steps):
    return f"{attack.upper()}-{steps}" if attack in ITERATIVE_ATTACKS else attack.upper()


def _attack_style(attack):
    index = ATTACKS.index(attack) if attack in ATTACKS else 0
    return dict(linestyle=_ATTACK_LINESTYLES[index], marker=MARKERS[index])


def _attack_footnote(settings):
    parts = ["untargeted, true labels"]
    iterative = [attack for attack in settings["attacks"] if attack in ITERATIVE_ATTACKS]
    if iterative:
        steps, step = settings["pgd_steps"], settings["pgd_step_size"]
        step = f"2.5ε/{steps}" if step == PGD_STEP_SIZE_RULE else format(step, "g")
        random_start = [a.upper() for a in iterative if settings.get("rand_init", {}).get(a)]
        start = f" ({'/'.join(random_start)}: random start)" if random_start else ""
        parts.append(f"{'/'.join(a.upper() for a in iterative)}: {steps} steps of {step}{start}")
    parts.append("exact gradients (masks inactive)")
    return "; ".join(parts)


def _footnote(axes, text):
    """Small grey text below the x label, inside the constrained layout."""
    axes.annotate(text, xy=(1.0, 0.0), xycoords="axes fraction", xytext=(0, -34),
                  textcoords="offset points", ha="right", va="top", fontsize=7, color="0.4")


@styled
def plot_pruning(results, labels=None, title=None):
    """Test accuracy against target sparsity: a line per mode, dense and chance flat.

    Args:
      results: One `evaluate_pruning` result or a sequence of them.
      labels: One name per result. Defaults to None (each result's mask rule).
      title: Defaults to None (one naming the dataset, model and rule).

    Returns:
      The `Figure`.

    Raises:
      ValueError: If `results` is empty or `labels` does not match it.
    """
    results, labels = runs_and_labels(
        results, labels,
        lambda index, result, _: str(
            result.get("settings", {}).get("mask_rule", f"run {index + 1}")
        ),
    )
    single = len(results) == 1
    figure = new_figure(6.4 if single else 8.4, 4.4)
    axes = figure.add_subplot()
    sparsities = set()
    for index, result in enumerate(results):
        for mode_index, mode in enumerate(PRUNING_MODES):
            points = result.get(mode) or {}
            keys = sorted(points, key=float)
            sparsities.update(float(key) for key in keys)
            linestyle, marker = _MODE_STYLES[mode]
            if keys:
                axes.plot([float(key) for key in keys], [points[key]["accuracy"] for key in keys],
                          linestyle=linestyle, marker=marker, label=_mode_label(mode),
                          color=f"C{mode_index}" if single else f"C{index}")
        dense = result["dense_accuracy"]
        axes.axhline(dense, linestyle=_DENSE_STYLE, linewidth=1.2, label=f"dense ({dense:.3f})",
                     color="0.3" if single else f"C{index}", alpha=1.0 if single else 0.7)
    num_classes = results[0].get("settings", {}).get("num_classes")
    if num_classes:
        axes.axhline(1 / num_classes, linestyle=":", linewidth=1, color="0.55", label="chance")
    ticks = sorted(sparsities)
    if ticks:
        axes.set_xticks(ticks, [_percent(tick) for tick in ticks])
        margin = 0.04 * max(ticks[-1] - ticks[0], 0.1)
        axes.set_xlim(ticks[0] - margin, ticks[-1] + margin)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("Target sparsity (share of Conv2D and Dense weights pruned)")
    axes.set_ylabel("Test accuracy")
    subtitle = _pruning_subtitle(results)
    axes.set_title((title or _pruning_title(results)) + (f"\n{subtitle}" if subtitle else ""))
    if single:
        axes.legend(loc="best")
    else:
        run_handles = [
            Line2D([], [], color=f"C{index}", linewidth=3,
                   label=f"{label}, dense {result['dense_accuracy']:.3f}")
            for index, (label, result) in enumerate(zip(labels, results))
        ]
        mode_handles = [
            Line2D([], [], color="0.2", linestyle=_MODE_STYLES[mode][0],
                   marker=_MODE_STYLES[mode][1], label=_mode_label(mode))
            for mode in PRUNING_MODES
        ] + [Line2D([], [], color="0.2", linestyle=_DENSE_STYLE, label="dense")]
        if num_classes:
            mode_handles.append(Line2D([], [], color="0.55", linestyle=":", label="chance"))
        keys_beside(figure, run_handles, mode_handles, "mode")
    return figure


def _mode_label(mode):
    return mode.replace("_", "-")


def _percent(value):
    return f"{value:.0%}" if round(value * 100, 6) == round(value * 100) else f"{value:.1%}"


def _pruning_title(results):
    settings = results[0].get("settings", {})
    parts = [str(settings[key]) for key in ("dataset", "model") if settings.get(key)]
    if len(results) == 1 and settings.get("mask_rule"):
        parts.append(f"mask rule {settings['mask_rule']}")
    return "Accuracy after magnitude pruning" + (f" ({', '.join(parts)})" if parts else "")


def _pruning_subtitle(results):
    """What the runs share: test examples and the fine-tune's length."""
    parts = []
    examples = {result.get("num_examples") for result in results}
    if len(examples) == 1 and None not in examples:
        parts.append(f"{examples.pop()} test examples")
    fine_tunes = {
        (result["settings"].get("fine_tune_examples"), result["settings"].get("fine_tune_epochs"))
        for result in results
        if result.get("fine_tuned") and "settings" in result
    }
    if len(fine_tunes) == 1:
        num_examples, epochs = fine_tunes.pop()
        if num_examples and epochs:
            plural = "s" if epochs != 1 else ""
            parts.append(f"fine-tune: {num_examples} training examples, {epochs} epoch{plural}")
    return "; ".join(parts)
