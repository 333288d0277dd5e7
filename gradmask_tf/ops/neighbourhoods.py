"""A neighbourhood's entries as rows, and the k-th largest entry of each row.

The selections behind `topk` and the matched control. On the CPU outside XLA the k-th
largest comes from `NthElement` (linear time), elsewhere from `top_k`.
"""

import numpy as np
import tensorflow as tf

from gradmask_tf import compat


def neighbourhood_axes(rank, scope):
    """The axes of a `mean` or `topk` neighbourhood: units, feature map or channels."""
    if rank == 2:
        return (1,)
    return (1, 2) if scope == "spatial" else (3,)


def _use_nth_element():
    # NthElement is linear time and about 3x faster than top_k on the CPU, but has
    # no XLA or GPU kernel.
    if compat.in_xla_context():
        return False
    return not tf.config.list_physical_devices("GPU")


def _kth_largest(values, k):
    """The k-th largest entry along the last axis (ties counted), shape [...]."""
    size = values.shape[-1]
    if _use_nth_element():
        return tf.raw_ops.NthElement(input=values, n=size - k)
    return tf.reduce_min(tf.math.top_k(values, k, sorted=False).values, axis=-1)


def kth_largest_per_row(values, k, max_k):
    """The `k[...]`-th largest entry along the last axis, k varying, 1 <= k <= max_k.

    `max_k - k` entries of +inf appended to a row move its k-th largest to rank
    `max_k`, which one static (linear-time on the CPU) selection finds for every row.
    """
    num_padding = max_k - 1
    if num_padding:
        in_front = tf.range(num_padding) < (max_k - k)[..., tf.newaxis]
        padding = tf.where(
            in_front,
            tf.constant(np.inf, values.dtype),
            tf.constant(-np.inf, values.dtype),
        )
        values = tf.concat([values, padding], axis=-1)
    return _kth_largest(values, max_k)


def spatial_rows(tensor):
    """`[N, H, W, C]` -> `[N, C, H * W]`: one row per feature map."""
    height, width = tensor.shape[1], tensor.shape[2]
    channels = tf.shape(tensor)[3]
    return tf.reshape(tf.transpose(tensor, [0, 3, 1, 2]), [-1, channels, height * width])


def from_spatial_rows(rows, height, width):
    """The inverse of `spatial_rows`."""
    channels = tf.shape(rows)[1]
    return tf.transpose(tf.reshape(rows, [-1, channels, height, width]), [0, 2, 3, 1])
