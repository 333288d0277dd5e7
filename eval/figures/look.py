"""The one look of every figure, and the helpers each figure is built with.

A figure is a `matplotlib.figure.Figure` built with the object API on its own Agg
canvas: no pyplot, no global state, nothing drawn on a display. Each `plot_*` draws
inside `styled` (the project's rc settings, undone after), and `save` writes it as a
PNG atomically. With several results each run has one colour, and the keys (colour =
run, line style = attack or mode) sit beside the axes (`keys_beside`).
"""

import functools

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradmask_tf.errors import invalid
from gradmask_tf.files import atomic_write

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
# One marker per attack, and per comparison in the forest plot.
MARKERS = ("o", "s", "^", "D")


def save(figure, path):
    """Writes `figure` as a PNG at `path`: a temporary file, then a rename."""
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=DPI), binary=True)


def styled(plot):
    """Draws with the project's style (matplotlib's `rc_context`, undone after)."""

    @functools.wraps(plot)
    def styled_plot(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return styled_plot


def new_figure(width, height):
    """A Figure with a constrained layout and its own Agg canvas, outside pyplot."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def runs_and_labels(results, labels, default_label):
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


def keys_beside(figure, run_handles, style_handles, style_title):
    """Two keys right of the axes: colour = run, line style = `style_title`."""
    figure.legend(handles=run_handles, title="run", loc="outside right upper", alignment="left")
    figure.legend(
        handles=style_handles, title=style_title, loc="outside right lower", alignment="left"
    )
