"""Training curves of several arms in a grid of cells, which `eval.grid` draws: per cell
and arm, the mean over seeds of one history column against the epoch, in a band from the
lowest to the highest seed."""

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from eval.figures.look import new_figure, styled
from gradmask_tf.errors import invalid

BAND = "min–max over seeds"
_CELL_KEYS = ("row", "column", "arms")


@styled
def plot_curves(cells, key, title=None):
    """One panel per cell, laid out by its row and column; one colour per arm.

    Args:
      cells: Dicts with `row` and `column` (the cell's place, e.g. its level of each of
        two factors: "max_train_examples=4000", "lr_schedule=constant") and `arms`:
        `{arm: [history, ...]}`, one history per seed, each a list of rows (dicts) with
        `epoch` and, where measured, `key`. Rows, columns and arms follow their first
        appearance; an arm keeps its colour in every panel, and a panel's title gives
        each arm's number of seeds.
      key: The history column drawn against the epoch, e.g. "memorisation".
      title: Defaults to None (`key`: mean over seeds, band min–max over seeds).

    Returns:
      The `Figure`.

    Raises:
      ValueError: If `cells` is empty, a cell lacks a key, two cells share a place, or
        no history has `key`.
    """
    cells = list(cells)
    if not cells:
        raise invalid("cells", "at least one cell", cells)
    for cell in cells:
        if any(name not in cell for name in _CELL_KEYS):
            raise invalid("cells", f"dicts with {', '.join(_CELL_KEYS)}", cell)
    places = [(cell["row"], cell["column"]) for cell in cells]
    if len(set(places)) != len(places):
        raise invalid("cells", "one cell per row and column", places)
    curves = [{arm: _curve(histories, key) for arm, histories in cell["arms"].items()}
              for cell in cells]
    if not any(curve for cell_curves in curves for curve, _ in cell_curves.values()):
        raise invalid("cells", f"at least one history with `{key}`", key)
    rows = list(dict.fromkeys(row for row, _ in places))
    columns = list(dict.fromkeys(column for _, column in places))
    arms = list(dict.fromkeys(arm for cell in cells for arm in cell["arms"]))
    figure = new_figure(0.8 + 3.6 * len(columns), 1.0 + 2.9 * len(rows))
    axes = figure.subplots(len(rows), len(columns), squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat:
        ax.set_visible(False)
    for (row, column), cell_curves in zip(places, curves):
        ax = axes[rows.index(row), columns.index(column)]
        _draw_cell(ax, cell_curves, arms, f"{row} · {column}")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:, 0]:
        ax.set_ylabel(key)
    handles = [Line2D([], [], color=f"C{index}", label=arm) for index, arm in enumerate(arms)]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    figure.suptitle(title or f"{key}: mean over seeds, band {BAND}")
    return figure


def _curve(histories, key):
    """`(rows of (epoch, mean, low, high), number of seeds with `key`)`."""
    by_epoch = {}
    count = 0
    for history in histories:
        points = [(int(row["epoch"]), row[key]) for row in history
                  if row.get(key) is not None and np.isfinite(row[key])]
        count += bool(points)
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(value)
    rows = [(epoch, np.mean(values), np.min(values), np.max(values))
            for epoch, values in sorted(by_epoch.items())]
    return rows, count


def _draw_cell(ax, cell_curves, arms, title):
    ax.set_visible(True)
    counts = []
    for arm, (rows, count) in cell_curves.items():
        counts.append(f"{arm} {count}")
        if not rows:
            continue
        epochs, means, lows, highs = (np.array(column) for column in zip(*rows))
        color = f"C{arms.index(arm)}"
        ax.fill_between(epochs, lows, highs, color=color, alpha=0.2, linewidth=0)
        ax.plot(epochs, means, color=color, marker="o", markersize=2.5)
    if not any(rows for rows, _ in cell_curves.values()):
        ax.text(0.5, 0.5, "no runs yet", transform=ax.transAxes, ha="center",
                va="center", color="0.4")
    ax.set_title(f"{title}\nseeds: {', '.join(counts)}")
