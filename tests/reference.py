"""An independent NumPy reference of the Gradient Mask backward (METHOD.md §2).

Written from the specification with loops where they keep it obvious, not from
`ops.py`. The rules decide on `|g|` rounded to float32 (beyond its range Inf, below
its normal range zero) but compute in float64 here, so `reference_mask` also returns
the entries that sit within rounding of their threshold: the op (float32) may decide
those either way. Non-finite entries ("Non-finite entries" in METHOD.md §2) are
passed on as they are and count as zero everywhere else. `reference_statistics`
gives the mask metrics. The matched control draws at random, so its tests check its
defining properties against the rule's reference output instead (tests/test_ops.py).
"""

import itertools
import math

import numpy as np

BORDER = 1e-5
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
# Position rules: the op's magnitude map holds to about 2^-43 of the sample's largest
# (squares below float32's range are lost), so decisions that close are borderline.
POSITION_SLACK = 1e-10


def float32_magnitude(g):
    """`|g|` as the rules see it, in float64: rounded to float32, so a float64 entry
    beyond float32's range is Inf, and a magnitude below float32's smallest normal
    number (a denormal) is zero. NaN stays NaN."""
    with np.errstate(over="ignore"):
        magnitude = np.abs(np.asarray(g).astype(np.float64)).astype(np.float32)
    magnitude = magnitude.astype(np.float64)
    magnitude[magnitude < FLOAT32_TINY] = 0.0
    return magnitude


def _kept(keep_fraction, size):
    return max(1, int(math.ceil(round(keep_fraction * size, 9))))


def _neighbourhoods(shape, scope):
    """Yields index tuples, each selecting one neighbourhood of an array."""
    if len(shape) == 2:
        for n in range(shape[0]):
            yield (n, slice(None))
    elif scope == "spatial":
        for n in range(shape[0]):
            for c in range(shape[3]):
                yield (n, slice(None), slice(None), c)
    else:
        for n in range(shape[0]):
            for h in range(shape[1]):
                for w in range(shape[2]):
                    yield (n, h, w, slice(None))


def _local_mean(magnitude, kernel_size):
    n, height, width, channels = magnitude.shape
    half = kernel_size // 2
    result = np.zeros_like(magnitude)
    for i in range(height):
        for j in range(width):
            window = magnitude[
                :, max(0, i - half) : i + half + 1, max(0, j - half) : j + half + 1, :
            ]
            result[:, i, j, :] = window.mean(axis=(1, 2))
    return result


def _lateral_keep(g, zone_size, base, strength):
    """Keep and borderline maps [N, H, W] of the LICNN rule, position by position."""
    n_samples, height, width, _ = g.shape
    half = zone_size // 2
    keep = np.zeros((n_samples, height, width), bool)
    border = np.zeros((n_samples, height, width), bool)
    for n in range(n_samples):
        m = np.sqrt((g[n] ** 2).sum(axis=-1))
        norm = np.sqrt((m**2).sum())
        m_hat = m / norm if norm > 0 else m
        inhibition = np.zeros_like(m_hat)
        for i in range(height):
            for j in range(width):
                zone = [
                    (p, q)
                    for p in range(i - half, i + half + 1)
                    for q in range(j - half, j + half + 1)
                    if 0 <= p < height and 0 <= q < width
                ]
                zone_mean = np.mean([m_hat[p, q] for p, q in zone])
                surround = 0.0
                for p, q in zone:
                    if (p, q) == (i, j):
                        continue
                    d = math.hypot(p - i, q - j)
                    weight = d / zone_size * math.exp(-d / zone_size)
                    surround += weight * max(m_hat[p, q] - m_hat[i, j], 0.0)
                inhibition[i, j] = base * math.exp(-zone_mean) + strength * surround
        t_norm = np.sqrt((inhibition**2).sum())
        t_hat = inhibition / t_norm if t_norm > 0 else inhibition
        keep[n] = m_hat > t_hat
        border[n] = np.abs(m_hat - t_hat) <= BORDER * t_hat + POSITION_SLACK
    return keep, border


def _log_keep(g, zone_size, sigma):
    """Keep and borderline maps [N, H, W] of the `log` rule, position by position."""
    n_samples, height, width, _ = g.shape
    half = zone_size // 2
    offsets = range(-half, half + 1)
    # -LoG_sigma sampled at integer offsets from the centre, then made zero-sum.
    kernel = np.array(
        [
            [
                1.0
                / (math.pi * sigma**4)
                * (1.0 - (x * x + y * y) / (2.0 * sigma**2))
                * math.exp(-(x * x + y * y) / (2.0 * sigma**2))
                for y in offsets
            ]
            for x in offsets
        ]
    )
    kernel -= kernel.mean()
    keep = np.zeros((n_samples, height, width), bool)
    border = np.zeros((n_samples, height, width), bool)
    for n in range(n_samples):
        m = np.sqrt((g[n] ** 2).sum(axis=-1))
        slack = POSITION_SLACK * np.abs(kernel).sum() * m.max()
        padded = np.pad(m, half, mode="reflect")
        for i in range(height):
            for j in range(width):
                window = padded[i : i + zone_size, j : j + zone_size]
                response = (kernel * (window - m[i, j])).sum()
                size = (np.abs(kernel) * np.abs(window - m[i, j])).sum()
                keep[n, i, j] = response >= 0
                border[n, i, j] = size > 0 and abs(response) <= BORDER * size + slack
    return keep, border


def _rule(g64, magnitude, rule, options, random_keep):
    """`(masked, keep, borderline)` of a rule before `rescale`; `keep` per entry.

    `g64` holds the finite entries (the others zero), `magnitude` the rules' view of
    them (`float32_magnitude`, the others zero).
    """
    borderline = np.zeros(g64.shape, bool)
    scope = options["scope"]
    if rule == "none":
        return g64.copy(), np.ones(g64.shape, bool), borderline
    tau = None
    if rule == "mean":
        tau = np.zeros_like(magnitude)
        for index in _neighbourhoods(g64.shape, scope):
            tau[index] = options["alpha"] * magnitude[index].mean()
    elif rule == "local":
        tau = options["alpha"] * _local_mean(magnitude, options["kernel_size"])
    elif rule == "topk":
        tau = np.zeros_like(magnitude)
        for index in _neighbourhoods(g64.shape, scope):
            values = np.sort(magnitude[index].ravel())[::-1]
            # The budget counts the non-zero entries only.
            num_nonzero = np.count_nonzero(values)
            if num_nonzero:
                kept = _kept(options["keep_fraction"], num_nonzero)
                tau[index] = values[kept - 1]
    if tau is not None:
        if rule != "topk":  # topk's threshold is one of the entries: exact.
            borderline = np.abs(magnitude - tau) <= BORDER * np.maximum(tau, 1e-30)
        if options["soft"]:
            return (
                np.sign(g64) * np.maximum(np.abs(g64) - tau, 0.0),
                magnitude > tau,
                borderline,
            )
        keep = magnitude >= tau
        return np.where(keep, g64, 0.0), keep, borderline
    if rule in ("lateral", "log"):
        if rule == "lateral":
            keep, border = _lateral_keep(
                magnitude,
                options["zone_size"],
                options["inhibition_base"],
                options["inhibition_strength"],
            )
        else:
            keep, border = _log_keep(magnitude, options["zone_size"], options["sigma"])
        keep = np.broadcast_to(keep[..., None], g64.shape)
        borderline = np.broadcast_to(border[..., None], g64.shape)
        return g64 * keep, keep, borderline
    keep = np.asarray(random_keep) != 0  # random
    return g64 * keep, keep, borderline


def _rescale(magnitude, masked, groups, borderline):
    """`masked` times `||g||_1 / ||masked||_1` per group, over the finite entries.

    Left as it is where `masked` has no mass or the factor is beyond float32's range.
    A group near either limit is borderline: the op's float32 sums of `|g| / n` lose
    what falls below float32's normal range.
    """
    for index in groups:
        size = magnitude[index].size
        kept = float32_magnitude(masked[index]).sum()
        if kept == 0:
            continue
        factor = magnitude[index].sum() / kept
        if kept < 1e6 * size**2 * FLOAT32_TINY or 1e-3 < factor / FLOAT32_MAX < 1e3:
            borderline[index] = True
        if factor <= FLOAT32_MAX:
            masked[index] *= factor
    return masked


def _options(g, rule, scope, options):
    if g.ndim == 2 and rule in ("local", "lateral", "log"):
        rule, scope = "mean", "spatial"
    defaults = dict(
        alpha=1.0,
        kernel_size=3,
        keep_fraction=0.5,
        soft=False,
        zone_size=7,
        inhibition_base=0.1,
        inhibition_strength=0.9,
        sigma=1.0,
    )
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    return rule, {**defaults, **options, "scope": scope}


def _rescale_groups(shape, rule, scope):
    """The neighbourhoods of `rescale`: feature maps for the rules without a scope."""
    if rule in ("local", "lateral", "log", "random"):
        return _neighbourhoods(shape, "spatial")
    return _neighbourhoods(shape, scope)


def reference_mask(g, rule="mean", *, scope="spatial", rescale=False, random_keep=None,
                   **options):
    """Returns `(expected, borderline)` for gradient `g` (a NumPy array).

    `options` are the op's other parameters (`alpha`, `keep_fraction`, `sigma`, ...).
    `borderline` marks entries within rounding of their threshold (and whole
    neighbourhoods whose `rescale` factor is). For the `random` rule, pass the draw's
    keep map as `random_keep` (NumPy cannot replay TF's RNG).
    """
    rule, options = _options(g, rule, scope, options)
    g64 = np.asarray(g).astype(np.float64)
    magnitude = float32_magnitude(g)
    finite = np.isfinite(magnitude)
    magnitude = np.where(finite, magnitude, 0.0)
    masked, _, borderline = _rule(np.where(finite, g64, 0.0), magnitude, rule, options,
                                  random_keep)
    if rescale and rule != "none":
        borderline = borderline.copy()
        groups = _rescale_groups(g.shape, rule, options["scope"])
        masked = _rescale(magnitude, masked, groups, borderline)
    # Non-finite entries are passed on as they are; a product beyond g's dtype is +-Inf.
    with np.errstate(over="ignore"):
        return np.where(finite, masked, g64).astype(g.dtype), borderline


def reference_rescale(g, masked, rule="mean", *, scope="spatial"):
    """`(rescaled, borderline)`: `rescale` applied to a rule's output `masked` of `g`.

    For checking `rescale` on the op's own output where the rule's values are only
    known to rounding (soft mode in float16, say), which the factor would amplify.
    """
    rule, options = _options(g, rule, scope, {})
    magnitude = float32_magnitude(g)
    finite = np.isfinite(magnitude)
    rescaled = np.where(finite, np.asarray(masked).astype(np.float64), 0.0)
    borderline = np.zeros(g.shape, bool)
    groups = _rescale_groups(g.shape, rule, options["scope"])
    rescaled = _rescale(np.where(finite, magnitude, 0.0), rescaled, groups, borderline)
    with np.errstate(over="ignore"):
        return np.where(finite, rescaled, masked).astype(g.dtype), borderline


def reference_keep(g, rule="mean", *, scope="spatial", random_keep=None, **options):
    """Returns `(keep, borderline)`: which entries the rule's mask passes."""
    rule, options = _options(g, rule, scope, options)
    magnitude = float32_magnitude(g)
    finite = np.isfinite(magnitude)
    finite_g = np.where(finite, np.asarray(g).astype(np.float64), 0.0)
    _, keep, borderline = _rule(
        finite_g, np.where(finite, magnitude, 0.0), rule, options, random_keep
    )
    return keep, borderline


def reference_statistics(g, keep):
    """`(kept_fraction, kept_l1)` of a keep map over the finite non-zero entries of g.

    Non-zero in float32: denormals count as zero. Both are 1 where g has no finite
    non-zero entry.
    """
    magnitude = float32_magnitude(g)
    counted = np.isfinite(magnitude) & (magnitude > 0)
    passed = counted & np.broadcast_to(keep, g.shape)
    if not counted.any():
        return 1.0, 1.0
    g64 = np.abs(np.asarray(g).astype(np.float64))
    return passed.sum() / counted.sum(), g64[passed].sum() / g64[counted].sum()


# Every rule, scope and option on both ranks ("soft" is not defined for lateral,
# log; "channel" scope only for mean and topk): the cases both backends' op tests run.
GRID = [
    (rule, scope, soft, rescale, rank)
    for rule, scope, soft, rescale, rank in itertools.product(
        ("none", "mean", "local", "topk", "lateral", "log"),
        ("spatial", "channel"),
        (False, True),
        (False, True),
        (2, 4),
    )
    if not (soft and rule in ("lateral", "log"))
    and not (scope == "channel" and rule in ("none", "local", "lateral", "log"))
]
