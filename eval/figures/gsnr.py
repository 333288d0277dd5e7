"""The GSNR figures: the `quality` evaluation's per-layer bars, and GSNR over training."""

import numpy as np
from matplotlib.ticker import MaxNLocator

from eval.figures.look import new_figure, runs_and_labels, styled


@styled
def plot_quality(results, labels=None, title=None):
    """Each layer's median GSNR (bars) and, where logged, the GSNR over training.

    The bars use a symmetric log scale, linear within 1/n for a probe of n examples
    (one parameter's GSNR below it is within the estimator's noise), since a
    layer's median may read below zero. The
    legend gives the model figures with their jackknife standard errors. GSNR is a
    secondary metric, and figures compare only between probes of the same size.

    Args:
      results: One `eval.gsnr.evaluate_gsnr` result or a sequence of them.
      labels: One name per result. Defaults to None ("model").
      title: Defaults to None (no title).

    Returns:
      The `Figure`.
    """
    results, labels = runs_and_labels(results, labels, lambda *_: "model")
    has_curve = any("training_curve" in result for result in results)
    figure = new_figure(12 if has_curve else 7, 4.2)
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


@styled
def plot_gsnr_over_training(curves, title="Gradient quality during training (mean over seeds)"):
    """The whole model's GSNR against the epoch, one line per run or group.

    Args:
      curves: `{label: [(epoch, gsnr), ...]}`.
      title: Defaults to "Gradient quality during training (mean over seeds)".

    Returns:
      The `Figure`.
    """
    figure = new_figure(7, 4.2)
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
