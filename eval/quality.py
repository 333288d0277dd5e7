"""Gradient quality of a trained run: GSNR per layer and each mask point's kept fraction.

The computation, and what the GSNR means, live in `gradmask_tf.quality`; this module
runs it on a run's probe batch with the masks active (the gradients the optimizer
receives) and adds the GSNR logged during training.
"""

import numpy as np

from eval import checks
from gradmask_tf import quality
from gradmask_tf.versions import library_versions


def evaluate_quality(model, data, *, num_micro_batches=8, history=None):
    """GSNR of a trained model on a fixed probe batch, masks active as in training.

    Args:
      model: A Keras model with logits outputs.
      data: `(images, labels)` NumPy arrays: the probe batch (the first examples of
        the training split).
      num_micro_batches: Micro-batches m the probe is split into. Defaults to 8.
      history: The run's history rows (`gradmask_tf.runs.read_history`), whose
        `gsnr` column (`train.py --gsnr_every`) becomes `training_curve`. Defaults
        to None.

    Returns:
      `{"gsnr": g, "per_layer": {...}, "kept_fraction": {...}, "micro_batches": m,
      "micro_batch_size": b, "num_examples": n, "settings": {...}}`, and
      `"training_curve": {epoch: gsnr}` where the history logged one.
    """
    images, labels = checks.pair(data)
    result = quality.gsnr(model, images, labels, num_micro_batches=num_micro_batches)
    result["num_examples"] = result["micro_batches"] * result["micro_batch_size"]
    result["settings"] = {
        "estimator": "mu^2 / (b * var + eps) over micro-batch gradients (unbiased var)",
        "epsilon": quality.EPSILON,
        "masks": "active (training=True: the gradients the optimizer receives)",
        "probe": "the first examples of the training split",
        "library_versions": library_versions(),
    }
    curve = {
        str(row["epoch"]): row["gsnr"]
        for row in history or ()
        if np.isfinite(row.get("gsnr", np.nan))
    }
    if curve:
        result["training_curve"] = curve
    return result
