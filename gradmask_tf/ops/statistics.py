"""The mask statistics `kept_fraction` and `kept_l1`, over the finite non-zero entries."""

import numpy as np
import tensorflow as tf


# Compiled with XLA: four reductions over the gradient fuse into one pass.
@tf.function(jit_compile=True)
def kept_statistics(g32, keep):
    """`[kept_fraction, kept_l1]` of a keep indicator over the finite non-zero entries.

    Both are 1 where there is no such entry (nothing to mask). `keep` is per entry
    or per position `[N, H, W, 1]`, whose channels are then counted as entries.
    """
    # |g| with the non-finite entries (NaN < inf is false) set to zero: the entries
    # counted are then exactly its non-zero ones.
    magnitude = tf.abs(g32)
    magnitude = tf.where(magnitude < np.inf, magnitude, 0.0)
    passed = magnitude * tf.cast(keep > 0, tf.float32)
    count = tf.cast(tf.math.count_nonzero(magnitude), tf.float64)
    passed_count = tf.cast(tf.math.count_nonzero(passed), tf.float64)
    mass = tf.reduce_sum(magnitude)
    passed_mass = tf.reduce_sum(passed)
    kept_fraction = tf.where(count > 0, passed_count / tf.maximum(count, 1.0), 1.0)
    kept_l1 = tf.where(mass > 0, passed_mass / tf.where(mass > 0, mass, 1.0), 1.0)
    return tf.stack([tf.cast(kept_fraction, tf.float32), kept_l1])
