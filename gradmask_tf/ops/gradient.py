"""The op's custom gradient: `gradient_mask`, `masked_identity` and `mask_gradient`.

`mask_gradient` is the backward pass: the rule (`rules.py`), `rescale`, the matched
control (`control.py`) and the statistics (`statistics.py`), in `keras.ops`.
`masked_identity` wraps it in the backend's custom gradient (`backend.py`) with its
switches; `gradient_mask` is the public op.
"""

import keras

from gradmask_tf.mask_params import DEFAULTS, POSITION_RULES
from gradmask_tf.ops import backend
from gradmask_tf.ops.config import MaskConfig
from gradmask_tf.ops.control import matched_control, rule_mass
from gradmask_tf.ops.rules import apply_rule, restore_l1_norm
from gradmask_tf.ops.statistics import kept_statistics


def _check_tensor(tensor):
    """The op is defined on float tensors of rank 2 or 4."""
    if len(tensor.shape) not in (2, 4):
        raise ValueError(
            "Gradient Mask applies to rank-2 [N, D] or rank-4 [N, H, W, C] tensors. "
            f"Received a tensor of shape {tuple(tensor.shape)}."
        )
    if not keras.backend.is_float_dtype(tensor.dtype):
        raise ValueError(
            "Gradient Mask needs a float tensor. "
            f"Received dtype {keras.backend.standardize_dtype(tensor.dtype)}."
        )


def _no_statistics():
    return keras.ops.zeros([2], "float32")


def mask_gradient(g, config, seed=None, measure=True):
    """Masks a gradient by the rule of `config` (the backward of the op).

    Args:
      g: The gradient, rank 2 `[N, D]` or rank 4 `[N, H, W, C]`, any float dtype.
      config: A `MaskConfig`.
      seed: For the `random` rule and the matched control, a `[2]` integer tensor
        for a stateless draw; if None, `config.seed` is used (`[seed, 0]`), and with
        no seed at all a fresh draw is made.
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
    g = keras.ops.convert_to_tensor(g)
    rank = len(g.shape)
    _check_tensor(g)
    rule = config.rule
    if rule == "none" or (rule in ("mean", "local") and config.alpha == 0):
        # alpha = 0 keeps every entry, and so does its control.
        return g, keras.ops.ones([2], "float32")
    if rank == 2 and rule in ("local",) + POSITION_RULES:
        # No spatial neighbourhood: they behave as `mean` over the D units.
        rule = "mean"
    # Thresholds are computed in float32 whatever the gradient's dtype.
    g32 = keras.ops.cast(g, "float32")
    masked, keep, axes = apply_rule(g, g32, rule, config, seed)
    keep_of = keep if callable(keep) else lambda: keep
    if config.rescale:
        masked = restore_l1_norm(g, masked, axes)
    if config.control:
        # The control matches the rule's count and L1 mass per neighbourhood: the
        # rule's output is freed once measured, before the control's is made.
        mass = rule_mass(masked, rule=rule, scope=config.scope)
        del masked
        masked, chosen = matched_control(
            g,
            g32,
            keep_of,
            mass,
            rule=rule,
            scope=config.scope,
            seed=config.seed if seed is None else seed,
        )
        # The control's own selection.
        keep_of = lambda: keras.ops.cast(chosen, "float32")  # noqa: E731
    if isinstance(measure, bool):
        return masked, kept_statistics(g32, keep_of()) if measure else _no_statistics()
    return masked, keras.ops.cond(
        measure, lambda: kept_statistics(g32, keep_of()), _no_statistics
    )


def masked_identity(x, config, *, enabled=True, seed=None, probe=None):
    """Identity forward whose backward masks the gradient by `config`.

    The building block of `gradient_mask` and of the `GradientMask` layer, on the
    backend's own custom gradient (`backend.custom_identity`). Switches are read by
    the caller and passed in as tensors, so the gradient function reads no variable.

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
    x = keras.ops.convert_to_tensor(x)
    _check_tensor(x)
    use_seed = seed is not None
    measure = probe is not None
    static_enabled = enabled if isinstance(enabled, bool) else None
    enabled, seed, probe = backend.convert_switches(enabled, seed, probe)

    def backward(upstream, enabled, seed, probe):
        def masked():
            return mask_gradient(
                upstream,
                config,
                seed if use_seed else None,
                measure=measure and probe[0] != 0,
            )

        def passed():
            return upstream, keras.ops.ones([2], "float32")

        if static_enabled is None:
            return keras.ops.cond(enabled, masked, passed)
        return masked() if static_enabled else passed()

    return backend.custom_identity(x, enabled, seed, probe, backward)


def gradient_mask(
    x,
    rule=DEFAULTS["rule"],
    *,
    scope=DEFAULTS["scope"],
    alpha=DEFAULTS["alpha"],
    kernel_size=DEFAULTS["kernel_size"],
    keep_fraction=DEFAULTS["keep_fraction"],
    soft=DEFAULTS["soft"],
    rescale=DEFAULTS["rescale"],
    control=DEFAULTS["control"],
    zone_size=DEFAULTS["zone_size"],
    inhibition_base=DEFAULTS["inhibition_base"],
    inhibition_strength=DEFAULTS["inhibition_strength"],
    sigma=DEFAULTS["sigma"],
    seed=DEFAULTS["seed"],
):
    """Identity forward; backward lets strong gradients through, masks weak ones.

    Always masks: it is the building block. The `GradientMask` layer decides when
    to use it (only with `training=True`).

    For each sample, a threshold `tau` is computed in float32 from `|g|` over a
    neighbourhood; hard mode keeps `g` where `|g| >= tau`, soft mode returns
    `sign(g) * max(|g| - tau, 0)`. Non-finite entries (NaN, +-Inf) are passed on as
    they are and count as zero in every threshold; no NaN is created.

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
        keeping the step size; norms over the finite entries, no rescale where the
        factor is not finite in float32. Defaults to False.
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
