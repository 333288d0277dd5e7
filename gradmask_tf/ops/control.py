"""The matched control, and the uniform draws it shares with the `random` rule.

The control keeps, in each neighbourhood, as many finite non-zero entries (or
positions) as the rule kept, chosen uniformly at random, scaled to the L1 mass of the
rule's output. Draws are stateless where a seed is given, so a run is reproducible.
"""

import keras
import numpy as np

from gradmask_tf.mask_params import POSITION_RULES
from gradmask_tf.ops import backend
from gradmask_tf.ops.neighbourhoods import (
    FLOAT32_TINY,
    from_spatial_rows,
    inverse_size,
    kth_largest_per_row,
    neighbourhood_axes,
    spatial_rows,
)


def draw_uniform(like, dtype, config, seed):
    """Uniform draws in [0, 1) of `like`'s shape keyed by `seed`, else `config.seed`.

    With neither, a fresh draw (see `backend.uniform`).
    """
    if seed is None and config.seed is not None:
        seed = config.seed
    return backend.uniform(like, dtype, seed)


def _selection_keys(eligible, uniform):
    """Distinct random keys per row of `eligible` (`-1` where not eligible).

    A random integer of `bits - log2(S)` bits, ties broken by the index, so exactly
    k keys reach the k-th largest: exact in float64 (52 bits), or, where the backend
    computes float64 as float32 (JAX without x64), in int32 (at most 24 random bits).
    """
    size = eligible.shape[-1]
    index_bits = (size - 1).bit_length()
    if backend.HAS_FLOAT64:
        bits = 52 - index_bits
        keys = keras.ops.floor(uniform(eligible, "float64") * 2.0**bits) * size
        keys = keys + keras.ops.arange(size, dtype="float64")
        return keras.ops.where(eligible, keys, -1.0)
    bits = min(24, 31 - index_bits)
    keys = keras.ops.cast(keras.ops.floor(uniform(eligible, "float32") * 2.0**bits), "int32")
    keys = keys * size + keras.ops.arange(size, dtype="int32")
    return keras.ops.where(eligible, keys, keras.ops.convert_to_tensor(-1, "int32"))


def _choose_uniformly(eligible, num_chosen, uniform):
    """`num_chosen[...]` of the `eligible` entries of each row, uniformly at random.

    Args:
      eligible: A bool tensor `[..., S]` with a static S.
      num_chosen: An int32 tensor `[...]`, at most each row's number of eligible
        entries.
      uniform: A function of (a tensor, a dtype) that returns draws in [0, 1) of the
        tensor's shape.

    Returns:
      A bool tensor like `eligible` with exactly `num_chosen` true entries per row.
    """
    size = eligible.shape[-1]
    keys = _selection_keys(eligible, uniform)
    threshold = kth_largest_per_row(keys, keras.ops.maximum(num_chosen, 1), size)
    chosen = keras.ops.logical_and(eligible, keys >= keras.ops.expand_dims(threshold, -1))
    return keras.ops.logical_and(chosen, keras.ops.expand_dims(num_chosen > 0, -1))


def _count(kept):
    return keras.ops.sum(keras.ops.cast(kept, "int32"), axis=-1)


def _control_units(eligible, kept, rule, scope, rank):
    """The units chosen among (entries, or positions) and the neighbourhood's axes."""
    if rule in POSITION_RULES:
        # A position is a unit: eligible where any channel is finite and non-zero.
        eligible_units = keras.ops.any(eligible, axis=3, keepdims=True)
        kept_units = keras.ops.any(kept, axis=3, keepdims=True)
        return eligible_units, kept_units, (1, 2, 3)
    local = rank == 4 and rule == "local"
    return eligible, kept, (1, 2) if local else neighbourhood_axes(rank, scope)


def _choose(g, eligible_units, kept_units, axes, uniform):
    """The control's choice of units, as many per neighbourhood as the rule kept."""
    rank = len(g.shape)
    by_map = rank == 4 and axes != (3,)
    if None in (g.shape[1:3] if by_map else g.shape[-1:]):
        raise ValueError(
            "The matched control (`control=True`) needs static neighbourhood sizes. "
            f"Received a gradient of shape {g.shape}."
        )
    if not by_map:
        return _choose_uniformly(eligible_units, _count(kept_units), uniform)
    height, width = g.shape[1], g.shape[2]
    chosen = _choose_uniformly(
        spatial_rows(eligible_units), _count(spatial_rows(kept_units)), uniform
    )
    return from_spatial_rows(chosen, height, width)


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
    finite = keras.ops.isfinite(g32)
    # Non-finite entries are passed on and are not part of the count or the mass;
    # denormals count as zero, flushed or not.
    eligible = keras.ops.logical_and(finite, keras.ops.abs(g32) >= FLOAT32_TINY)
    kept = keras.ops.logical_and(eligible, keep > 0)
    eligible_units, kept_units, axes = _control_units(
        eligible, kept, rule, scope, len(g.shape)
    )
    chosen = _choose(g, eligible_units, kept_units, axes, uniform)
    chosen = keras.ops.logical_and(chosen, eligible)  # positions: over their channels
    masked32 = keras.ops.cast(masked, "float32")
    unit = inverse_size(g32, axes)  # masses of |g| / n: their float32 sums cannot overflow
    target = keras.ops.sum(
        keras.ops.where(keras.ops.isfinite(masked32), keras.ops.abs(masked32) * unit, 0.0),
        axis=axes,
        keepdims=True,
    )
    selected = keras.ops.sum(
        keras.ops.where(chosen, keras.ops.abs(g32) * unit, 0.0), axis=axes, keepdims=True
    )
    scale = keras.ops.where(
        selected > 0, target / keras.ops.where(selected > 0, selected, 1.0), 0.0
    )
    scale = keras.ops.where(scale < np.inf, scale, 1.0)  # beyond float32: unscaled
    factor = keras.ops.where(chosen, scale, 0.0)
    # The product in float64 for a float64 gradient, so its entries keep their
    # precision; float32 otherwise, so a large factor does not overflow float16.
    dtype = keras.backend.standardize_dtype(g.dtype)
    wide = "float64" if dtype == "float64" else "float32"
    controlled = keras.ops.cast(
        keras.ops.cast(g, wide) * keras.ops.cast(factor, wide), dtype
    )
    return keras.ops.where(finite, controlled, g), keras.ops.cast(chosen, "float32")
