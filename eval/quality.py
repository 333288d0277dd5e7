"""Gradient quality evaluation: GSNR per layer and kept fractions, with a figure.

The computation lives in `gradmask_tf.quality`; this module runs it on a run's probe
batch and draws it.
"""

import numpy as np

from eval import figures
from gradmask_tf import quality


def evaluate_quality(
    model,
    data,
    *,
    num_micro_batches=8,
    history=None,
    figure_path=None,
    title=None,
):
    """GSNR of a trained model on a fixed probe batch, masks active as in training.

    Args:
      model: A Keras model with logits outputs.
      data: `(images, labels)` NumPy arrays: the probe batch (the first examples of
        the training split).
      num_micro_batches: Micro-batches m the probe is split into. Defaults to 8.
      history: The run's history rows, to draw the GSNR logged during training
        (`train.py --gsnr_every`), or None.
      figure_path: Where to write the figure (PNG), or None.
      title: The figure's title.

    Returns:
      `{"gsnr": g, "per_layer": {...}, "kept_fraction": {...}, "micro_batches": m,
      "micro_batch_size": b, "num_examples": n, "settings": {...}}`.

    References:
      Liu et al. "Understanding Why Neural Networks Generalize Well Through GSNR of
      Parameters". ICLR 2020.
    """
    images, labels = data
    result = quality.gsnr(model, images, labels, num_micro_batches=num_micro_batches)
    result["num_examples"] = result["micro_batches"] * result["micro_batch_size"]
    result["settings"] = {
        "estimator": "mu^2 / (b * var + eps) over micro-batch gradients (unbiased var)",
        "epsilon": quality.EPSILON,
        "masks": "active (training=True: the gradients the optimizer receives)",
        "probe": "the first examples of the training split",
        "library_versions": figures.versions(),
    }
    if history:
        curve = [
            (row["epoch"], row["gsnr"]) for row in history if np.isfinite(row.get("gsnr", np.nan))
        ]
        if curve:
            result["training_curve"] = {str(epoch): value for epoch, value in curve}
    if figure_path is not None:
        plot_quality([result], figure_path, title=title)
    return result


def plot_quality(results, path, labels=None, title=None):
    """Per-layer GSNR (bars, log scale) and, where logged, GSNR over training."""
    plt = figures.pyplot()
    labels = labels or [None] * len(results)
    has_curve = any("training_curve" in result for result in results)
    fig, axes = plt.subplots(1, 2 if has_curve else 1, figsize=(12 if has_curve else 7, 4.2))
    axes = np.atleast_1d(axes)
    layers = list(dict.fromkeys(name for r in results for name in r["per_layer"]))
    width = 0.8 / len(results)
    for index, (result, label) in enumerate(zip(results, labels)):
        values = [result["per_layer"].get(name, np.nan) for name in layers]
        axes[0].bar(
            np.arange(len(layers)) + index * width - 0.4 + width / 2,
            values,
            width,
            label=f"{label or 'model'} (all: {result['gsnr']:.3g})",
        )
    axes[0].set_yscale("log")
    axes[0].set_xticks(np.arange(len(layers)), layers, rotation=45, ha="right")
    axes[0].set_ylabel("mean GSNR of the layer's parameters")
    axes[0].set_title("GSNR per layer (masks active, probe batch)")
    axes[0].legend(fontsize=8)
    if has_curve:
        for result, label in zip(results, labels):
            curve = result.get("training_curve")
            if curve:
                axes[1].plot(
                    [int(e) for e in curve], list(curve.values()), marker="o", label=label or "model"
                )
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("GSNR (whole model)")
        axes[1].set_title("GSNR during training")
        axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    figures.save(fig, path)

