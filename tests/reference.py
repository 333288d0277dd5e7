"""An independent NumPy reference of the Gradient Mask backward (METHOD.md §2).

Written from the specification with loops where they keep it obvious, not from
`ops.py`. Thresholds are computed in float64 here, so `reference_mask` also returns
the entries that sit within rounding of their threshold: the op (float32) may decide
those either way.
"""

import math

import numpy as np

BORDER = 1e-5


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
        border[n] = np.abs(m_hat - t_hat) <= BORDER * np.maximum(t_hat, 1e-30)
    return keep, border


def reference_mask(
    g,
    rule="mean",
    *,
    scope="spatial",
    alpha=1.0,
    kernel_size=3,
    keep_fraction=0.5,
    soft=False,
    rescale=False,
    zone_size=7,
    inhibition_base=0.1,
    inhibition_strength=0.9,
    random_keep=None,
):
    """Returns `(expected, borderline)` for gradient `g` (a NumPy array).

    `borderline` marks entries within rounding of their threshold. For the `random`
    rule, pass the draw's keep map as `random_keep` (NumPy cannot replay TF's RNG).
    """
    dtype = g.dtype
    g64 = g.astype(np.float64)
    magnitude = np.abs(g64)
    borderline = np.zeros(g.shape, bool)
    rank = g.ndim
    if rank == 2 and rule in ("local", "lateral"):
        rule, scope = "mean", "spatial"
    if rule == "none":
        return g.copy(), borderline
    tau = None
    if rule == "mean":
        tau = np.zeros_like(magnitude)
        for index in _neighbourhoods(g.shape, scope):
            tau[index] = alpha * magnitude[index].mean()
    elif rule == "local":
        tau = alpha * _local_mean(magnitude, kernel_size)
    elif rule == "topk":
        tau = np.zeros_like(magnitude)
        for index in _neighbourhoods(g.shape, scope):
            values = np.sort(magnitude[index].ravel())[::-1]
            # The budget counts the non-zero entries only.
            num_nonzero = np.count_nonzero(values)
            if num_nonzero:
                tau[index] = values[_kept(keep_fraction, num_nonzero) - 1]
    if tau is not None:
        if rule != "topk":  # topk's threshold is one of the entries: exact.
            borderline = np.abs(magnitude - tau) <= BORDER * np.maximum(tau, 1e-30)
        if soft:
            masked = np.sign(g64) * np.maximum(magnitude - tau, 0.0)
        else:
            masked = np.where(magnitude >= tau, g64, 0.0)
    elif rule == "lateral":
        keep, border = _lateral_keep(
            g64, zone_size, inhibition_base, inhibition_strength
        )
        masked = g64 * keep[..., None]
        borderline = np.broadcast_to(border[..., None], g.shape)
    else:  # random
        masked = g64 * random_keep
    if rescale:
        if rule in ("local", "lateral", "random"):
            groups = _neighbourhoods(g.shape, "spatial")
        else:
            groups = _neighbourhoods(g.shape, scope)
        for index in groups:
            kept = np.abs(masked[index]).sum()
            if kept > 0:
                masked[index] *= magnitude[index].sum() / kept
    return masked.astype(dtype), borderline
