"""The matched control, and the uniform draws it shares with the `random` rule.

The control keeps, in each neighbourhood, as many finite non-zero entries (or
positions) as the rule kept, chosen uniformly at random, scaled to the L1 mass of the
rule's output. Draws are stateless where a seed is given, so a run is reproducible.

How it chooses: every unit (entry, or position) draws a uniform 32-bit key, and each
neighbourhood keeps its `k` eligible units with the largest keys, so every k-subset
is equally likely. Where the k-th largest key is tied (about once in 2^32 / n
neighbourhoods of n units), a second 32-bit key, drawn then, breaks the tie, and
where that ties too (once in 2^64 / n) the largest positions do: 64 random bits.
The k-th largest key is found in place, one bit at a time from the top: a bit is
set while at least `k` keys still reach the threshold, one counting pass over the
keys each, stopping once every neighbourhood has exactly `k` keys at or above its
threshold; nothing is sorted, padded or widened.

Memory: the control needs of the rule only its L1 mass per neighbourhood
(`rule_mass`) and its count (from its keep indicator, in `matched_control`), so the
rule's output and keep indicator are freed before the control's output is made;
and it chooses for a few samples at a time (a sequential loop over chunks of about a
million entries, `samples_per_chunk`), so its keys and temporaries are a chunk's
size: one sample of a large gradient, a whole batch of a small one, whose passes
would otherwise cost more in each op's fixed cost than in their work. On TensorFlow
the loops that read the rule's tensors are compiled with XLA (`backend.fast_path`; in
a plain graph a loop's inputs are held to the end of the step), the choice runs in a
plain graph (`backend.graph_path`; under XLA its search would hold 15-25 MB of
compiled code per gradient shape), and the scaled output is one fused XLA pass.
"""

import math

import keras
import numpy as np

from gradmask_tf import compat
from gradmask_tf.mask_params import POSITION_RULES
from gradmask_tf.ops import backend
from gradmask_tf.ops.neighbourhoods import (
    finite_magnitude,
    finite_nonzero,
    from_spatial_rows,
    inverse_size,
    neighbourhood_axes,
    spatial_rows,
)

# The entries the control chooses among at once (`samples_per_chunk`): about 4 MB of
# int32 keys, a few samples of a large gradient, a whole small batch.
CHUNK_ENTRIES = 1 << 20

# Bit b of a 32-bit integer, as int32 (bit 31 is the sign bit).
_BITS = np.array([1 << bit for bit in range(32)], np.uint32).view(np.int32)


def draw_uniform(like, dtype, config, seed):
    """Uniform draws in [0, 1) of `like`'s shape keyed by `seed`, else `config.seed`.

    With neither, a fresh draw (see `backend.uniform`).
    """
    if seed is None and config.seed is not None:
        seed = config.seed
    return backend.uniform(like, dtype, seed)


def _count(selected, axis):
    return keras.ops.sum(keras.ops.cast(selected, "int32"), axis=axis, keepdims=True)


def _threshold(values, eligible, num, num_bits, offset):
    """Per row, the largest threshold that `num` eligible values reach.

    Built from the top bit down: a bit is set while at least `num` eligible values
    still reach the threshold. Stops once every row with `num > 0` has exactly
    `num` values at or above its threshold.

    Args:
      values: int32 `[..., S]`; `values ^ offset`, read as unsigned, has `num_bits`
        bits (`offset` is the sign bit for any int32, 0 for values in
        [0, 2^num_bits)).
      eligible: Which values take part, bool like `values`.
      num: int32 `[..., 1]`, at most each row's number of eligible values.

    Returns:
      `(threshold, reached)`, `[..., 1]`: the threshold and how many eligible values
      reach it: `num`, or more where the num-th largest value is tied (the threshold
      is then that value). Rows with `num = 0` get an arbitrary threshold.
    """
    bits = keras.ops.convert_to_tensor(_BITS)
    offset = keras.ops.convert_to_tensor(np.int32(offset))
    active = num > 0

    def unsettled(bit, high, reached):
        return keras.ops.logical_and(
            bit >= 0, keras.ops.any(keras.ops.logical_and(active, reached != num))
        )

    def step(bit, high, reached):
        candidate = keras.ops.bitwise_or(high, keras.ops.take(bits, bit))
        threshold = keras.ops.bitwise_xor(candidate, offset)
        count = _count(keras.ops.logical_and(eligible, values >= threshold), -1)
        accept = count >= num
        return (
            bit - 1,
            keras.ops.where(accept, candidate, high),
            keras.ops.where(accept, count, reached),
        )

    start = (
        keras.ops.convert_to_tensor(num_bits - 1, "int32"),
        keras.ops.zeros_like(num),
        _count(eligible, -1),
    )
    _, high, reached = keras.ops.while_loop(unsettled, step, start)
    return keras.ops.bitwise_xor(high, offset), reached


def _choose_uniformly(eligible, num_chosen, keys, tie_keys):
    """The `num_chosen` eligible entries of each row with the largest keys.

    Args:
      eligible: A bool tensor `[..., S]` with a static S.
      num_chosen: An int32 tensor `[..., 1]`, at most each row's number of eligible
        entries.
      keys: Uniform int32 keys like `eligible` (every value equally likely).
      tie_keys: A function that returns a second such key, called only where a row
        is tied at its num-th largest key.

    Returns:
      A bool tensor like `eligible` with exactly `num_chosen` true entries per row:
      the largest by key, then by the second key, then by position.
    """
    threshold, reached = _threshold(keys, eligible, num_chosen, 32, _BITS[31])
    tied = keras.ops.logical_and(eligible, keys == threshold)
    # Of the tied entries, as many as `num_chosen` still lacks: all of them (one)
    # where nothing is tied.
    num_tied = num_chosen - reached + _count(tied, -1)
    chosen = keras.ops.logical_or(
        keras.ops.logical_and(eligible, keys > threshold),
        _break_ties(tied, num_tied, tie_keys),
    )
    return keras.ops.logical_and(chosen, num_chosen > 0)


def _break_ties(tied, num, tie_keys):
    """`num` of the `tied` entries of each row: by a second key, then by position."""
    is_tied = keras.ops.logical_and(num > 0, _count(tied, -1) > num)

    def by_second_key():
        second = tie_keys()
        threshold, reached = _threshold(second, tied, num, 32, _BITS[31])
        still_tied = keras.ops.logical_and(tied, second == threshold)
        position = keras.ops.arange(tied.shape[-1], dtype="int32")
        last, _ = _threshold(
            position, still_tied, num - reached + _count(still_tied, -1),
            (tied.shape[-1] - 1).bit_length(), 0,
        )
        return keras.ops.logical_and(tied, keras.ops.logical_or(
            second > threshold, keras.ops.logical_and(still_tied, position >= last)
        ))

    return keras.ops.cond(keras.ops.any(is_tied), by_second_key, lambda: tied)


def _eligible(g32):
    """The finite non-zero entries: the ones the control counts and chooses among."""
    return finite_nonzero(keras.ops.abs(g32))


def _units(entries, by_position):
    """Per entry, or per position `[N, H, W, 1]` (true where any channel is)."""
    return keras.ops.any(entries, axis=3, keepdims=True) if by_position else entries


def _mass(tensor, axes):
    """The L1 mass of the finite entries over their number, in float32, per neighbourhood.

    Each magnitude is divided by the neighbourhood's size before the sum, so it
    cannot overflow; the control uses only the ratio of two such masses.
    """
    magnitude = keras.ops.abs(keras.ops.cast(tensor, "float32"))
    unit = inverse_size(magnitude, axes)
    return keras.ops.sum(finite_magnitude(magnitude) * unit, axis=axes, keepdims=True)


def _on_one_sample(function):
    """`function` of tensors with a batch axis, applied to one sample's slices."""

    def one(sample):
        results = function(*(keras.ops.expand_dims(tensor, 0) for tensor in sample))
        return keras.tree.map_structure(lambda tensor: tensor[0], results)

    return one


def _per_sample(function, tensors):
    """`function` of each sample (a batch of one) of `tensors`, results stacked.

    One sample after another, so temporaries are one sample's size: `keras.ops.map`,
    whose loop slices each sample in place under XLA (and `jax.lax.map`).
    """
    return keras.ops.map(_on_one_sample(function), tuple(tensors))


# Compiled with XLA on TensorFlow: these are the last uses of the rule's output and
# keep indicator (`mean`'s is made for the control alone), and a loop in a plain
# graph held them to the end of the step (as measured).
@backend.fast_path
def _mass_of(masked, *, axes):
    return _per_sample(lambda masked: _mass(masked, axes), (masked,))


@backend.fast_path
def _count_kept(g32, keep, *, axes, by_position):
    def count_kept(g32, keep):
        return _count(_units(keras.ops.logical_and(_eligible(g32), keep > 0), by_position), axes)

    return _per_sample(count_kept, (g32, keep))


def _as_rows(tensor, num_rows, width):
    """`tensor` as `[samples, num_rows, width]`; `num_rows` None if not static.

    A static number of rows keeps the rows' shape known to the search's loop.
    """
    if num_rows is None:
        return keras.ops.reshape(tensor, [backend.dynamic_shape(tensor)[0], -1, width])
    return keras.ops.reshape(tensor, [-1, num_rows, width])


def _chunk_choice(units, num_chosen, key, first, axes):
    """A chunk of samples' choice of units, `num_chosen` per neighbourhood; `first`
    is the number of its first sample in the batch, whose keys it draws."""
    by_map = len(units.shape) == 4 and axes != (3,)
    # As rows, one per neighbourhood (a feature map's positions in a row).
    if by_map:
        rows = spatial_rows(units)
    else:
        inner = units.shape[1:-1]  # rank 2: none; rank 4: H and W, static or not
        rows = _as_rows(units, None if None in inner else math.prod(inner), units.shape[-1])
    chosen = _choose_uniformly(
        rows,
        _as_rows(num_chosen, rows.shape[1], 1),
        backend.sample_bits(rows, key, first),
        lambda: backend.sample_bits(rows, key, first, salt=1),
    )
    if by_map:
        return from_spatial_rows(chosen, units.shape[1], units.shape[2])
    return keras.ops.reshape(chosen, backend.dynamic_shape(units))


def samples_per_chunk(shape):
    """How many samples of a gradient of `shape` the control chooses for at once.

    Enough that a chunk holds about `CHUNK_ENTRIES` entries, so the search's many
    small passes are not dominated by each op's fixed cost; at least one sample. One
    under XLA, which slices only chunks of one static size.
    """
    if None in shape[1:] or (backend.TENSORFLOW and compat.in_xla_context()):
        return 1
    return max(1, CHUNK_ENTRIES // max(1, math.prod(shape[1:])))


@backend.graph_path
def _choice(g32, num_chosen, key, *, axes, by_position, size):
    """The control's choice per entry (bool) and the L1 mass it selects, per sample,
    `size` samples at a time."""

    def choose(chunk, first):
        g32, num_chosen = chunk
        eligible = _eligible(g32)
        units = _units(eligible, by_position)
        chosen = _chunk_choice(units, num_chosen, key, first, axes)
        chosen = keras.ops.logical_and(chosen, eligible)  # positions: over their channels
        unit = inverse_size(g32, axes)  # as `_mass`: the sum cannot overflow
        selected = keras.ops.sum(
            keras.ops.where(chosen, keras.ops.abs(g32) * unit, 0.0), axis=axes, keepdims=True
        )
        return chosen, selected

    # In a plain graph: `backend.map_chunks`, a few samples at a time.
    return backend.map_chunks(choose, (g32, num_chosen), size, ("bool", "float32"))


# Compiled with XLA on TensorFlow: one fused pass writes the output, no temporaries.
@backend.fast_path
def _scaled(g, chosen, mass, selected):
    """`g` where chosen, zero elsewhere, scaled from `selected` to `mass`; non-finite kept."""
    scale = keras.ops.where(
        selected > 0, mass / keras.ops.where(selected > 0, selected, 1.0), 0.0
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
    return keras.ops.where(keras.ops.isfinite(keras.ops.cast(g, "float32")), controlled, g)


def _control_axes(g, rule, scope):
    """The neighbourhood's axes and whether its units are positions."""
    rank = len(g.shape)
    if rule in POSITION_RULES:
        axes, by_position = (1, 2, 3), True
    else:
        local = rank == 4 and rule == "local"
        axes, by_position = (1, 2) if local else neighbourhood_axes(rank, scope), False
    if None in [g.shape[axis] for axis in axes if not (by_position and axis == 3)]:
        raise ValueError(
            "The matched control (`control=True`) needs static neighbourhood sizes. "
            f"Received a gradient of shape {g.shape}."
        )
    return tuple(axes), by_position


def rule_mass(masked, *, rule, scope):
    """The L1 mass of the rule's output per neighbourhood of the control.

    Args:
      masked: The rule's final output (after `rescale`).
      rule: The rule applied (`mean` for `local`, `lateral`, `log` on rank 2).
      scope: The configured scope.

    Returns:
      float32, per neighbourhood (its axes kept as size 1), over the finite entries.
    """
    axes, _ = _control_axes(masked, rule, scope)
    return _mass_of(masked, axes=axes)


def matched_control(g, g32, keep_of, mass, *, rule, scope, seed):
    """The rule's count and L1 mass per neighbourhood, at uniformly random places.

    Args:
      g: The gradient; `g32` the same in float32.
      keep_of: A function that returns the rule's float32 keep indicator, per entry
        or (`lateral`, `log`) per position `[N, H, W, 1]`; called once, and what it
        computes is freed once counted.
      mass: The L1 mass of the rule's output, from `rule_mass`.
      rule: The rule applied (`mean` for `local`, `lateral`, `log` on rank 2).
      scope: The configured scope.
      seed: A `[2]` integer tensor, a Python int, or None for a fresh draw.

    Returns:
      `(controlled, chosen)`: the control's output, with the dtype of `g`, and its
      choice per entry (bool). Non-finite entries of `g` are passed on and are not
      part of the count or the mass.
    """
    axes, by_position = _control_axes(g, rule, scope)
    # Counted after the mass is taken, so the rule's output and its keep indicator
    # are not held at once.
    with backend.after([mass]):
        num_kept = _count_kept(g32, keep_of(), axes=axes, by_position=by_position)
    # The chunk's size is decided here: inside `_choice`'s own graph an enclosing
    # XLA context is not seen.
    chosen, selected = _choice(
        g32, num_kept, backend.seed_key(seed), axes=axes, by_position=by_position,
        size=samples_per_chunk(g32.shape),
    )
    return _scaled(g, chosen, mass, selected), chosen
