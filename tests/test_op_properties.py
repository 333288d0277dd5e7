"""The op survives any input (METHOD.md §2, "Non-finite entries and extreme values").

Hypothesis draws a rule with its options (every combination METHOD allows), a shape
(rank 2, or rank 4 with maps from 1x1 to 5x5, so the kernels' borders are covered),
a dtype, and values that mix ordinary ones with zeros, denormals, very large values,
NaN and +-Inf. Each case runs eagerly and compiled (XLA on TensorFlow, `jax.jit` on
JAX) against `tests/reference.py` and the invariants: the gradient's dtype out, every
non-finite entry passed on as it is, no NaN where the gradient had none. The matched
control draws at random: its defining properties are checked instead of equality.

Derandomized, with no example database and a fixed number of examples, so every run
tries the same cases (about a minute in all); `@example`s pin zeros, denormals, very
large values, NaN, +Inf and -Inf. The JAX half runs in one subprocess with TensorFlow
blocked (`tests/test_jax_half.py`), without float64 (JAX computes it in float32 unless
x64 is enabled).
"""

import itertools

import keras
import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gradmask_tf import gradient_mask
from tests import backends
from tests.reference import (
    FLOAT32_MAX,
    float32_magnitude,
    reference_mask,
    reference_rescale,
)

BACKEND = keras.backend.backend()
DTYPES = ("float16", "bfloat16", "float32") + (("float64",) if BACKEND == "tensorflow" else ())


def _settings(max_examples):
    """Derandomized, no database: the same cases on every run (with the @examples)."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _valid(rule, scope, soft, control):
    """The combinations METHOD.md allows (scope only where the rule has one)."""
    if soft and rule in ("lateral", "log"):
        return False
    if control and (soft or rule in ("none", "random")):
        return False
    return scope == "spatial" or rule in ("mean", "topk")


RULES = ("mean", "topk", "local", "lateral", "log", "random", "none")
# Every rule and option on both ranks: (rule, scope, soft, rescale, control, rank).
CONFIGS = [
    combination
    for combination in itertools.product(
        RULES,
        ("spatial", "channel"),
        (False, True),
        (False, True),
        (False, True),
        (2, 4),
    )
    if _valid(*combination[:3], combination[4])
]
# A few shapes, so that compilations are reused (JAX compiles each eager op once per
# shape): single entries, rows and columns, maps as large as the largest kernel
# (5x5). Every sample is a case of its own: its neighbourhoods are its own.
SHAPES = {2: [(4, 1), (5, 7)], 4: [(4, 1, 1, 2), (3, 4, 1, 1), (2, 5, 5, 3)]}
# Each rule's own parameter, drawn from a few values (zone 1 and 3 reach past 1x1 maps).
PARAMETERS = {
    "mean": ("alpha", (1.0, 0.5, 2.0)),
    "local": ("kernel_size", (3, 1, 5)),
    "topk": ("keep_fraction", (0.5, 0.25, 1.0)),
    "lateral": ("zone_size", (3, 1, 5)),
    "log": ("zone_size", (3, 1, 5)),
    "random": ("keep_fraction", (0.5, 0.2)),
}


def _specials(dtype):
    """Values at the edges of `dtype` and of float32 (where the thresholds live)."""
    info = ml_dtypes.finfo(dtype)
    values = [0.0, -0.0, np.nan, np.inf, -np.inf, float(info.smallest_subnormal),
              -3 * float(info.smallest_subnormal), float(info.max), -float(info.max) / 3]
    if dtype == "float64":  # denormal in float32, and beyond its range
        values += [1e-40, -3e-39, 1e39, -1e300]
    return values


def _scales(dtype):
    """Scales of a sample's ordinary values: tiny (denormal in float32 and in
    `dtype`), huge (float32 sums and squares overflow), as large as `dtype` allows."""
    info = ml_dtypes.finfo(dtype)
    return [1.0, 1e-30, 1e-40, 1e20, float(info.max) / 8, float(info.smallest_normal) / 4]


@st.composite
def cases(draw, configs):
    """`(options, gradient)`: a configuration of the op and the gradient it gets."""
    # The rule first, so that each is drawn as often (and `none` is not the simplest).
    rule = draw(st.sampled_from(sorted({config[0] for config in configs}, key=RULES.index)))
    rule, scope, soft, rescale, control, rank = draw(
        st.sampled_from([config for config in configs if config[0] == rule])
    )
    options = dict(rule=rule, scope=scope, soft=soft, rescale=rescale, control=control, seed=3)
    if rule in PARAMETERS:
        name, values = PARAMETERS[rule]
        options[name] = draw(st.sampled_from(values))
    shape = draw(st.sampled_from(SHAPES[rank]))
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(hnp.arrays(np.float64, shape, elements=st.floats(-4.0, 4.0),
                             fill=st.nothing()))
    scales = draw(st.lists(st.sampled_from(_scales(dtype)), min_size=shape[0],
                           max_size=shape[0]))
    values *= np.reshape(scales, (-1,) + (1,) * (rank - 1))
    edges = st.tuples(st.integers(0, values.size - 1), st.sampled_from(_specials(dtype)))
    for index, value in draw(st.lists(edges, max_size=values.size // 2)):
        values.flat[index] = value
    with np.errstate(over="ignore"):
        return options, values.astype(dtype)


def _fixed(kind, options, shape=(2, 5, 5, 3), dtype="float32"):
    """A case of `kind`: an ordinary gradient with edge values in it (or all zeros)."""
    rng = np.random.default_rng(len(kind))
    g = rng.normal(size=shape)
    edge = rng.random(shape) < 0.2
    if kind == "zeros":
        g[:] = 0.0
    elif kind == "denormals":  # denormals and exact zeros among small normal values
        g = np.where(edge, 3e-40 * np.sign(g), g * 1e-37)
        g[rng.random(shape) < 0.2] = 0.0
    elif kind == "large":  # float32 sums and squares of these overflow
        g = g * 1e37
        g[edge] = 3e38
    else:
        g[edge] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    defaults = dict(rule="mean", scope="spatial", soft=False, rescale=False, control=False,
                    seed=3)
    return {**defaults, **options}, g.astype(dtype)


def backward(g, compiled, options):
    """The gradient that `gradient_mask(x, **options)` sends down for `g`."""
    x = np.ones_like(g)
    return backends.vjp(lambda x: gradient_mask(x, **options), x, g, compiled)


def assert_survives(g, actual):
    """Same dtype; non-finite entries passed on as they are; no NaN created."""
    assert keras.backend.standardize_dtype(actual.dtype) == keras.backend.standardize_dtype(
        g.dtype
    )
    g64, actual64 = g.astype(np.float64), actual.astype(np.float64)
    finite = np.isfinite(float32_magnitude(g))
    np.testing.assert_array_equal(actual64[~finite], g64[~finite])  # NaN equals NaN here
    assert not np.isnan(actual64[~np.isnan(g64)]).any(), "NaN created"


def _tolerance(g, options):
    """Per entry: how far the op may be from the reference (float32 thresholds,
    results rounded to the dtype; soft mode shrinks by tau rounded to the dtype)."""
    eps = float(ml_dtypes.finfo(g.dtype).eps)
    magnitude = np.abs(g.astype(np.float64))
    shrink = (2 * eps + 1e-5) * magnitude if options["soft"] else 0.0
    return shrink, max(4 * eps, 1e-5)


def assert_matches(g, actual, expected, borderline, options):
    """Equal to the reference outside borderline entries, within the tolerance."""
    settled = ~borderline & np.isfinite(float32_magnitude(g))
    shrink, rtol = _tolerance(g, options)
    actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf where both overflowed
        error = np.where(actual64 == expected64, 0.0, np.abs(actual64 - expected64))
    allowed = rtol * np.abs(expected64) + shrink + 1e-30
    bad = settled & ~(error <= allowed)
    assert not bad.any(), (
        f"{bad.sum()} entries differ: actual {actual64[bad][:5]}, "
        f"expected {expected64[bad][:5]}, gradient {g.astype(np.float64)[bad][:5]}"
    )


def _reference(g, options, random_keep=None):
    options = {k: v for k, v in options.items() if k not in ("control", "seed")}
    return reference_mask(g, **options, random_keep=random_keep)


def check_rule(g, options, compiled):
    """One case of a rule without the control, against the reference."""
    actual = backward(g, compiled, options)
    assert_survives(g, actual)
    random_keep = None
    if options["rule"] == "random":  # the draw, read off a gradient of ones
        ones = np.ones(g.shape, np.float32)
        random_keep = backward(ones, False, dict(options, rescale=False)) != 0
    if options["soft"] and options["rescale"] and options["rule"] != "none":
        # The factor amplifies the shrunk values' rounding: the rule's output is
        # checked against the reference, the rescale against the op's own output.
        unscaled = backward(g, compiled, dict(options, rescale=False))
        rescaled, borderline = reference_rescale(
            g, unscaled, options["rule"], scope=options["scope"]
        )
        assert_matches(g, actual, rescaled, borderline, dict(options, soft=False))
        actual, options = unscaled, dict(options, rescale=False)
    expected, borderline = _reference(g, options, random_keep)
    assert_matches(g, actual, expected, borderline, options)


RULE_CONFIGS = [config for config in CONFIGS if not config[4]]
CONTROL_CONFIGS = [config for config in CONFIGS if config[4]]


# Drawn cases per test, beside the @examples, sized to about a minute for the file on
# both backends: each case compiles anew, and on JAX, where each eager op also compiles
# anew for each shape, a case costs about three times as much, so it draws half as many.
RULE_EXAMPLES = 12 if BACKEND == "tensorflow" else 6
CONTROL_EXAMPLES = 4 if BACKEND == "tensorflow" else 2


@_settings(max_examples=RULE_EXAMPLES)
@given(case=cases(RULE_CONFIGS))
@example(case=_fixed("zeros", dict(soft=True, rescale=True)))
@example(case=_fixed("denormals", dict(rule="topk", keep_fraction=0.25, rescale=True)))
@example(case=_fixed("large", dict(rule="lateral", zone_size=3, rescale=True)))
@example(case=_fixed("nan", dict(rule="topk", rescale=True), shape=(5, 7)))
@example(case=_fixed("inf", dict(soft=True, rescale=True), dtype="float16"))
@example(case=_fixed("-inf", dict(rule="random", keep_fraction=0.2, rescale=True)))
def test_rules_survive_any_input(case):
    options, g = case
    for compiled in (False, True):
        check_rule(g, options, compiled)


def _units(array, rule, scope):
    """Per neighbourhood of the control, its units as rows of their entries: one
    entry each, or the channels of a position for `lateral` and `log` on rank 4."""
    if array.ndim == 2:
        return list(array[..., None])
    if rule in ("lateral", "log"):
        return list(array.reshape(array.shape[0], -1, array.shape[3]))
    if scope == "channel" and rule != "local":
        return list(array.reshape(-1, array.shape[3], 1))
    spatial = np.moveaxis(array, 3, 1).reshape(-1, array.shape[1] * array.shape[2])
    return list(spatial[..., None])


def check_control(g, options, compiled):
    """The control's defining properties, per neighbourhood: it chooses among the
    finite non-zero units as many as the rule keeps, scaled to the rule's mass."""
    actual = backward(g, compiled, options)
    assert_survives(g, actual)
    rule_output, borderline = _reference(g, dict(options, control=False))
    finite = np.isfinite(float32_magnitude(g))
    # The finite entries only (the others are passed on, checked above).
    magnitude, actual, rule_output = (
        np.where(finite, np.abs(array.astype(np.float64)), 0.0)
        for array in (float32_magnitude(g), actual, rule_output)
    )
    rows = zip(*[
        _units(array, options["rule"], options["scope"])
        for array in (magnitude, actual, rule_output, (borderline & (magnitude > 0)) * 1.0)
    ])
    info = ml_dtypes.finfo(g.dtype)
    rtol = max(1e-4, 4 * float(info.eps))
    for eligible, chosen, kept, border in rows:
        assert not (chosen[eligible == 0] > 0).any(), "an entry chosen that is zero"
        values = eligible[eligible > 0]
        # Counts and masses where nothing is borderline, underflows or overflows.
        if (border.any() or g.dtype == np.float16 or not values.size
                or not 1e-20 <= values.min() <= values.max() <= 1e20 * values.min()
                or not kept.sum() < 1e-2 * min(float(info.max), FLOAT32_MAX)):
            continue
        assert (chosen.max(axis=1) > 0).sum() == (kept.max(axis=1) > 0).sum()
        np.testing.assert_allclose(chosen.sum(), kept.sum(), rtol=rtol)


@_settings(max_examples=CONTROL_EXAMPLES)
@given(case=cases(CONTROL_CONFIGS))
@example(case=_fixed("zeros", dict(control=True, rescale=True)))
@example(case=_fixed("denormals", dict(rule="topk", control=True)))
@example(case=_fixed("large", dict(rule="lateral", zone_size=3, control=True)))
@example(case=_fixed("nan", dict(rule="local", control=True, rescale=True)))
@example(case=_fixed("inf", dict(rule="mean", scope="channel", control=True, rescale=True)))
@example(case=_fixed("-inf", dict(rule="log", zone_size=3, control=True), dtype="bfloat16"))
def test_matched_control_survives_any_input(case):
    options, g = case
    for compiled in (False, True):
        check_control(g, options, compiled)
