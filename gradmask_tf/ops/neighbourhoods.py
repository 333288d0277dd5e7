"""Neighbourhoods: their axes and sizes, their entries as rows, the k-th largest entry.

In `keras.ops`: the rows behind `topk` and the matched control, and `topk`'s
selection, whose k-th largest comes from `backend.kth_largest` (`NthElement` on
TensorFlow's CPU). Also the two helpers every rule shares to keep non-finite entries
out of its sums (`finite_magnitude`) and its float32 sums from overflowing
(`inverse_size`).
"""

import math

import keras
import numpy as np

from gradmask_tf.ops import backend

# The smallest normal float32 number (2^-126): a magnitude below it counts as zero,
# as it does wherever the hardware flushes denormals (CPUs do, in TensorFlow and JAX).
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def finite_magnitude(magnitude):
    """`magnitude` with its non-finite entries set to zero (NaN < inf is false)."""
    return keras.ops.where(magnitude < np.inf, magnitude, 0.0)


def finite_nonzero(magnitude):
    """Where `magnitude` (float32) is finite and non-zero: the entries that count.

    Denormals count as zero, flushed by the hardware or not; NaN fails both tests.
    """
    return keras.ops.logical_and(magnitude >= FLOAT32_TINY, magnitude < np.inf)


def inverse_size(tensor, axes):
    """1 / the number of entries over `axes`: a float, or a float32 scalar if dynamic.

    A sum of magnitudes each multiplied by it first is at most their largest, so
    it cannot overflow float32 however large the entries are.
    """
    sizes = [tensor.shape[axis] for axis in axes]
    if None not in sizes:
        return 1.0 / math.prod(sizes)
    shape = backend.dynamic_shape(tensor)
    size = math.prod([shape[axis] for axis in axes])
    return 1.0 / keras.ops.cast(size, "float32")


def neighbourhood_axes(rank, scope):
    """The axes of a `mean` or `topk` neighbourhood: units, feature map or channels."""
    if rank == 2:
        return (1,)
    return (1, 2) if scope == "spatial" else (3,)


def _extremes(dtype):
    """The values above and below every entry of `dtype`: +-inf, or an int's limits."""
    if "int" in keras.backend.standardize_dtype(dtype):
        limits = np.iinfo(keras.backend.standardize_dtype(dtype))
        return limits.max, limits.min
    return np.inf, -np.inf


def kth_largest_per_row(values, k, max_k):
    """The `k[...]`-th largest entry along the last axis, k varying, 1 <= k <= max_k.

    `max_k - k` entries above every value appended to a row move its k-th largest to
    rank `max_k`, which one static (linear-time on the CPU) selection finds for every
    row.
    """
    num_padding = max_k - 1
    if num_padding:
        in_front = keras.ops.arange(num_padding) < keras.ops.expand_dims(max_k - k, -1)
        above, below = _extremes(values.dtype)
        padding = keras.ops.where(
            in_front,
            keras.ops.convert_to_tensor(above, values.dtype),
            keras.ops.convert_to_tensor(below, values.dtype),
        )
        values = keras.ops.concatenate([values, padding], axis=-1)
    return backend.kth_largest(values, max_k)


def spatial_rows(tensor):
    """`[N, H, W, C]` -> `[N, C, H * W]`: one row per feature map."""
    height, width = tensor.shape[1], tensor.shape[2]
    channels = backend.dynamic_shape(tensor)[3]
    return keras.ops.reshape(
        keras.ops.transpose(tensor, [0, 3, 1, 2]), [-1, channels, height * width]
    )


def from_spatial_rows(rows, height, width):
    """The inverse of `spatial_rows`."""
    channels = backend.dynamic_shape(rows)[1]
    return keras.ops.transpose(
        keras.ops.reshape(rows, [-1, channels, height, width]), [0, 2, 3, 1]
    )
