"""Every figure of the evaluations, one run's or several runs' overlaid, in one look.

Each `plot_*` function takes results as the evaluators return them (or as read back
from `RUN/eval/*.json`, or saved maps) and returns a `matplotlib.figure.Figure`;
`save(figure, path)` writes it as a PNG atomically. The look and the helpers are in
`eval.figures.look`; the figures, by what they draw, beside it. Drawing imports
matplotlib and NumPy, never an evaluator or the libraries the evaluators adapt.
"""

from eval.figures.accuracy import plot_adversarial, plot_pruning
from eval.figures.curves import plot_curves
from eval.figures.forest import plot_forest
from eval.figures.gsnr import plot_gsnr_over_training, plot_quality
from eval.figures.look import save
from eval.figures.maps import plot_saliency, plot_saliency_comparison

__all__ = [
    "plot_adversarial",
    "plot_curves",
    "plot_forest",
    "plot_gsnr_over_training",
    "plot_pruning",
    "plot_quality",
    "plot_saliency",
    "plot_saliency_comparison",
    "save",
]
