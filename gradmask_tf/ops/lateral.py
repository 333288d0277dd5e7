"""The position rules `lateral` and `log`: one spatial keep map shared by all channels.

Written in `keras.ops`; their small kernels are TensorFlow's fast paths
(`backend.fast_path`). Both work on the channel-pooled magnitude map
`m = sqrt(sum_c g^2)` of a rank-4 gradient (`position_mask`), and neither changes
when a sample's gradient is multiplied by a positive factor. `lateral` is LICNN's
lateral inhibition between positions; `log` keeps the positions where a zero-sum
Laplacian-of-Gaussian centre-surround response is >= 0.

References:
  Cao et al. "Lateral Inhibition-Inspired Convolutional Neural Network for Visual
  Attention and Saliency Detection". AAAI 2018 (the `lateral` rule).
"""

import keras
import numpy as np

from gradmask_tf.ops import backend
from gradmask_tf.ops.neighbourhoods import finite_magnitude

# Keeps an all-zero magnitude map at zero in the `lateral` rule instead of 0/0.
_TINY = float(np.finfo(np.float32).tiny)


def _lateral_weights(zone_size):
    """(d / l) * exp(-d / l) for each offset of the l x l zone; 0 at the centre."""
    half = zone_size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    distance = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    weights = distance / zone_size * np.exp(-distance / zone_size)
    return weights.reshape(-1).astype(np.float32)


# Squares of the channel norm kept well inside float32: the sample's largest at most
# 2^100 (so a sum over its positions cannot overflow) and at least 2^-40 (so the
# squares that underflow, below 2^-126, are below 2^-86 of it; an all-zero sample,
# which may be one whose squares all underflowed, takes the scaled branch).
_LARGEST_SQUARES = 2.0**100
_SMALLEST_SQUARES = 2.0**-40


def _check_static(g32, rule):
    if g32.shape[1] is None or g32.shape[2] is None:
        raise ValueError(
            f"The `{rule}` rule needs static spatial dimensions. "
            f"Received a gradient of shape {g32.shape}."
        )


def position_mask(g, g32, rule, keep_of_magnitude):
    """`(masked, keep)` of a position rule, keep `[N, H, W, 1]` from the magnitude map.

    The map `m = sqrt(sum_c g^2)` over the finite entries, up to a positive factor
    per sample, which leaves either rule's mask unchanged. Where every entry is
    finite and each sample's squares sit well inside float32 (the usual case), the
    squares are summed as they are; otherwise the non-finite entries are set to zero
    and each sample is divided by its largest finite magnitude first, and the
    non-finite entries are passed on as they are.
    """
    _check_static(g32, rule)
    squares = keras.ops.sum(keras.ops.square(g32), axis=3, keepdims=True)
    largest = keras.ops.max(squares, axis=(1, 2, 3))
    # NaN compares false: a NaN anywhere takes the second branch.
    usual = keras.ops.logical_and(
        keras.ops.all(squares <= _LARGEST_SQUARES),
        keras.ops.all(largest >= _SMALLEST_SQUARES),
    )

    def as_they_are():
        keep = keep_of_magnitude(keras.ops.sqrt(squares))
        return g * keras.ops.cast(keep, g.dtype), keep

    def scaled_per_sample():
        magnitude = keras.ops.abs(g32)
        finite = magnitude < np.inf
        top = keras.ops.max(finite_magnitude(magnitude), axis=(1, 2, 3), keepdims=True)
        # g / top, in two steps: XLA divides by multiplying with the reciprocal, which
        # is a denormal (flushed to zero) for a top beyond 2^126.
        step = keras.ops.where(top >= 1.0, 2.0**-64, 2.0**64)
        scaled = keras.ops.where(finite, g32 * step, 0.0) / keras.ops.maximum(top * step, _TINY)
        keep = keep_of_magnitude(
            keras.ops.sqrt(keras.ops.sum(keras.ops.square(scaled), axis=3, keepdims=True))
        )
        return keras.ops.where(finite, g * keras.ops.cast(keep, g.dtype), g), keep

    return backend.cond(usual, as_they_are, scaled_per_sample)


def lateral_keep(magnitude, zone_size, inhibition_base, inhibition_strength):
    """The LICNN-style spatial keep map [N, H, W, 1] of a magnitude map [N, H, W, 1]."""
    return _lateral_keep_from_magnitude(
        magnitude,
        zone_size=zone_size,
        inhibition_base=inhibition_base,
        inhibition_strength=inhibition_strength,
    )


# XLA fuses the ~100 small ops on the one-channel maps into a few kernels: 2.5x
# faster on the CPU than running them one by one (eval/benchmark.py), unlike the
# bandwidth-bound passes over the full gradient, which XLA made slower there.
@backend.fast_path
def _lateral_keep_from_magnitude(
    magnitude, *, zone_size, inhibition_base, inhibition_strength
):
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(magnitude), axis=(1, 2), keepdims=True))
    m_hat = magnitude / keras.ops.maximum(norm, _TINY)
    # Average pooling with SAME padding leaves positions outside the map out of the
    # count, which is what the zone mean asks for.
    zone_mean = keras.ops.average_pool(m_hat, zone_size, strides=1, padding="same")
    # Sum over the zone's offsets, one shifted view of the zero-padded map each:
    # five times faster on the CPU than extract_patches, and zero padding leaves
    # positions outside the map out of the sum (m_hat >= 0, so relu(0 - m) = 0).
    half = zone_size // 2
    height, width = m_hat.shape[1], m_hat.shape[2]
    padded = keras.ops.pad(m_hat, [[0, 0], [half, half], [half, half], [0, 0]])
    weights = _lateral_weights(zone_size).reshape(zone_size, zone_size)
    terms = [
        float(weights[i, j])
        * keras.ops.relu(padded[:, i : i + height, j : j + width, :] - m_hat)
        for i in range(zone_size)
        for j in range(zone_size)
        if weights[i, j] > 0
    ]
    surround = backend.add_n(terms) if terms else keras.ops.zeros_like(m_hat)
    inhibition = inhibition_base * keras.ops.exp(-zone_mean) + inhibition_strength * surround
    inhibition_norm = keras.ops.sqrt(
        keras.ops.sum(keras.ops.square(inhibition), axis=(1, 2), keepdims=True)
    )
    inhibition_hat = inhibition / keras.ops.maximum(inhibition_norm, _TINY)
    # "not (m_hat <= T_hat)" keeps a NaN map, so a NaN gradient is passed on.
    return keras.ops.cast(keras.ops.logical_not(m_hat <= inhibition_hat), "float32")


def _log_kernel(zone_size, sigma):
    """The l x l samples of -LoG_sigma at integer offsets, shifted to sum to zero.

    Up to the positive factor 1 / (pi sigma^4), which leaves the sign of the
    response, hence the mask, unchanged and keeps the weights within [-1, 1].
    """
    half = zone_size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    radius2 = (offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma**2)
    kernel = (1.0 - radius2) * np.exp(-radius2)
    return (kernel - kernel.mean()).astype(np.float32)


def _reflect_indices(size, half):
    """The indices NumPy's `reflect` padding by `half` reads along an axis of `size`.

    The edge is not repeated; where `half >= size` the reflection repeats (period
    2 (size - 1)), as `np.pad` does, and a single row or column stays constant.
    """
    index = np.arange(-half, size + half)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def log_keep(magnitude, zone_size, sigma):
    """The centre-surround spatial keep map [N, H, W, 1] of a magnitude map [N, H, W, 1]."""
    return _log_keep_from_magnitude(magnitude, zone_size=zone_size, sigma=sigma)


# Compiled with XLA for the same reason as `_lateral_keep_from_magnitude`.
@backend.fast_path
def _log_keep_from_magnitude(magnitude, *, zone_size, sigma):
    half = zone_size // 2
    height, width = magnitude.shape[1], magnitude.shape[2]
    # Reflect padding as a gather of static indices: the same as tf.pad's REFLECT
    # where that is defined (half < size), and NumPy's repeated reflection on maps
    # smaller than the zone, where tf.pad fails.
    padded = keras.ops.take(magnitude, _reflect_indices(height, half), axis=1)
    padded = keras.ops.take(padded, _reflect_indices(width, half), axis=2)
    kernel = _log_kernel(zone_size, sigma)
    # r = sum_p K_p (m_p - m_centre): exactly 0 on a constant map, which is kept.
    terms = [
        float(kernel[i, j]) * (padded[:, i : i + height, j : j + width, :] - magnitude)
        for i in range(zone_size)
        for j in range(zone_size)
        if (i, j) != (half, half) and kernel[i, j] != 0
    ]
    response = backend.add_n(terms) if terms else keras.ops.zeros_like(magnitude)
    # "not (r < 0)" keeps a NaN response, so a NaN gradient is passed on.
    return keras.ops.cast(keras.ops.logical_not(response < 0), "float32")
