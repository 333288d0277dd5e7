"""The forest plot of paired differences by seed, which `eval.compare` draws first."""

import numpy as np
from matplotlib.lines import Line2D

from eval.figures.look import MARKERS, new_figure, styled
from gradmask_tf.errors import invalid

_FOREST_KEYS = ("metric", "rule", "versus", "mean", "low", "high")


@styled
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
    figure = new_figure(max(5.0, 3.2 * num_columns + 0.8),
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
                        marker=MARKERS[index % len(MARKERS)], capsize=3,
                        linestyle="none", zorder=3)
        ax.set_title(metric)
        ax.set_xlabel("paired difference")
        ax.grid(axis="y", visible=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(range(len(rules)), rules)
    axes[0, 0].set_ylim(len(rules) - 0.5, -0.5)
    handles = [
        Line2D([], [], color=f"C{index}", marker=MARKERS[index % len(MARKERS)],
               linestyle="none", label=f"rule − {name}")
        for index, name in enumerate(versus)
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    figure.suptitle(title or "Paired differences by seed, 95% t-intervals (unadjusted)")
    return figure
