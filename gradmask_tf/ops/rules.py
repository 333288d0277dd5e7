"""The threshold rules `mean`, `local` and `topk`, `rescale`, and `apply_rule`.

`apply_rule` applies any rule: the threshold rules here, the position rules of
`lateral.py` and the `random` rule, whose draw is that of `control.py`. Written in
`keras.ops`; the hard `mean` is one of TensorFlow's fast paths (`backend.fast_path`).
"""

import keras

from gradmask_tf.mask_params import POSITION_RULES
from gradmask_tf.ops import backend
from gradmask_tf.ops.config import num_kept
from gradmask_tf.ops.control import draw_uniform
from gradmask_tf.ops.lateral import lateral_keep, log_keep
from gradmask_tf.ops.neighbourhoods import kth_largest_per_row, neighbourhood_axes, spatial_rows

# Hard thresholds of `mean` and `local` are lowered by 2^-17 (relative 7.6e-6): a
# float32 mean of n equal values can round above them (it did for 42% of constant
# maps tried), which would drop a whole constant map, for instance every map right
# before global average pooling, that exact arithmetic keeps whole.
_ROUNDING_SLACK = 1.0 - 2.0**-17


def _threshold_mask(g, magnitude, tau, soft):
    """Applies a threshold; returns (masked gradient, float32 keep indicator)."""
    if soft:
        # sign(g) * max(|g| - tau, 0) = g - clip(g, -tau, tau): two fused passes.
        # (No rounding slack: at a tie the shrunk value is zero either way.)
        tau = keras.ops.cast(tau, g.dtype)
        masked = g - keras.ops.clip(g, -tau, tau)
        keep = keras.ops.cast(magnitude > keras.ops.cast(tau, "float32"), "float32")
        return masked, keep
    # `g * 1[|g| >= tau]` rather than a select: one pass less on the CPU, and a NaN
    # in g stays NaN (NaN * 0 = NaN), so it is passed on, never hidden.
    keep = keras.ops.cast(magnitude >= tau, "float32")
    same_dtype = keras.backend.standardize_dtype(g.dtype) == "float32"
    masked = g * (keep if same_dtype else keras.ops.cast(keep, g.dtype))
    return masked, keep


def _mean_factor(config):
    """alpha, lowered by the rounding slack for the hard `mean` and `local` rules."""
    return config.alpha if config.soft else config.alpha * _ROUNDING_SLACK


# Compiled with XLA on TensorFlow: the mean of |g| and the select each fuse into one pass over the
# gradient; unfused, TensorFlow runs five kernels (measured on the CPU: 3.6 ms
# against 4.9 ms for a [128, 28, 28, 32] float32 gradient).
@backend.fast_path
def _mean_mask(g, *, factor, axes):
    """The hard `mean` rule: `(g * 1[|g| >= tau], tau)`, tau in float32."""
    magnitude = keras.ops.abs(keras.ops.cast(g, "float32"))
    tau = factor * keras.ops.mean(magnitude, axis=axes, keepdims=True)
    # Dropped where |g| < tau, as a select: a NaN in g (NaN < tau is false) is passed
    # on, never hidden (XLA would turn `g * 1[|g| >= tau]` into a select that hides it).
    # A feature map with a NaN has a NaN tau and passes whole.
    return keras.ops.where(magnitude < tau, keras.ops.zeros_like(g), g), tau


def restore_l1_norm(g, masked, axes):
    """Scales `masked` by ||g||_1 / ||masked||_1 per neighbourhood (no-op if zero)."""
    total = keras.ops.sum(keras.ops.abs(keras.ops.cast(g, "float32")), axis=axes, keepdims=True)
    kept = keras.ops.sum(
        keras.ops.abs(keras.ops.cast(masked, "float32")), axis=axes, keepdims=True
    )
    scale = keras.ops.where(kept > 0, total / keras.ops.where(kept > 0, kept, 1.0), 1.0)
    return masked * keras.ops.cast(scale, masked.dtype)


def _topk_kth_value(magnitude, keep_fraction):
    """The `ceil(q * n)`-th largest magnitude along the last axis, n its non-zeros."""
    size = magnitude.shape[-1]
    # num_kept for every possible n, looked up per neighbourhood (n = 0 reads 1: the
    # row is all zero, so any threshold keeps it zero).
    budget = keras.ops.convert_to_tensor(
        [num_kept(keep_fraction, n) for n in range(size + 1)], "int32"
    )
    num_nonzero = keras.ops.sum(keras.ops.cast(magnitude != 0, "int32"), axis=-1)
    k = keras.ops.take(budget, num_nonzero)
    return kth_largest_per_row(magnitude, k, num_kept(keep_fraction, size))


def _topk_threshold(magnitude, keep_fraction, scope):
    rank = len(magnitude.shape)
    if rank == 4 and scope == "spatial":
        height, width = magnitude.shape[1], magnitude.shape[2]
        if height is None or width is None:
            raise ValueError(
                "The `topk` rule needs static spatial dimensions. "
                f"Received a gradient of shape {magnitude.shape}."
            )
        kth = _topk_kth_value(spatial_rows(magnitude), keep_fraction)
        return kth[:, None, None, :]
    if magnitude.shape[-1] is None:
        raise ValueError(
            "The `topk` rule needs a static last dimension. "
            f"Received a gradient of shape {magnitude.shape}."
        )
    return _topk_kth_value(magnitude, keep_fraction)[..., None]


def apply_rule(g, g32, rule, config, seed):
    """Applies `rule`; returns `(masked, keep, axes)`.

    The rule's output before `rescale`, its float32 keep indicator (per entry, or
    per position `[N, H, W, 1]` for `lateral` and `log`; for the hard `mean`, a
    function that computes it, called only where it is needed) and the axes of the
    neighbourhood that `rescale` uses.
    """
    rank = len(g.shape)
    axes = neighbourhood_axes(rank, config.scope)
    if rule == "mean" and not config.soft:
        masked, tau = _mean_mask(g, factor=_mean_factor(config), axes=tuple(axes))
        # The keep indicator only where the statistics or the control need it.
        keep = lambda: keras.ops.cast(  # noqa: E731
            keras.ops.logical_not(keras.ops.abs(g32) < tau), "float32"
        )
        return masked, keep, axes
    if rule == "mean":
        magnitude = keras.ops.abs(g32)
        tau = _mean_factor(config) * keras.ops.mean(magnitude, axis=axes, keepdims=True)
        masked, keep = _threshold_mask(g, magnitude, tau, config.soft)
    elif rule == "local":
        magnitude = keras.ops.abs(g32)
        # SAME average pooling does not count the padding: a true local mean.
        local_mean = keras.ops.average_pool(
            magnitude, config.kernel_size, strides=1, padding="same"
        )
        masked, keep = _threshold_mask(
            g, magnitude, _mean_factor(config) * local_mean, config.soft
        )
        axes = (1, 2)
    elif rule == "topk":
        magnitude = keras.ops.abs(g32)
        tau = _topk_threshold(magnitude, config.keep_fraction, config.scope)
        masked, keep = _threshold_mask(g, magnitude, tau, config.soft)
    elif rule in POSITION_RULES:
        if rule == "lateral":
            keep = lateral_keep(
                g32, config.zone_size, config.inhibition_base, config.inhibition_strength
            )
        else:
            keep = log_keep(g32, config.zone_size, config.sigma)
        masked = g * keras.ops.cast(keep, g.dtype)
        axes = (1, 2)
    else:  # random: a mask of the requested sparsity that knows nothing.
        uniform = draw_uniform(g, "float32", config, seed)
        keep = keras.ops.cast(uniform < config.keep_fraction, "float32")
        masked = g * keras.ops.cast(keep, g.dtype)
        axes = (1, 2) if rank == 4 else (1,)
    return masked, keep, axes
