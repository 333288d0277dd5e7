"""The matched control, and the uniform draws it shares with the `random` rule.

The control keeps, in each neighbourhood, as many finite non-zero entries (or
positions) as the rule kept, chosen uniformly at random, scaled to the L1 mass of the
rule's output. Draws are stateless where a seed is given, so a run is reproducible.
"""

import tensorflow as tf

from gradmask_tf.mask_params import POSITION_RULES
from gradmask_tf.ops.neighbourhoods import (
    from_spatial_rows,
    kth_largest_per_row,
    neighbourhood_axes,
    spatial_rows,
)


def draw_uniform(shape, dtype, config, seed):
    """Uniform draws in [0, 1) keyed by `seed`, else `[config.seed, 0]`, else fresh."""
    if seed is None and config.seed is not None:
        seed = tf.constant([config.seed, 0], tf.int64)
    if seed is None:
        return tf.random.uniform(shape, dtype=dtype)
    return tf.random.stateless_uniform(
        shape, seed=tf.cast(seed, tf.int64), dtype=dtype, alg="philox"
    )


def _choose_uniformly(eligible, num_chosen, uniform):
    """`num_chosen[...]` of the `eligible` entries of each row, uniformly at random.

    Args:
      eligible: A bool tensor `[..., S]` with a static S.
      num_chosen: An int32 tensor `[...]`, at most each row's number of eligible
        entries.
      uniform: A function of a shape that returns float64 draws in [0, 1).

    Returns:
      A bool tensor like `eligible` with exactly `num_chosen` true entries per row.
    """
    size = eligible.shape[-1]
    # Distinct keys, so that exactly k keys reach the k-th largest: a random
    # integer of 52 - log2(S) bits, ties broken by the index; exact in float64.
    bits = 52 - (size - 1).bit_length()
    keys = tf.floor(uniform(tf.shape(eligible)) * 2.0**bits) * size + tf.range(
        size, dtype=tf.float64
    )
    keys = tf.where(eligible, keys, -1.0)
    threshold = kth_largest_per_row(keys, tf.maximum(num_chosen, 1), size)
    chosen = tf.logical_and(eligible, keys >= threshold[..., tf.newaxis])
    return tf.logical_and(chosen, (num_chosen > 0)[..., tf.newaxis])


def matched_control(g, g32, masked, keep, *, rule, scope, uniform):
    """The rule's count and L1 mass per neighbourhood, at uniformly random places.

    Args:
      g: The gradient; `g32` the same in float32.
      masked: The rule's final output (after `rescale`).
      keep: The rule's float32 keep indicator, per entry or (`lateral`, `log`) per
        position `[N, H, W, 1]`.
      rule: The rule applied (`mean` for `local`, `lateral`, `log` on rank 2).
      scope: The configured scope.
      uniform: As in `_choose_uniformly`.

    Returns:
      `(controlled, chosen)`: the control's output, with the dtype of `g`, and its
      float32 keep indicator per entry.
    """
    rank = g.shape.rank
    finite = tf.math.is_finite(g32)
    # Non-finite entries are passed on and are not part of the count or the mass.
    eligible = tf.logical_and(finite, g32 != 0)
    kept = tf.logical_and(eligible, keep > 0)
    positions = rule in POSITION_RULES
    if positions:
        # A position is a unit: eligible where any channel is finite and non-zero.
        eligible_units = tf.reduce_any(eligible, axis=3, keepdims=True)
        kept_units = tf.reduce_any(kept, axis=3, keepdims=True)
        axes = (1, 2, 3)
    else:
        eligible_units, kept_units = eligible, kept
        local = rank == 4 and rule == "local"
        axes = (1, 2) if local else neighbourhood_axes(rank, scope)
    by_map = rank == 4 and axes != (3,)
    if None in (g.shape[1:3] if by_map else g.shape[-1:]):
        raise ValueError(
            "The matched control (`control=True`) needs static neighbourhood sizes. "
            f"Received a gradient of shape {g.shape}."
        )
    if by_map:
        height, width = g.shape[1], g.shape[2]
        chosen = _choose_uniformly(
            spatial_rows(eligible_units),
            tf.reduce_sum(tf.cast(spatial_rows(kept_units), tf.int32), axis=-1),
            uniform,
        )
        chosen = from_spatial_rows(chosen, height, width)
    else:
        chosen = _choose_uniformly(
            eligible_units,
            tf.reduce_sum(tf.cast(kept_units, tf.int32), axis=-1),
            uniform,
        )
    chosen = tf.logical_and(chosen, eligible)  # positions: over their channels
    masked32 = tf.cast(masked, tf.float32)
    target = tf.reduce_sum(
        tf.where(tf.math.is_finite(masked32), tf.abs(masked32), 0.0),
        axis=axes,
        keepdims=True,
    )
    selected = tf.reduce_sum(
        tf.where(chosen, tf.abs(g32), 0.0), axis=axes, keepdims=True
    )
    scale = tf.where(selected > 0, target / tf.where(selected > 0, selected, 1.0), 0.0)
    factor = tf.where(chosen, scale, 0.0)
    # The product in float64 for a float64 gradient, so its entries keep their
    # precision; float32 otherwise, so a large factor does not overflow float16.
    wide = tf.float64 if g.dtype == tf.float64 else tf.float32
    controlled = tf.cast(tf.cast(g, wide) * tf.cast(factor, wide), g.dtype)
    return tf.where(finite, controlled, g), tf.cast(chosen, tf.float32)
