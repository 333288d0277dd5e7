"""GSNR of a trained run per layer and each mask point's kept fraction: `--evals=quality`.

The estimator, its standard error and what the GSNR means live in
`gradmask_tf.quality` (gradient quality, METHOD.md section 4); this module runs it on
a run's probe batch with the masks active (the gradients the optimizer receives),
records its settings and adds the GSNR logged during training. `python -m eval` names
this evaluation `quality` (`RUN/eval/quality.json` and `.png`). GSNR is a secondary
metric: it describes, it decides no claim. Its figures compare only between probes of
the same size (examples and micro-batches).
"""

import numpy as np

from eval import checks
from gradmask_tf import quality
from gradmask_tf.versions import library_versions

SETTINGS = {
    "estimator": (
        "GSNR_j = (mu^2 - s2 / m) / (b * s2) per parameter j, with mu and s2 the mean and "
        "variance (ddof 1) of its m micro-batch gradients of b examples; for Gaussian "
        "micro-batch gradients E = (m - 1) / (m - 3) * truth + 2 / ((m - 3) m b)"
    ),
    "left_out": (
        "parameters whose gradient does not vary over the micro-batches: zero on every "
        "one (share_without_gradient) or the same non-zero or non-finite value "
        "(share_without_noise)"
    ),
    "model_figures": "gsnr: mean over parameters; gsnr_mean_of_layer_medians",
    "standard_error": "delete-one jackknife over micro-batches",
    "masks": "active (training=True: the gradients the optimizer receives)",
    "random_draws": (
        "fixed within the probe: seed generators (random rule, matched control, dropout) "
        "and other non-trainable variables restored before each micro-batch"
    ),
    "probe": "the first examples of the training split",
    "role": "secondary metric: describes the gradients, decides no claim",
}


def _json_number(value):
    return float(value) if np.isfinite(value) else None


def evaluate_gsnr(model, data, *, num_micro_batches=quality.NUM_MICRO_BATCHES, history=None):
    """GSNR of a trained model on a fixed probe batch, masks active as in training.

    Args:
      model: A Keras model with logits outputs.
      data: `(images, labels)` NumPy arrays: the probe batch (the first
        `gradmask_tf.quality.NUM_PROBE_EXAMPLES` examples of the training split for
        figures that compare).
      num_micro_batches: Micro-batches m the probe is split into (>= 2, with >= 2
        examples each). Defaults to `gradmask_tf.quality.NUM_MICRO_BATCHES`.
      history: The run's history rows (`gradmask_tf.runs.read_history`), whose
        `gsnr` column (`train.py --gsnr_every`) becomes `training_curve`. Defaults
        to None.

    Returns:
      `{"gsnr": mean over parameters, "gsnr_standard_error": se,
      "gsnr_mean_of_layer_medians": g, "gsnr_mean_of_layer_medians_standard_error":
      se, "share_without_gradient": s, "share_without_noise": s, "num_parameters": p,
      "per_layer": {layer: median}, "per_layer_mean": {layer: mean},
      "per_layer_share_without_gradient": {layer: share}, "kept_fraction": {mask
      point: fraction}, "micro_batches": m, "micro_batch_size": b, "num_examples": n,
      "settings": {...}}` (None where no parameter has a GSNR), and
      `"training_curve": {epoch: gsnr}` where the history logged one.

    Raises:
      ValueError: If the probe is too small for `num_micro_batches` (see
        `gradmask_tf.quality.gsnr`).
    """
    images, labels = checks.pair(data)
    result = quality.gsnr(model, images, labels, num_micro_batches=num_micro_batches)
    for name, value in result.items():
        if name.startswith("gsnr"):
            result[name] = _json_number(value)
    for name in ("per_layer", "per_layer_mean"):
        result[name] = {layer: _json_number(value) for layer, value in result[name].items()}
    result["settings"] = {**SETTINGS, "library_versions": library_versions()}
    curve = {
        str(row["epoch"]): row["gsnr"]
        for row in history or ()
        if np.isfinite(row.get("gsnr", np.nan))
    }
    if curve:
        result["training_curve"] = curve
    return result
