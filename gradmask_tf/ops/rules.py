"""The threshold rules `mean`, `local` and `topk`, `rescale`, and `apply_rule`.

`apply_rule` applies any rule: the threshold rules here, the position rules of
`lateral.py` and the `random` rule, whose draw is that of `control.py`. Written in
`keras.ops`; the hard `mean` is one of TensorFlow's fast paths (`backend.fast_path`).

Non-finite entries (METHOD.md §2, "Non-finite entries and extreme values"): every
rule passes them on as they are and computes its threshold as if they were zero;
its float32 sums add magnitudes scaled down first, so they cannot overflow.
"""

import math

import keras
import numpy as np

from gradmask_tf.mask_params import POSITION_RULES
from gradmask_tf.ops import backend
from gradmask_tf.ops.config import num_kept
from gradmask_tf.ops.control import draw_uniform
from gradmask_tf.ops.lateral import lateral_keep, log_keep, position_mask
from gradmask_tf.ops.neighbourhoods import (
    FLOAT32_TINY,
    finite_magnitude,
    inverse_size,
    kth_largest_per_row,
    neighbourhood_axes,
    spatial_rows,
)

# Hard thresholds of `mean` and `local` are lowered by 2^-17 (relative 7.6e-6): a
# float32 mean of n equal values can round above them (it did for 42% of constant
# maps tried), which would drop a whole constant map, for instance every map right
# before global average pooling, that exact arithmetic keeps whole.
_ROUNDING_SLACK = 1.0 - 2.0**-17


def _threshold_mask(g, magnitude, tau, soft):
    """Applies a threshold; returns (masked gradient, float32 keep indicator).

    `magnitude` is `|g|` in float32 and `tau` a finite-entry threshold; every
    non-finite entry is passed on as it is.
    """
    if soft:
        # sign(g) * max(|g| - tau, 0) = g - clip(g, -tau, tau): two fused passes.
        # (No rounding slack: at a tie the shrunk value is zero either way.)
        tau_in_dtype = keras.ops.cast(tau, g.dtype)
        shrunk = g - keras.ops.clip(g, -tau_in_dtype, tau_in_dtype)
        # Non-finite entries as they are (inf - clip(inf) is NaN where tau is inf).
        masked = keras.ops.where(magnitude < np.inf, shrunk, g)
        keep = keras.ops.cast(magnitude > tau, "float32")
        return masked, keep
    # `g * 1[|g| >= tau]` rather than a select: one pass less on the CPU. Written
    # "not |g| < tau", it keeps every non-finite entry (NaN < tau is false), so a
    # NaN or an Inf is passed on (never NaN * 0, never hidden by XLA's select).
    keep = keras.ops.cast(keras.ops.logical_not(magnitude < tau), "float32")
    same_dtype = keras.backend.standardize_dtype(g.dtype) == "float32"
    masked = g * (keep if same_dtype else keras.ops.cast(keep, g.dtype))
    return masked, keep


def _mean_factor(config):
    """alpha, lowered by the rounding slack for the hard `mean` and `local` rules."""
    return config.alpha if config.soft else config.alpha * _ROUNDING_SLACK


def _mean_threshold(magnitude, factor, axes):
    """`factor * mean(|g|)` over `axes`, the non-finite entries counted as zero.

    Each magnitude is divided by the neighbourhood's size before the float32 sum
    (fused into the same pass), so the sum cannot overflow.
    """
    scale = factor * inverse_size(magnitude, axes)
    return keras.ops.sum(finite_magnitude(magnitude) * scale, axis=axes, keepdims=True)


# Compiled with XLA on TensorFlow: the mean of |g| and the select each fuse into one pass over the
# gradient; unfused, TensorFlow runs five kernels (measured on the CPU: 3.6 ms
# against 4.9 ms for a [128, 28, 28, 32] float32 gradient).
@backend.fast_path
def _mean_mask(g, *, factor, axes):
    """The hard `mean` rule: `(g * 1[|g| >= tau], tau)`, tau in float32."""
    magnitude = keras.ops.abs(keras.ops.cast(g, "float32"))
    tau = _mean_threshold(magnitude, factor, axes)
    # Dropped where |g| < tau, as a select: a non-finite entry (NaN < tau and
    # inf < tau are false) is passed on, never hidden (XLA would turn
    # `g * 1[|g| >= tau]` into a select that hides a NaN).
    return keras.ops.where(magnitude < tau, keras.ops.zeros_like(g), g), tau


def restore_l1_norm(g, masked, axes):
    """Scales `masked` by ||g||_1 / ||masked||_1 per neighbourhood, finite entries only.

    Left as it is where `masked` has no finite mass or the factor is beyond
    float32's range; the non-finite entries are passed on as they are. The factor
    multiplies in float32 (float64 for a float64 gradient), so it cannot overflow
    float16 on the way; a product beyond the dtype's range is +-inf.
    """
    magnitude = keras.ops.abs(keras.ops.cast(g, "float32"))
    unit = inverse_size(magnitude, axes)  # sums of |g| / n cannot overflow
    total = keras.ops.sum(finite_magnitude(magnitude) * unit, axis=axes, keepdims=True)
    kept = keras.ops.sum(
        finite_magnitude(keras.ops.abs(keras.ops.cast(masked, "float32"))) * unit,
        axis=axes,
        keepdims=True,
    )
    factor = total / kept
    factor = keras.ops.where(factor < np.inf, factor, 1.0)  # x / 0 and 0 / 0 included
    dtype = keras.backend.standardize_dtype(g.dtype)
    wide = "float64" if dtype == "float64" else "float32"
    scaled = keras.ops.cast(keras.ops.cast(masked, wide) * keras.ops.cast(factor, wide), dtype)
    if dtype == "float64":
        # A float64 entry beyond float32's range is non-finite in float32: as it is.
        # (Elsewhere the factor is positive and finite: +-inf and NaN stay as they are.)
        return keras.ops.where(magnitude < np.inf, scaled, masked)
    return scaled


def _local_threshold(magnitude, config):
    """`alpha * avg_k(|g|)`, padding not counted, the non-finite entries as zero."""
    # Scaled down by a power of two >= k^2 (exact) so that the pool's float32
    # window sums cannot overflow, then back up.
    scale = 2.0 ** -math.ceil(math.log2(config.kernel_size**2))
    # SAME average pooling does not count the padding: a true local mean.
    local_mean = keras.ops.average_pool(
        finite_magnitude(magnitude) * scale, config.kernel_size, strides=1, padding="same"
    )
    return (_mean_factor(config) / scale) * local_mean


def _topk_kth_value(magnitude, keep_fraction):
    """The `ceil(q * n)`-th largest magnitude along the last axis, n its non-zeros."""
    size = magnitude.shape[-1]
    # num_kept for every possible n, looked up per neighbourhood (n = 0 reads 1: the
    # row is all zero, so any threshold keeps it zero).
    budget = keras.ops.convert_to_tensor(
        [num_kept(keep_fraction, n) for n in range(size + 1)], "int32"
    )
    # Non-zero in float32: denormals count as zero, flushed or not.
    num_nonzero = keras.ops.sum(keras.ops.cast(magnitude >= FLOAT32_TINY, "int32"), axis=-1)
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
    neighbourhood that `rescale` uses. Every non-finite entry of `g` is passed on.
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
        tau = _mean_threshold(magnitude, _mean_factor(config), axes)
        masked, keep = _threshold_mask(g, magnitude, tau, config.soft)
    elif rule == "local":
        magnitude = keras.ops.abs(g32)
        masked, keep = _threshold_mask(
            g, magnitude, _local_threshold(magnitude, config), config.soft
        )
        axes = (1, 2)
    elif rule == "topk":
        magnitude = keras.ops.abs(g32)
        tau = _topk_threshold(finite_magnitude(magnitude), config.keep_fraction, config.scope)
        masked, keep = _threshold_mask(g, magnitude, tau, config.soft)
    elif rule in POSITION_RULES:
        if rule == "lateral":
            keep_of_magnitude = lambda magnitude: lateral_keep(  # noqa: E731
                magnitude, config.zone_size, config.inhibition_base, config.inhibition_strength
            )
        else:
            keep_of_magnitude = lambda magnitude: log_keep(  # noqa: E731
                magnitude, config.zone_size, config.sigma
            )
        masked, keep = position_mask(g, g32, rule, keep_of_magnitude)
        axes = (1, 2)
    else:  # random: a mask of the requested sparsity that knows nothing.
        uniform = draw_uniform(g, "float32", config, seed)
        # Non-finite entries are kept whatever the draw (inf * 0 would be NaN).
        drawn = keras.ops.logical_or(
            uniform < config.keep_fraction, keras.ops.logical_not(keras.ops.abs(g32) < np.inf)
        )
        keep = keras.ops.cast(drawn, "float32")
        masked = g * keras.ops.cast(keep, g.dtype)
        axes = (1, 2) if rank == 4 else (1,)
    return masked, keep, axes
