"""Every figure of the evaluations, one run's or several runs' overlaid, in one style.

Each `plot_*` function takes results as the evaluators return them (or as read back
from `RUN/eval/*.json`) and returns a `matplotlib.figure.Figure`, built with the
object API: no pyplot, no global state, nothing drawn on a display. `save(figure,
path)` writes it as a PNG atomically. With several results each run has one colour,
and the keys (colour = run, line style = attack or mode) sit beside the axes.
"""

import functools
import textwrap

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from eval.adversarial import ATTACKS, ITERATIVE_ATTACKS, PGD_STEP_SIZE_RULE
from eval.pruning import MODES
from eval.saliency import METHODS, foreground_focus, object_pixels, object_share
from gradmask_tf.errors import invalid
from gradmask_tf.runs import atomic_write

DPI = 150
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": "small",
    "legend.frameon": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "0.9",
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
}
# The clean accuracy is dashed; no attack is. One style and marker per attack.
_ATTACK_LINESTYLES = ("-", "-.", ":", (0, (3, 1, 1, 1, 1, 1)))
_ATTACK_MARKERS = ("o", "s", "^", "D")
_MODE_STYLES = {"one_shot": ("-.", "o"), "fine_tuned": ("-", "s")}
_DENSE_STYLE = (0, (5, 3))
_COLORMAP = "inferno"
_OUTLINE = "#4dd2ff"


def save(figure, path):
    """Writes `figure` as a PNG at `path`: a temporary file, then a rename."""
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=DPI), binary=True)


def _styled(plot):
    """Draws with the project's style (matplotlib's `rc_context`, undone after)."""

    @functools.wraps(plot)
    def styled(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return styled


def _figure(width, height):
    """A Figure with a constrained layout and its own Agg canvas, outside pyplot."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _runs(results, labels, default_label):
    """`(results, labels)` as lists; `default_label(index, result, count)` fills in labels."""
    results = [results] if isinstance(results, dict) else list(results)
    if not results:
        raise invalid("results", "at least one result", results)
    if labels is None:
        count = len(results)
        labels = [default_label(index, result, count) for index, result in enumerate(results)]
    labels = list(labels)
    if len(labels) != len(results):
        raise invalid("labels", f"one label per result ({len(results)})", labels)
    return results, labels


def _keys_beside(figure, run_handles, style_handles, style_title):
    """Two keys right of the axes: colour = run, line style = `style_title`."""
    figure.legend(handles=run_handles, title="run", loc="outside right upper", alignment="left")
    figure.legend(
        handles=style_handles, title=style_title, loc="outside right lower", alignment="left"
    )


@_styled
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
    runs, labels = _runs(
        results, labels, lambda index, _, count: None if count == 1 else f"run {index + 1}"
    )
    several = len(runs) > 1
    figure = _figure(8.0 if several else 6.4, 4.4)
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
        _keys_beside(figure, run_handles, [*attack_handles.values(), clean_handle], "attack")
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
    return dict(linestyle=_ATTACK_LINESTYLES[index], marker=_ATTACK_MARKERS[index])


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


@_styled
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
    results, labels = _runs(
        results, labels,
        lambda index, result, _: str(
            result.get("settings", {}).get("mask_rule", f"run {index + 1}")
        ),
    )
    single = len(results) == 1
    figure = _figure(6.4 if single else 8.4, 4.4)
    axes = figure.add_subplot()
    sparsities = set()
    for index, result in enumerate(results):
        for mode_index, mode in enumerate(MODES):
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
            for mode in MODES
        ] + [Line2D([], [], color="0.2", linestyle=_DENSE_STYLE, label="dense")]
        if num_classes:
            mode_handles.append(Line2D([], [], color="0.55", linestyle=":", label="chance"))
        _keys_beside(figure, run_handles, mode_handles, "mode")
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


@_styled
def plot_forest(rows, title=None):
    """Paired differences with their intervals: one panel per metric, a line at zero.

    Args:
      rows: Dicts with `metric`, `rule`, `versus` (what the rule is compared with,
        e.g. "none" or "matched control"), and `mean`, `low`, `high`: the mean of the
        per-seed differences `rule - versus` and its interval. Panels follow the
        metrics' first appearance, rules run top to bottom in theirs, and each
        `versus` has one colour.
      title: Defaults to None ("Paired differences by seed, 95% t-intervals
        (unadjusted)").

    Returns:
      The `Figure`.

    Raises:
      ValueError: If `rows` is empty or a row lacks a key.
    """
    rows = list(rows)
    if not rows:
        raise invalid("rows", "at least one paired difference", rows)
    for row in rows:
        missing = [key for key in _FOREST_KEYS if key not in row]
        if missing:
            raise invalid("rows", f"dicts with {', '.join(_FOREST_KEYS)}", row)
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    rules = list(dict.fromkeys(row["rule"] for row in rows))
    versus = list(dict.fromkeys(row["versus"] for row in rows))
    num_columns = min(len(metrics), 3)
    num_rows = -(-len(metrics) // num_columns)
    figure = _figure(max(5.0, 3.2 * num_columns + 0.8),
                     1.2 + num_rows * (0.6 + 0.45 * len(rules)))
    axes = figure.subplots(num_rows, num_columns, squeeze=False, sharey=True)
    offsets = np.linspace(-0.15, 0.15, len(versus)) if len(versus) > 1 else [0.0]
    for ax, metric in zip(axes.flat, metrics):
        ax.axvline(0.0, color="0.3", linewidth=1.0, zorder=1)
        for row in rows:
            if row["metric"] != metric:
                continue
            index = versus.index(row["versus"])
            y = rules.index(row["rule"]) + offsets[index]
            error = [[row["mean"] - row["low"]], [row["high"] - row["mean"]]]
            ax.errorbar(row["mean"], y, xerr=error, color=f"C{index}",
                        marker=_ATTACK_MARKERS[index % len(_ATTACK_MARKERS)], capsize=3,
                        linestyle="none", zorder=3)
        ax.set_title(metric)
        ax.set_xlabel("paired difference")
        ax.grid(axis="y", visible=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(range(len(rules)), rules)
    axes[0, 0].set_ylim(len(rules) - 0.5, -0.5)
    handles = [
        Line2D([], [], color=f"C{index}", marker=_ATTACK_MARKERS[index % len(_ATTACK_MARKERS)],
               linestyle="none", label=f"rule − {name}")
        for index, name in enumerate(versus)
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    figure.suptitle(title or "Paired differences by seed, 95% t-intervals (unadjusted)")
    return figure


_FOREST_KEYS = ("metric", "rule", "versus", "mean", "low", "high")


@_styled
def plot_saliency(images, maps_by_label, *, title=None, max_images=8, row_labels=None):
    """Saliency maps side by side: one row per image, one column per panel.

    Each heatmap is scaled to its own maximum, with the object's outline (pixels > 0)
    over it and the image's foreground focus in its corner. Column titles give the
    panel's mean focus over all the images passed (not only those drawn); the
    caption, its chance level.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      maps_by_label: `{label: maps}` or, to compare runs on the same images,
        `{run: {method: maps}}`; each `maps` a non-negative array `[N, H, W]`.
        Panels follow dict order.
      title: Defaults to None (no title).
      max_images: Rows to draw, the first images. Defaults to 8.
      row_labels: A label per image, left of each row. Defaults to None.

    Returns:
      The `Figure`.

    Raises:
      ValueError: If the maps do not match the images or an argument is invalid.
    """
    images = np.asarray(images)
    panels = _panels(maps_by_label, images.shape[:3])
    if not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise invalid("max_images", "an integer >= 1", max_images)
    if row_labels is not None and len(row_labels) != len(images):
        raise invalid("row_labels", f"{len(images)} labels, one per image", row_labels)
    focus = [foreground_focus(maps, images) for _, maps in panels]
    num_rows = min(int(max_images), len(images))
    figure = _figure(1.3 * (1 + len(panels)) + 0.4, 1.3 * num_rows + 1.6)
    axes = figure.subplots(num_rows, 1 + len(panels), squeeze=False)
    objects = object_pixels(images)
    for row in range(num_rows):
        _draw_image(axes[row, 0], images[row])
        if row_labels is not None:
            axes[row, 0].set_ylabel(str(row_labels[row]), fontsize=8)
        for column, (_, maps) in enumerate(panels, start=1):
            heatmap = _draw_heatmap(
                axes[row, column], maps[row], objects[row], focus[column - 1][row]
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].set_title("image", fontsize=8)
    for column, ((heading, _), values) in enumerate(zip(panels, focus), start=1):
        mean = np.nanmean(values) if np.isfinite(values).any() else np.nan
        axes[0, column].set_title(f"{heading}\nfocus {mean:.2f}", fontsize=8)
    if title:
        figure.suptitle(title)
    colorbar = figure.colorbar(heatmap, ax=axes[-1, 1:].tolist(), orientation="horizontal",
                               fraction=0.5, aspect=40, shrink=0.8)
    colorbar.set_label("saliency / map maximum", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    caption = (
        "Focus: share of the map on object pixels (outlined), per image and mean over "
        f"{len(images)} images; chance (object share) {object_share(images).mean():.2f}."
    )
    figure.supxlabel(textwrap.fill(caption, int(figure.get_figwidth() * 15)), fontsize=7)
    return figure


def _panels(maps_by_label, shape):
    """`[(heading, maps)]` from `{label: maps}` or `{run: {method: maps}}`."""
    if not maps_by_label:
        raise invalid("maps_by_label", "a non-empty dict", maps_by_label)
    nested = [isinstance(value, dict) for value in maps_by_label.values()]
    if any(nested) and not all(nested):
        raise invalid("maps_by_label", "either {label: maps} or {run: {method: maps}}, not a mix",
                      list(maps_by_label))
    if all(nested):
        panels = [(f"{run}\n{method}", maps) for run, by_method in maps_by_label.items()
                  for method, maps in by_method.items()]
    else:
        panels = [(str(label).replace(" / ", "\n"), maps) for label, maps in maps_by_label.items()]
    for heading, maps in panels:
        if np.shape(maps) != shape:
            raise invalid("maps_by_label", f"maps of shape {shape} for the images",
                          f"{heading}: array of shape {np.shape(maps)}")
    return [(heading, np.asarray(maps)) for heading, maps in panels]


def _draw_image(ax, image):
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(np.clip(image, 0.0, 1.0))


def _draw_heatmap(ax, saliency, objects, focus):
    """The map scaled to its maximum, the object's outline and the focus value."""
    saliency = np.asarray(saliency, np.float64)
    peak = np.nanmax(saliency) if np.isfinite(saliency).any() else 0.0
    heatmap = ax.imshow(saliency / peak if peak > 0 else np.zeros_like(saliency),
                        cmap=_COLORMAP, vmin=0.0, vmax=1.0)
    if objects.any() and not objects.all():
        # The contour of an 8x upsampled mask follows the pixels' edges.
        height, width = objects.shape
        ax.contour(np.kron(objects.astype(np.float32), np.ones((8, 8))), levels=[0.5],
                   origin="upper", extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                   colors=_OUTLINE, linewidths=0.5, alpha=0.9)
    ax.text(0.97, 0.03, "n/a" if np.isnan(focus) else f"{focus:.2f}", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=7, color="white",
            bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.5, lw=0))
    return heatmap


def plot_saliency_comparison(saved_by_run, *, title=None, max_images=8):
    """Several runs' saved maps of the same images side by side (`plot_saliency`).

    Args:
      saved_by_run: `{run label: saved}`, each `saved` a mapping with `images`,
        `labels` and one `[N, H, W]` array per method: a `saliency_maps.npz` read
        with `np.load` (see `eval.saliency.save_maps`). Runs must share their first
        images; the figure uses the images all runs have.
      title: Defaults to None.
      max_images: Rows to draw. Defaults to 8.

    Returns:
      The `Figure`.

    Raises:
      ValueError: If the runs saw different images or hold no maps.
    """
    if not saved_by_run:
        raise invalid("saved_by_run", "a non-empty dict {run label: saved maps}", {})
    runs = {label: dict(saved) for label, saved in saved_by_run.items()}
    for label, saved in runs.items():
        if "images" not in saved or not any(method in saved for method in METHODS):
            raise invalid("saved_by_run", "images and the maps of at least one method per run",
                          f"{label}: {', '.join(saved) or 'nothing'}")
    num_images = min(len(saved["images"]) for saved in runs.values())
    (first_label, first), *_ = runs.items()
    images = np.asarray(first["images"][:num_images])
    for label, saved in runs.items():
        if not np.array_equal(np.asarray(saved["images"][:num_images]), images):
            raise ValueError(
                f"Runs {first_label!r} and {label!r} have maps of different images; compare "
                "runs evaluated on the same test examples."
            )
    maps = {
        label: {
            method: np.asarray(saved[method][:num_images]) for method in METHODS if method in saved
        }
        for label, saved in runs.items()
    }
    labels = first.get("labels")
    row_labels = None if labels is None else [f"label {int(v)}" for v in labels[:num_images]]
    return plot_saliency(images, maps, title=title, max_images=max_images, row_labels=row_labels)


@_styled
def plot_quality(results, labels=None, title=None):
    """Each layer's median GSNR (bars) and, where logged, the GSNR over training.

    The bars use a symmetric log scale, linear within 1/n for a probe of n examples
    (one parameter's GSNR below it is within the estimator's noise), since a
    layer's median may read below zero. The
    legend gives the model figures with their jackknife standard errors. GSNR is a
    secondary metric, and figures compare only between probes of the same size.

    Args:
      results: One `evaluate_quality` result or a sequence of them.
      labels: One name per result. Defaults to None ("model").
      title: Defaults to None (no title).

    Returns:
      The `Figure`.
    """
    results, labels = _runs(results, labels, lambda *_: "model")
    has_curve = any("training_curve" in result for result in results)
    figure = _figure(12 if has_curve else 7, 4.2)
    bars, *curve_axes = figure.subplots(1, 2 if has_curve else 1, squeeze=False)[0]
    layers = list(dict.fromkeys(name for result in results for name in result["per_layer"]))
    width = 0.8 / len(results)
    drawn = []
    for index, (result, label) in enumerate(zip(results, labels)):
        medians = [result["per_layer"].get(name) for name in layers]
        medians = [np.nan if value is None else value for value in medians]
        drawn += medians
        bars.bar(np.arange(len(layers)) + index * width - 0.4 + width / 2, medians, width,
                 label=f"{label}: {_model_gsnr(result)}")
    sizes = [result["num_examples"] for result in results if result.get("num_examples")]
    magnitudes = [abs(value) for value in drawn if np.isfinite(value) and value]
    bars.set_yscale("symlog", linthresh=1 / max(sizes) if sizes else min(magnitudes, default=1e-6))
    bars.axhline(0, color="black", linewidth=0.8)
    bottom, top = bars.get_ylim()
    bars.set_ylim(bottom, top * 10 if top > 0 else top)  # a decade above the bars for the key
    bars.set_xticks(np.arange(len(layers)), layers, rotation=45, ha="right")
    bars.set_ylabel("median GSNR of the layer's parameters")
    probes = sorted({(r.get("num_examples"), r.get("micro_batches")) for r in results} - {(None, None)})
    size = "; ".join(f"{n} examples in {m} micro-batches" for n, m in probes)
    bars.set_title("GSNR per layer (masks active" + (f"; {size}" if size else "") +
                   "), a secondary metric")
    bars.legend(title="model: mean; mean of layer medians (± jackknife SE)", loc="best",
                fontsize="small", title_fontsize="small")
    if has_curve:
        curves = {label: [(int(epoch), value) for epoch, value in result["training_curve"].items()]
                  for result, label in zip(results, labels) if result.get("training_curve")}
        _draw_gsnr_curves(curve_axes[0], curves, "GSNR during training")
    if title:
        figure.suptitle(title)
    return figure


def _model_gsnr(result):
    """The model figures of one quality result, each with its standard error if known."""
    parts = []
    for name in ("gsnr", "gsnr_mean_of_layer_medians"):
        value, error = result.get(name), result.get(f"{name}_standard_error")
        if value is None or not np.isfinite(value):
            parts.append("–")
        elif error is None or not np.isfinite(error):
            parts.append(f"{value:.3g}")
        else:
            parts.append(f"{value:.3g} ± {error:.2g}")
    return "; ".join(parts)


@_styled
def plot_gsnr_over_training(curves, title="Gradient quality during training (mean over seeds)"):
    """The whole model's GSNR against the epoch, one line per run or group.

    Args:
      curves: `{label: [(epoch, gsnr), ...]}`.
      title: Defaults to "Gradient quality during training (mean over seeds)".

    Returns:
      The `Figure`.
    """
    figure = _figure(7, 4.2)
    _draw_gsnr_curves(figure.add_subplot(), curves, title)
    return figure


def _draw_gsnr_curves(axes, curves, title):
    for label, curve in curves.items():
        if curve:
            axes.plot(*zip(*curve), marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("GSNR (whole model, probe batch)")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.legend()
