"""The mask statistics `kept_fraction` and `kept_l1`, over the finite non-zero entries."""

import keras
import numpy as np

from gradmask_tf.ops import backend


# Compiled with XLA on TensorFlow: four reductions over the gradient fuse into one pass.
@backend.fast_path
def kept_statistics(g32, keep):
    """`[kept_fraction, kept_l1]` of a keep indicator over the finite non-zero entries.

    Both are 1 where there is no such entry (nothing to mask). `keep` is per entry
    or per position `[N, H, W, 1]`, whose channels are then counted as entries.
    """
    # |g| with the non-finite entries (NaN < inf is false) set to zero: the entries
    # counted are then exactly its non-zero ones.
    magnitude = keras.ops.abs(g32)
    magnitude = keras.ops.where(magnitude < np.inf, magnitude, 0.0)
    passed = magnitude * keras.ops.cast(keep > 0, "float32")
    # Counts in float64 where the backend has it (exact), else float32 (exact to 2^24).
    wide = "float64" if backend.HAS_FLOAT64 else "float32"
    count = keras.ops.cast(keras.ops.count_nonzero(magnitude), wide)
    passed_count = keras.ops.cast(keras.ops.count_nonzero(passed), wide)
    mass = keras.ops.sum(magnitude)
    passed_mass = keras.ops.sum(passed)
    kept_fraction = keras.ops.where(
        count > 0, passed_count / keras.ops.maximum(count, 1.0), 1.0
    )
    kept_l1 = keras.ops.where(mass > 0, passed_mass / keras.ops.where(mass > 0, mass, 1.0), 1.0)
    return keras.ops.stack([keras.ops.cast(kept_fraction, "float32"), kept_l1])
