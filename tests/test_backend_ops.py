"""The op against the NumPy reference, on TensorFlow and on JAX (tests/test_jax_half.py).

The tests are backend-neutral (`tests/backends.py`): every rule, both scopes, hard and
soft, `rescale`, the statistics, `enabled`, the seeded draws and the matched control,
compiled as Keras compiles a step (XLA on TensorFlow, `jax.jit` on JAX).
"""


import keras
import numpy as np
import pytest

from gradmask_tf import MaskConfig, gradient_mask
from gradmask_tf.ops import control, masked_identity
from tests import backends
from tests.reference import GRID, reference_keep, reference_mask, reference_statistics

SHAPES = {2: (3, 9), 4: (2, 6, 5, 3)}


def random_gradient(rank, seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=SHAPES[rank]).astype(dtype)


def backward(upstream, compiled=True, **options):
    """The gradient that `gradient_mask(x, **options)` sends down for `upstream`."""
    x = np.ones_like(upstream)
    return backends.vjp(lambda x: gradient_mask(x, **options), x, upstream, compiled)


@pytest.mark.parametrize("rule,scope,soft,rescale,rank", GRID)
def test_backward_matches_reference(rule, scope, soft, rescale, rank):
    upstream = random_gradient(rank, seed=rank)
    options = dict(rule=rule, scope=scope, soft=soft, rescale=rescale)
    if rule == "lateral":
        options["zone_size"] = 3
    expected, borderline = reference_mask(upstream, **options)
    assert not borderline.any()
    actual = backward(upstream, **options)
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    if rule != "none":
        assert (actual == 0).any() and (actual != 0).any()


@pytest.mark.parametrize("rule", ("mean", "topk", "lateral", "log"))
def test_eager_and_compiled_agree(rule):
    upstream = random_gradient(4, seed=7)
    options = dict(rule=rule, zone_size=3)
    np.testing.assert_array_equal(
        backward(upstream, compiled=False, **options), backward(upstream, **options)
    )


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float32"))
@pytest.mark.parametrize("rule", ("mean", "topk", "lateral"))
def test_result_has_the_gradient_dtype(rule, dtype):
    upstream = keras.ops.convert_to_numpy(
        keras.ops.cast(random_gradient(4, seed=3), dtype)
    )
    actual = backward(upstream, rule=rule, zone_size=3)
    assert keras.backend.standardize_dtype(actual.dtype) == dtype
    expected, borderline = reference_mask(upstream.astype("float32"), rule, zone_size=3)
    np.testing.assert_array_equal((actual != 0)[~borderline], (expected != 0)[~borderline])


@pytest.mark.parametrize("rule", ("mean", "topk", "lateral", "log"))
def test_nan_is_passed_on_and_zeros_stay_zeros(rule):
    upstream = random_gradient(4, seed=5)
    upstream[0, 1, 2, 0] = np.nan
    # Eagerly and compiled: never `NaN * 0`, which XLA turns into a select that hides it.
    for compiled in (False, True):
        assert np.isnan(backward(upstream, compiled, rule=rule, zone_size=3)[0, 1, 2, 0])
    zeros = np.zeros(SHAPES[4], "float32")
    np.testing.assert_array_equal(backward(zeros, rule=rule, rescale=True), zeros)


# One option set per rule, among them the options that once turned an Inf into NaN.
NON_FINITE_CASES = [
    dict(rule="mean", rescale=True),
    dict(rule="mean", soft=True, rescale=True, scope="channel"),
    dict(rule="local", soft=True),
    dict(rule="topk", rescale=True),
    dict(rule="lateral", zone_size=3, rescale=True),
    dict(rule="log", zone_size=3),
    dict(rule="random", seed=1, rescale=True),
]


@pytest.mark.parametrize("options", NON_FINITE_CASES)
def test_non_finite_entries_pass_and_count_as_zero(options):
    # METHOD.md §2: a NaN or Inf is passed on as it is, and its neighbours are masked
    # as if it were zero.
    zeroed = random_gradient(4, seed=14)
    places = (0, 1, 1, 0), (0, 2, 3, 1), (1, 4, 4, 2)
    for place in places:
        zeroed[place] = 0.0
    upstream = zeroed.copy()
    for place, value in zip(places, (np.nan, np.inf, -np.inf)):
        upstream[place] = value
    finite = np.isfinite(upstream)
    for compiled in (False, True):
        actual = backward(upstream, compiled, **options)
        np.testing.assert_array_equal(actual[~finite], upstream[~finite])
        expected = backward(zeroed, compiled, **options)
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-6)


@pytest.mark.parametrize("options", NON_FINITE_CASES)
def test_huge_and_tiny_gradients_are_masked_as_ordinary_ones(options):
    # Float32 sums and squares of these overflow or underflow; the masks must not care.
    # (A power of two scales exactly: the same rounding, hence the same results.)
    upstream = random_gradient(4, seed=15)
    expected = backward(upstream, **options)
    for scale in (np.float32(2.0**100), np.float32(2.0**-100)):
        actual = backward(upstream * scale, **options)
        np.testing.assert_array_equal(actual != 0, expected != 0)
        np.testing.assert_allclose(actual, expected * scale, rtol=1e-6)


def _identity_gradients(upstream, config, enabled, probe):
    """(gradient of x, gradient of the probe) of `masked_identity`, compiled."""
    x = np.ones_like(upstream)
    if keras.backend.backend() == "jax":
        import jax

        def loss(x, probe):
            y = masked_identity(x, config, enabled=enabled, probe=probe)
            return jax.numpy.sum(y * upstream)

        gradients = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, probe)
        return tuple(np.asarray(g) for g in gradients)
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def gradients(x, probe, enabled):
        with tf.GradientTape() as tape:
            tape.watch([x, probe])
            y = masked_identity(x, config, enabled=enabled, probe=probe)
            loss = tf.reduce_sum(y * upstream)
        return tape.gradient(loss, [x, probe])

    return tuple(g.numpy() for g in gradients(tf.constant(x), tf.constant(probe), enabled))


@pytest.mark.parametrize("rule", ("mean", "topk", "lateral", "log"))
def test_probe_reports_statistics_and_enabled_switches(rule):
    upstream = random_gradient(4, seed=11)
    config = MaskConfig(rule, zone_size=3)
    on, off = np.ones(2, "float32"), np.zeros(2, "float32")
    enabled = keras.ops.convert_to_tensor(True)
    masked, statistics = _identity_gradients(upstream, config, enabled, on)
    expected, _ = reference_mask(upstream, rule, zone_size=3)
    np.testing.assert_allclose(masked, expected, rtol=1e-5, atol=1e-6)
    keep, _ = reference_keep(upstream, rule, zone_size=3)
    np.testing.assert_allclose(statistics, reference_statistics(upstream, keep), rtol=1e-5)
    _, unmeasured = _identity_gradients(upstream, config, enabled, off)
    np.testing.assert_array_equal(unmeasured, [0.0, 0.0])
    disabled = keras.ops.convert_to_tensor(False)
    passed, statistics = _identity_gradients(upstream, config, disabled, on)
    np.testing.assert_array_equal(passed, upstream)
    np.testing.assert_array_equal(statistics, [1.0, 1.0])


def test_random_rule_is_keyed_by_its_seed():
    upstream = random_gradient(4, seed=2)
    upstream = np.tile(upstream, (8, 4, 4, 8))
    first = backward(upstream, rule="random", keep_fraction=0.3, seed=1)
    again = backward(upstream, rule="random", keep_fraction=0.3, seed=1)
    np.testing.assert_array_equal(first, again)
    other = backward(upstream, rule="random", keep_fraction=0.3, seed=2)
    assert not np.array_equal(first != 0, other != 0)
    np.testing.assert_array_equal(first[first != 0], upstream[first != 0])
    assert abs((first != 0).mean() - 0.3) < 0.02


def _units(array, rule, scope):
    """Per neighbourhood, its entries (positions for lateral and log) as rows."""
    if array.ndim == 2:
        return array[:, None, :]
    if rule in ("lateral", "log"):
        return np.abs(array).sum(axis=3).reshape(array.shape[0], 1, -1)
    if scope == "channel":
        return array.reshape(array.shape[0], -1, array.shape[3])
    return np.moveaxis(array, 3, 1).reshape(array.shape[0], array.shape[3], -1)


@pytest.mark.parametrize("rank", (2, 4))
@pytest.mark.parametrize(
    "rule,scope",
    [("mean", "spatial"), ("mean", "channel"), ("topk", "spatial"), ("lateral", "spatial")],
)
def test_matched_control_keeps_the_rules_count_and_mass(rule, scope, rank):
    upstream = random_gradient(rank, seed=13)
    options = dict(rule=rule, scope=scope, zone_size=3)
    rule_output, _ = reference_mask(upstream, **options)
    # (Reproducible by its seed: test_backend_layers.py fits it twice on each backend.)
    # Eagerly: compiled, the control's loop takes seconds to compile for each case, and
    # tests/test_op_properties.py checks these properties compiled, on both backends.
    controlled = backward(upstream, compiled=False, control=True, seed=3, **options)
    effective = rule if rank == 4 else ("mean" if rule == "lateral" else rule)
    # The same number of entries (positions) and the same L1 mass per neighbourhood.
    count = lambda a: (_units(a, effective, scope) != 0).sum(-1)  # noqa: E731
    mass = lambda a: np.abs(_units(a, effective, scope)).sum(-1)  # noqa: E731
    np.testing.assert_array_equal(count(controlled), count(rule_output))
    np.testing.assert_allclose(mass(controlled), mass(rule_output), rtol=1e-5)
    assert not np.array_equal(controlled != 0, rule_output != 0)


def _largest_by_keys_then_position(eligible, num, keys, second):
    """Per row, the `num` eligible entries largest by key, second key, position."""
    chosen = np.zeros_like(eligible)
    for row in range(len(eligible)):
        order = sorted(
            np.flatnonzero(eligible[row]), key=lambda p: (keys[row, p], second[row, p], p)
        )
        chosen[row, order[len(order) - num[row]:]] = True
    return chosen


def test_control_keeps_the_largest_keys_and_breaks_ties():
    # Keys from six values, int32's extremes among them, so that most rows are tied
    # at their num-th largest key, and second keys from three, so that many stay
    # tied (random 32-bit keys almost never are): the bit by bit searches over
    # signed keys, then second keys, then positions must give exactly the `num`
    # largest by (key, second key, position), `num = 0` and all-eligible rows too.
    rng = np.random.default_rng(5)
    values = np.array([-(2**31), -7, -1, 0, 3, 2**31 - 1], np.int32)
    keys = rng.choice(values, size=(60, 13)).astype(np.int32)
    second = rng.choice(values[[0, 2, 5]], size=(60, 13)).astype(np.int32)
    eligible = rng.random((60, 13)) < 0.8
    eligible[0] = True
    num = rng.integers(0, eligible.sum(-1) + 1).astype(np.int32)
    num[:2] = (13, 0)  # row 0 is all eligible
    chosen = control._choose_uniformly(eligible, num[:, None], keys, lambda: second)
    expected = _largest_by_keys_then_position(eligible, num, keys, second)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(chosen), expected)
    # Distinct keys: the first key decides.
    keys = rng.permutation(60 * 13).reshape(60, 13).astype(np.int32) - 400
    chosen = control._choose_uniformly(eligible, num[:, None], keys, lambda: second)
    expected = _largest_by_keys_then_position(eligible, num, keys, keys)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(chosen), expected)
