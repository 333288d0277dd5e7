"""The mask statistics `kept_fraction` and `kept_l1`, over the finite non-zero entries."""

import keras

from gradmask_tf.ops import backend
from gradmask_tf.ops.neighbourhoods import finite_nonzero, inverse_size


# Compiled with XLA on TensorFlow: four reductions over the gradient fuse into one pass.
@backend.fast_path
def kept_statistics(g32, keep):
    """`[kept_fraction, kept_l1]` of a keep indicator over the finite non-zero entries.

    Both are 1 where there is no such entry (nothing to mask). `keep` is per entry
    or per position `[N, H, W, 1]`, whose channels are then counted as entries.
    Non-zero means non-zero in float32: denormals count as zero, flushed or not.
    """
    magnitude = keras.ops.abs(g32)
    counted = finite_nonzero(magnitude)
    passed = keras.ops.logical_and(counted, keep > 0)
    # Counts in float64 where the backend has it (exact), else float32 (exact to 2^24).
    wide = "float64" if backend.HAS_FLOAT64 else "float32"
    count = keras.ops.sum(keras.ops.cast(counted, wide))
    passed_count = keras.ops.sum(keras.ops.cast(passed, wide))
    # Masses of |g| / size: their float32 sums cannot overflow.
    scaled = magnitude * inverse_size(g32, range(len(g32.shape)))
    mass = keras.ops.sum(keras.ops.where(counted, scaled, 0.0))
    passed_mass = keras.ops.sum(keras.ops.where(passed, scaled, 0.0))
    kept_fraction = keras.ops.where(
        count > 0, passed_count / keras.ops.maximum(count, 1.0), 1.0
    )
    kept_l1 = keras.ops.where(mass > 0, passed_mass / keras.ops.where(mass > 0, mass, 1.0), 1.0)
    return keras.ops.stack([keras.ops.cast(kept_fraction, "float32"), kept_l1])
