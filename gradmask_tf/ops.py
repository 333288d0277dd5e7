"""The Gradient Mask op: identity forward, lateral inhibition on the gradient.

Pure TensorFlow (no Keras import). `gradient_mask` is the public op; the layer in
`layers.py` calls `masked_identity` with its `enabled` switch, a per-step seed and a
probe that reports the mask's statistics (`kept_fraction`, `kept_l1`) through the
backward pass.

References:
  Jiang, Liu, Xiao, Chua. "Gradient Mask: Lateral Inhibition Mechanism Improves
  Performance in Artificial Neural Networks". arXiv:2208.06918, 2022.
  Cao et al. "Lateral Inhibition-Inspired Convolutional Neural Network for Visual
  Attention and Saliency Detection". AAAI 2018 (the `lateral` rule).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from gradmask_tf import compat
from gradmask_tf.errors import invalid

RULES = ("none", "mean", "local", "topk", "lateral", "log", "random")
# The rules that mask whole positions, one spatial mask shared by all channels.
_POSITION_RULES = ("lateral", "log")
SCOPES = ("spatial", "channel")

# Keeps an all-zero magnitude map at zero in the `lateral` rule instead of 0/0.
_TINY = float(np.finfo(np.float32).tiny)
# Hard thresholds of `mean` and `local` are lowered by 2^-17 (relative 7.6e-6): a
# float32 mean of n equal values can round above them (it did for 42% of constant
# maps tried), which would drop a whole constant map, for instance every map right
# before global average pooling, that exact arithmetic keeps whole.
_ROUNDING_SLACK = 1.0 - 2.0**-17


def _is_real_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Validated parameters of the op; see `gradient_mask` for their meaning."""

    rule: str = "mean"
    scope: str = "spatial"
    alpha: float = 1.0
    kernel_size: int = 3
    keep_fraction: float = 0.5
    soft: bool = False
    rescale: bool = False
    control: bool = False
    zone_size: int = 7
    inhibition_base: float = 0.1
    inhibition_strength: float = 0.9
    sigma: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise invalid("rule", f"one of {', '.join(RULES)}", self.rule)
        if self.scope not in SCOPES:
            raise invalid("scope", f"one of {', '.join(SCOPES)}", self.scope)
        if not _is_real_number(self.alpha) or not self.alpha >= 0 or math.isinf(self.alpha):
            raise invalid("alpha", "a finite float >= 0", self.alpha)
        if not _is_real_number(self.keep_fraction) or not 0 < self.keep_fraction <= 1:
            raise invalid("keep_fraction", "a float in (0, 1]", self.keep_fraction)
        for name in ("kernel_size", "zone_size"):
            value = getattr(self, name)
            if not _is_integer(value) or value <= 0 or value % 2 == 0:
                raise invalid(name, "a positive odd integer", value)
        for name in ("inhibition_base", "inhibition_strength"):
            value = getattr(self, name)
            if not _is_real_number(value) or not value >= 0 or math.isinf(value):
                raise invalid(name, "a finite float >= 0", value)
        sigma = self.sigma
        if not _is_real_number(sigma) or not sigma > 0 or math.isinf(sigma):
            raise invalid("sigma", "a finite float > 0", self.sigma)
        for name in ("soft", "rescale", "control"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise invalid(name, "a bool", getattr(self, name))
        if self.soft and self.rule in _POSITION_RULES:
            raise invalid(
                "soft",
                f"False with rule={self.rule!r} (soft mode is not defined for it)",
                self.soft,
            )
        if self.control and self.rule in ("none", "random"):
            raise invalid(
                "control",
                f"False with rule={self.rule!r} (the matched control exists for "
                "mean, local, topk, lateral and log)",
                self.control,
            )
        if self.control and self.soft:
            raise invalid(
                "control", "False with soft=True (the control keeps whole entries)",
                self.control,
            )
        if self.seed is not None and not _is_integer(self.seed):
            raise invalid("seed", "an integer or None", self.seed)
        # Store plain Python numbers so configs compare and serialize cleanly.
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "keep_fraction", float(self.keep_fraction))
        object.__setattr__(self, "inhibition_base", float(self.inhibition_base))
        object.__setattr__(self, "inhibition_strength", float(self.inhibition_strength))
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "kernel_size", int(self.kernel_size))
        object.__setattr__(self, "zone_size", int(self.zone_size))
        object.__setattr__(self, "soft", bool(self.soft))
        object.__setattr__(self, "rescale", bool(self.rescale))
        object.__setattr__(self, "control", bool(self.control))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self):
        return dataclasses.asdict(self)


def num_kept(keep_fraction, size):
    """How many entries the `topk` rule keeps in a neighbourhood of `size`.

    `ceil(keep_fraction * size)`, rounded first so that 0.1 * 10 keeps 1, not 2.
    """
    return max(1, int(math.ceil(round(keep_fraction * size, 9))))


def _check_tensor(tensor):
    """The op is defined on float tensors of rank 2 or 4."""
    if tensor.shape.rank not in (2, 4):
        raise ValueError(
            "Gradient Mask applies to rank-2 [N, D] or rank-4 [N, H, W, C] tensors. "
            f"Received a tensor of shape {tensor.shape}."
        )
    if not tensor.dtype.is_floating:
        raise ValueError(
            f"Gradient Mask needs a float tensor. Received dtype {tensor.dtype}."
        )


def _neighbourhood_axes(rank, scope):
    if rank == 2:
        return (1,)
    return (1, 2) if scope == "spatial" else (3,)


def _threshold_mask(g, magnitude, tau, soft):
    """Applies a threshold; returns (masked gradient, float32 keep indicator)."""
    if soft:
        # sign(g) * max(|g| - tau, 0) = g - clip(g, -tau, tau): two fused passes.
        # (No rounding slack: at a tie the shrunk value is zero either way.)
        tau = tf.cast(tau, g.dtype)
        masked = g - tf.clip_by_value(g, -tau, tau)
        keep = tf.cast(magnitude > tf.cast(tau, tf.float32), tf.float32)
        return masked, keep
    # `g * 1[|g| >= tau]` rather than a select: one pass less on the CPU, and a NaN
    # in g stays NaN (NaN * 0 = NaN), so it is passed on, never hidden.
    keep = tf.cast(magnitude >= tau, tf.float32)
    masked = g * (keep if g.dtype == tf.float32 else tf.cast(keep, g.dtype))
    return masked, keep


def _mean_factor(config):
    """alpha, lowered by the rounding slack for the hard `mean` and `local` rules."""
    return config.alpha if config.soft else config.alpha * _ROUNDING_SLACK


# Compiled with XLA: the mean of |g| and the select each fuse into one pass over the
# gradient; unfused, TensorFlow runs five kernels (measured on the CPU: 3.6 ms
# against 4.9 ms for a [128, 28, 28, 32] float32 gradient).
@tf.function(jit_compile=True)
def _mean_mask(g, *, factor, axes):
    """The hard `mean` rule: `(g * 1[|g| >= tau], tau)`, tau in float32."""
    magnitude = tf.abs(tf.cast(g, tf.float32))
    tau = factor * tf.reduce_mean(magnitude, axis=axes, keepdims=True)
    # Dropped where |g| < tau, as a select: a NaN in g (NaN < tau is false) is passed
    # on, never hidden (XLA would turn `g * 1[|g| >= tau]` into a select that hides it).
    # A feature map with a NaN has a NaN tau and passes whole.
    return tf.where(magnitude < tau, tf.zeros_like(g), g), tau


def _rescale(g, masked, axes):
    """Scales `masked` by ||g||_1 / ||masked||_1 per neighbourhood (no-op if zero)."""
    total = tf.reduce_sum(tf.abs(tf.cast(g, tf.float32)), axis=axes, keepdims=True)
    kept = tf.reduce_sum(tf.abs(tf.cast(masked, tf.float32)), axis=axes, keepdims=True)
    scale = tf.where(kept > 0, total / tf.where(kept > 0, kept, 1.0), 1.0)
    return masked * tf.cast(scale, masked.dtype)


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


def _kth_largest_per_row(values, k, max_k):
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


def _topk_kth_value(magnitude, keep_fraction):
    """The `ceil(q * n)`-th largest magnitude along the last axis, n its non-zeros."""
    size = magnitude.shape[-1]
    # num_kept for every possible n, looked up per neighbourhood (n = 0 reads 1: the
    # row is all zero, so any threshold keeps it zero).
    budget = tf.constant([num_kept(keep_fraction, n) for n in range(size + 1)], tf.int32)
    num_nonzero = tf.reduce_sum(tf.cast(magnitude != 0, tf.int32), axis=-1)
    k = tf.gather(budget, num_nonzero)
    return _kth_largest_per_row(magnitude, k, num_kept(keep_fraction, size))


def _topk_threshold(magnitude, keep_fraction, scope):
    rank = magnitude.shape.rank
    if rank == 4 and scope == "spatial":
        height, width = magnitude.shape[1], magnitude.shape[2]
        if height is None or width is None:
            raise ValueError(
                "The `topk` rule needs static spatial dimensions. "
                f"Received a gradient of shape {magnitude.shape}."
            )
        kth = _topk_kth_value(_spatial_rows(magnitude), keep_fraction)
        return kth[:, tf.newaxis, tf.newaxis, :]
    if magnitude.shape[-1] is None:
        raise ValueError(
            "The `topk` rule needs a static last dimension. "
            f"Received a gradient of shape {magnitude.shape}."
        )
    return _topk_kth_value(magnitude, keep_fraction)[..., tf.newaxis]


def _spatial_rows(tensor):
    """`[N, H, W, C]` -> `[N, C, H * W]`: one row per feature map."""
    height, width = tensor.shape[1], tensor.shape[2]
    channels = tf.shape(tensor)[3]
    return tf.reshape(tf.transpose(tensor, [0, 3, 1, 2]), [-1, channels, height * width])


def _from_spatial_rows(rows, height, width):
    """The inverse of `_spatial_rows`."""
    channels = tf.shape(rows)[1]
    return tf.transpose(tf.reshape(rows, [-1, channels, height, width]), [0, 2, 3, 1])


def _lateral_weights(zone_size):
    """(d / l) * exp(-d / l) for each offset of the l x l zone; 0 at the centre."""
    half = zone_size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    distance = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    weights = distance / zone_size * np.exp(-distance / zone_size)
    return weights.reshape(-1).astype(np.float32)


def _lateral_keep(g32, zone_size, inhibition_base, inhibition_strength):
    """The LICNN-style spatial keep map [N, H, W, 1] of a rank-4 gradient."""
    if g32.shape[1] is None or g32.shape[2] is None:
        raise ValueError(
            "The `lateral` rule needs static spatial dimensions. "
            f"Received a gradient of shape {g32.shape}."
        )
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(g32), axis=3, keepdims=True))
    return _lateral_keep_from_magnitude(
        magnitude,
        zone_size=zone_size,
        inhibition_base=inhibition_base,
        inhibition_strength=inhibition_strength,
    )


# XLA fuses the ~100 small ops on the one-channel maps into a few kernels: 2.5x
# faster on the CPU than running them one by one (eval/benchmark.py), unlike the
# bandwidth-bound passes over the full gradient, which XLA made slower there.
@tf.function(jit_compile=True)
def _lateral_keep_from_magnitude(
    magnitude, *, zone_size, inhibition_base, inhibition_strength
):
    norm = tf.sqrt(tf.reduce_sum(tf.square(magnitude), axis=[1, 2], keepdims=True))
    m_hat = magnitude / tf.maximum(norm, _TINY)
    # Average pooling with SAME padding leaves positions outside the map out of the
    # count, which is what the zone mean asks for.
    zone_mean = tf.nn.avg_pool2d(m_hat, zone_size, 1, "SAME")
    # Sum over the zone's offsets, one shifted view of the zero-padded map each:
    # five times faster on the CPU than extract_patches, and zero padding leaves
    # positions outside the map out of the sum (m_hat >= 0, so relu(0 - m) = 0).
    half = zone_size // 2
    height, width = m_hat.shape[1], m_hat.shape[2]
    padded = tf.pad(m_hat, [[0, 0], [half, half], [half, half], [0, 0]])
    weights = _lateral_weights(zone_size).reshape(zone_size, zone_size)
    terms = [
        float(weights[i, j])
        * tf.nn.relu(padded[:, i : i + height, j : j + width, :] - m_hat)
        for i in range(zone_size)
        for j in range(zone_size)
        if weights[i, j] > 0
    ]
    surround = tf.add_n(terms) if terms else tf.zeros_like(m_hat)
    inhibition = inhibition_base * tf.exp(-zone_mean) + inhibition_strength * surround
    inhibition_norm = tf.sqrt(
        tf.reduce_sum(tf.square(inhibition), axis=[1, 2], keepdims=True)
    )
    inhibition_hat = inhibition / tf.maximum(inhibition_norm, _TINY)
    # "not (m_hat <= T_hat)" keeps a NaN map, so a NaN gradient is passed on.
    return tf.cast(tf.logical_not(m_hat <= inhibition_hat), tf.float32)


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


def _log_keep(g32, zone_size, sigma):
    """The centre-surround spatial keep map [N, H, W, 1] of a rank-4 gradient."""
    if g32.shape[1] is None or g32.shape[2] is None:
        raise ValueError(
            "The `log` rule needs static spatial dimensions. "
            f"Received a gradient of shape {g32.shape}."
        )
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(g32), axis=3, keepdims=True))
    return _log_keep_from_magnitude(magnitude, zone_size=zone_size, sigma=sigma)


# Compiled with XLA for the same reason as `_lateral_keep_from_magnitude`.
@tf.function(jit_compile=True)
def _log_keep_from_magnitude(magnitude, *, zone_size, sigma):
    half = zone_size // 2
    height, width = magnitude.shape[1], magnitude.shape[2]
    # Reflect padding as a gather of static indices: the same as tf.pad's REFLECT
    # where that is defined (half < size), and NumPy's repeated reflection on maps
    # smaller than the zone, where tf.pad fails.
    padded = tf.gather(magnitude, _reflect_indices(height, half), axis=1)
    padded = tf.gather(padded, _reflect_indices(width, half), axis=2)
    kernel = _log_kernel(zone_size, sigma)
    # r = sum_p K_p (m_p - m_centre): exactly 0 on a constant map, which is kept.
    terms = [
        float(kernel[i, j]) * (padded[:, i : i + height, j : j + width, :] - magnitude)
        for i in range(zone_size)
        for j in range(zone_size)
        if (i, j) != (half, half) and kernel[i, j] != 0
    ]
    response = tf.add_n(terms) if terms else tf.zeros_like(magnitude)
    # "not (r < 0)" keeps a NaN response, so a NaN gradient is passed on.
    return tf.cast(tf.logical_not(response < 0), tf.float32)


def _uniform(shape, dtype, config, seed):
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
    threshold = _kth_largest_per_row(keys, tf.maximum(num_chosen, 1), size)
    chosen = tf.logical_and(eligible, keys >= threshold[..., tf.newaxis])
    return tf.logical_and(chosen, (num_chosen > 0)[..., tf.newaxis])


def _matched_control(g, g32, masked, keep, *, rule, scope, uniform):
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
    positions = rule in _POSITION_RULES
    if positions:
        # A position is a unit: eligible where any channel is finite and non-zero.
        eligible_units = tf.reduce_any(eligible, axis=3, keepdims=True)
        kept_units = tf.reduce_any(kept, axis=3, keepdims=True)
        axes = (1, 2, 3)
    else:
        eligible_units, kept_units = eligible, kept
        local = rank == 4 and rule == "local"
        axes = (1, 2) if local else _neighbourhood_axes(rank, scope)
    by_map = rank == 4 and axes != (3,)
    if None in (g.shape[1:3] if by_map else g.shape[-1:]):
        raise ValueError(
            "The matched control (`control=True`) needs static neighbourhood sizes. "
            f"Received a gradient of shape {g.shape}."
        )
    if by_map:
        height, width = g.shape[1], g.shape[2]
        chosen = _choose_uniformly(
            _spatial_rows(eligible_units),
            tf.reduce_sum(tf.cast(_spatial_rows(kept_units), tf.int32), axis=-1),
            uniform,
        )
        chosen = _from_spatial_rows(chosen, height, width)
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


# Compiled with XLA: four reductions over the gradient fuse into one pass.
@tf.function(jit_compile=True)
def _statistics(g32, keep):
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


def _apply_rule(g, g32, rule, config, seed):
    """Applies `rule`; returns `(masked, keep, axes)`.

    The rule's output before `rescale`, its float32 keep indicator (per entry, or
    per position `[N, H, W, 1]` for `lateral` and `log`) and the axes of the
    neighbourhood that `rescale` uses.
    """
    rank = g.shape.rank
    axes = _neighbourhood_axes(rank, config.scope)
    if rule == "mean" and not config.soft:
        masked, tau = _mean_mask(g, factor=_mean_factor(config), axes=tuple(axes))
        # The keep indicator only where the statistics or the control need it.
        return masked, lambda: tf.cast(tf.logical_not(tf.abs(g32) < tau), tf.float32), axes
    if rule == "mean":
        magnitude = tf.abs(g32)
        tau = _mean_factor(config) * tf.reduce_mean(magnitude, axis=axes, keepdims=True)
        masked, keep = _threshold_mask(g, magnitude, tau, config.soft)
    elif rule == "local":
        magnitude = tf.abs(g32)
        # SAME average pooling does not count the padding: a true local mean.
        local_mean = tf.nn.avg_pool2d(magnitude, config.kernel_size, 1, "SAME")
        masked, keep = _threshold_mask(
            g, magnitude, _mean_factor(config) * local_mean, config.soft
        )
        axes = (1, 2)
    elif rule == "topk":
        magnitude = tf.abs(g32)
        tau = _topk_threshold(magnitude, config.keep_fraction, config.scope)
        masked, keep = _threshold_mask(g, magnitude, tau, config.soft)
    elif rule in _POSITION_RULES:
        if rule == "lateral":
            keep = _lateral_keep(
                g32, config.zone_size, config.inhibition_base, config.inhibition_strength
            )
        else:
            keep = _log_keep(g32, config.zone_size, config.sigma)
        masked = g * tf.cast(keep, g.dtype)
        axes = (1, 2)
    else:  # random: a mask of the requested sparsity that knows nothing.
        uniform = _uniform(tf.shape(g), tf.float32, config, seed)
        keep = tf.cast(uniform < config.keep_fraction, tf.float32)
        masked = g * tf.cast(keep, g.dtype)
        axes = (1, 2) if rank == 4 else (1,)
    return masked, keep, axes


def mask_gradient(g, config, seed=None, measure=True):
    """Masks a gradient by the rule of `config` (the backward of the op).

    Args:
      g: The gradient, rank 2 `[N, D]` or rank 4 `[N, H, W, C]`, any float dtype.
      config: A `MaskConfig`.
      seed: For the `random` rule and the matched control, a `[2]` integer tensor
        for a stateless draw; if None, `config.seed` is used (`[seed, 0]`), and with
        no seed at all a fresh stateful draw is made.
      measure: A Python bool or a scalar bool tensor: whether to compute the
        statistics (they cost about as much as the mask itself); zeros when false.
        Defaults to True.

    Returns:
      `(masked, statistics)`: the masked gradient, with the dtype of `g`, and a
      float32 `[2]` tensor `[kept_fraction, kept_l1]`: the share of the finite
      non-zero entries of `g` that the mask passes (entries, not positions, for
      `lateral` and `log`), and the share of their L1 mass it selects (before
      `rescale` and the control's scaling). Entries that arrive as zero are not
      counted; both are 1 for `none` and where `g` has no finite non-zero entry.
      With `control=True` they describe the control's own selection.
    """
    g = tf.convert_to_tensor(g)
    rank = g.shape.rank
    _check_tensor(g)
    rule = config.rule
    if rule == "none" or (rule in ("mean", "local") and config.alpha == 0):
        # alpha = 0 keeps every entry, and so does its control.
        return g, tf.ones([2], tf.float32)
    if rank == 2 and rule in ("local",) + _POSITION_RULES:
        # No spatial neighbourhood: they behave as `mean` over the D units.
        rule = "mean"
    # Thresholds are computed in float32 whatever the gradient's dtype.
    g32 = tf.cast(g, tf.float32)
    masked, keep, axes = _apply_rule(g, g32, rule, config, seed)
    keep_of = keep if callable(keep) else lambda: keep
    if config.rescale:
        masked = _rescale(g, masked, axes)
    if config.control:
        masked, chosen = _matched_control(
            g,
            g32,
            masked,
            keep_of(),
            rule=rule,
            scope=config.scope,
            uniform=lambda shape: _uniform(shape, tf.float64, config, seed),
        )
        keep_of = lambda: chosen  # noqa: E731  (the control's own selection)
    if isinstance(measure, bool):
        return masked, _statistics(g32, keep_of()) if measure else tf.zeros([2], tf.float32)
    return masked, tf.cond(
        measure, lambda: _statistics(g32, keep_of()), lambda: tf.zeros([2], tf.float32)
    )


def masked_identity(x, config, *, enabled=True, seed=None, probe=None):
    """Identity forward whose backward masks the gradient by `config`.

    The building block of `gradient_mask` and of the `GradientMask` layer. Every
    tensor reaches the `tf.custom_gradient` function positionally: passed by keyword,
    custom_gradient silently falls back to plain autodiff (tensorflow#65839). Switches
    are read by the caller and passed in as tensors, so the decorated function reads
    no variable (tensorflow#31945).

    Args:
      x: The activation, rank 2 or rank 4.
      config: A `MaskConfig`.
      enabled: A Python bool or a scalar bool tensor; when false the gradient passes
        unchanged, with no retracing when a tensor flips.
      seed: A `[2]` integer tensor keying the draws of the `random` rule and of the
        matched control, or None.
      probe: A float32 `[2]` tensor, or None. While its first entry is non-zero, its
        gradient is this mask point's `[kept_fraction, kept_l1]` (see
        `mask_gradient`; `[1, 1]` when disabled), so a training step can report them
        without side effects; while it is zero (or with no probe) the statistics are
        not computed and its gradient is zero. A training step that measures every
        N steps switches it.

    Returns:
      A tensor equal to `x`.
    """
    x = tf.convert_to_tensor(x)
    _check_tensor(x)
    use_seed = seed is not None
    seed = tf.cast(seed, tf.int64) if use_seed else tf.zeros([2], tf.int64)
    measure = probe is not None
    probe = tf.zeros([2], tf.float32) if probe is None else probe
    static_enabled = enabled if isinstance(enabled, bool) else None
    enabled = tf.convert_to_tensor(enabled, tf.bool)

    @tf.custom_gradient
    def identity(x, enabled, seed, probe):
        def grad(upstream):
            def masked():
                return mask_gradient(
                    upstream,
                    config,
                    seed if use_seed else None,
                    measure=measure and probe[0] != 0,
                )

            def passed():
                return upstream, tf.ones([2], tf.float32)

            if static_enabled is None:
                result, statistics = tf.cond(enabled, masked, passed)
            else:
                result, statistics = masked() if static_enabled else passed()
            return result, None, None, statistics

        return tf.identity(x), grad

    return identity(x, enabled, seed, probe)


def gradient_mask(
    x,
    rule="mean",
    *,
    scope="spatial",
    alpha=1.0,
    kernel_size=3,
    keep_fraction=0.5,
    soft=False,
    rescale=False,
    control=False,
    zone_size=7,
    inhibition_base=0.1,
    inhibition_strength=0.9,
    sigma=1.0,
    seed=None,
):
    """Identity forward; backward lets strong gradients through, masks weak ones.

    Always masks: it is the building block. The `GradientMask` layer decides when
    to use it (only with `training=True`).

    For each sample, a threshold `tau` is computed in float32 from `|g|` over a
    neighbourhood; hard mode keeps `g` where `|g| >= tau`, soft mode returns
    `sign(g) * max(|g| - tau, 0)`.

    Args:
      x: A float tensor, rank 2 `[N, D]` or rank 4 `[N, H, W, C]` (channels last).
      rule: One of `"none"` (no masking), `"mean"` (`tau = alpha * mean |g|` over the
        neighbourhood), `"local"` (`tau = alpha *` the `kernel_size` x
        `kernel_size` spatial mean of `|g|`, padding not counted), `"topk"` (keep the
        `ceil(keep_fraction * n)` largest `|g|` of each neighbourhood, ties kept, n
        counting only its non-zero entries), `"lateral"` (LICNN lateral inhibition
        between positions, one spatial mask shared by all channels), `"log"`
        (centre-surround: keep the positions where the zero-sum `-LoG_sigma`
        filter of the channel-pooled magnitude map, reflect padding, is >= 0; one
        spatial mask shared by all channels) or `"random"` (keep each entry with
        probability `keep_fraction`, whatever its size). Defaults to `"mean"`.
      scope: Neighbourhood of `mean` and `topk`: `"spatial"` (the H x W positions of
        one sample and channel; on rank 2 the D units of one sample) or `"channel"`
        (the C channels at one sample and position). Defaults to `"spatial"`.
      alpha: Threshold factor of `mean` and `local`, >= 0. Defaults to 1.0.
      kernel_size: Window of `local`, a positive odd integer. Defaults to 3.
      keep_fraction: Share kept by `topk` and `random`, in (0, 1]. Defaults to 0.5.
      soft: Shrink by `tau` instead of cutting; not defined for `lateral` and `log`.
        Defaults to False.
      rescale: Multiply the masked gradient by `||g||_1 / ||g_masked||_1` per
        neighbourhood (per feature map for `local`, `lateral`, `log`, `random`),
        keeping the step size. Defaults to False.
      control: The rule's matched control, for `mean`, `local`, `topk`, `lateral`
        and `log` (not with `soft`): in each neighbourhood (a feature map for
        `spatial` scope, `local` and rank 2; the channels at one position for
        `channel` scope; the positions of one sample for `lateral` and `log`), as
        many finite non-zero entries (positions) as the rule kept, chosen uniformly
        at random among the finite non-zero ones and scaled to the L1 mass of the
        rule's output. Non-finite entries are passed on. Defaults to False.
      zone_size: Zone of `lateral` and window of `log`, a positive odd integer;
        `log` reflects the map at its borders as NumPy's `reflect` padding does,
        repeatedly where the map is smaller than the window. Defaults to 7.
      inhibition_base: `lateral`'s base inhibition a, >= 0. Defaults to 0.1.
      inhibition_strength: `lateral`'s neighbour inhibition b, >= 0. Defaults to 0.9.
      sigma: Scale of `log`'s Laplacian of Gaussian, > 0. Defaults to 1.0.
      seed: Integer seed of the stateless draws of `random` and of the control (the
        same draw for the same shape on every call), or None for a fresh draw each
        call. The layer keys its draws by its seed and the training step instead.
        Defaults to None.

    Returns:
      A tensor equal to `x` whose gradient is masked.

    Raises:
      ValueError: for an invalid parameter, or a tensor that is not rank 2 or 4.

    References:
      Jiang et al., "Gradient Mask: Lateral Inhibition Mechanism Improves
      Performance in Artificial Neural Networks", arXiv:2208.06918, 2022.
    """
    config = MaskConfig(
        rule=rule,
        scope=scope,
        alpha=alpha,
        kernel_size=kernel_size,
        keep_fraction=keep_fraction,
        soft=soft,
        rescale=rescale,
        control=control,
        zone_size=zone_size,
        inhibition_base=inhibition_base,
        inhibition_strength=inhibition_strength,
        sigma=sigma,
        seed=seed,
    )
    return masked_identity(x, config)
