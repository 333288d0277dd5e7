"""The op's backward against the NumPy reference, in every execution mode."""

import itertools

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import MaskConfig, gradient_mask, mask_gradient
from gradmask_tf import ops
from tests.reference import GRID, reference_keep, reference_mask, reference_statistics

SHAPES = {2: (3, 9), 4: (2, 6, 5, 3)}
MODES = ("eager", "function", "xla")


def backward(x, upstream, mode="eager", **options):
    """The gradient that `gradient_mask(x, **options)` sends down for `upstream`."""

    def compute(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gradient_mask(x, **options)
        return tape.gradient(y, x, output_gradients=upstream)

    if mode != "eager":
        compute = tf.function(compute, jit_compile=mode == "xla")
    return compute(tf.constant(x), tf.constant(upstream)).numpy()


def random_gradient(rank, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=SHAPES[rank]).astype(dtype)


def assert_matches_reference(actual, expected, borderline, atol=1e-6, rtol=1e-5):
    assert actual.dtype == expected.dtype
    settled = ~borderline
    np.testing.assert_allclose(
        actual[settled].astype(np.float64),
        expected[settled].astype(np.float64),
        rtol=rtol,
        atol=atol,
    )


@pytest.mark.parametrize("rule,scope,soft,rescale,rank", GRID)
def test_backward_matches_reference(rule, scope, soft, rescale, rank):
    upstream = random_gradient(rank, seed=rank)
    options = dict(rule=rule, scope=scope, soft=soft, rescale=rescale)
    if rule == "lateral":
        options["zone_size"] = 3
    expected, borderline = reference_mask(upstream, **options)
    assert not borderline.any(), "the fixed test tensor should have no ties"
    actual = backward(np.ones_like(upstream), upstream, **options)
    assert_matches_reference(actual, expected, borderline)
    if rule != "none":
        assert (actual == 0).any() and (actual != 0).any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank", (2, 4))
@pytest.mark.parametrize("rule", ("mean", "local", "topk", "lateral", "log"))
def test_same_results_eagerly_in_function_and_xla(rule, rank, mode):
    upstream = random_gradient(rank, seed=7)
    options = dict(rule=rule, rescale=True)
    expected, borderline = reference_mask(upstream, **options)
    actual = backward(np.zeros_like(upstream), upstream, mode=mode, **options)
    assert_matches_reference(actual, expected, borderline)


@pytest.mark.parametrize(
    "options",
    [
        dict(rule="mean", alpha=0.5),
        dict(rule="mean", alpha=2.0, scope="channel"),
        dict(rule="local", alpha=1.3, kernel_size=5),
        dict(rule="topk", keep_fraction=0.3),
        dict(rule="topk", keep_fraction=1.0, scope="channel"),
        dict(rule="lateral", zone_size=5, inhibition_base=0.3, inhibition_strength=2.0),
        dict(rule="lateral", zone_size=1),
        dict(rule="lateral", zone_size=3, inhibition_strength=0.0),
        dict(rule="lateral", zone_size=3, inhibition_base=0.0),
        dict(rule="log", zone_size=3, sigma=0.5),
        dict(rule="log", zone_size=5, sigma=2.0),
        dict(rule="log", zone_size=1),
    ],
)
def test_parameters_change_the_mask_as_the_reference_does(options):
    upstream = random_gradient(4, seed=3)
    expected, borderline = reference_mask(upstream, **options)
    actual = backward(np.ones_like(upstream), upstream, **options)
    assert_matches_reference(actual, expected, borderline)


def test_forward_is_exactly_the_identity():
    x = np.random.default_rng(1).normal(size=SHAPES[4]).astype(np.float32)
    for rule in ops.RULES:
        y = gradient_mask(tf.constant(x), rule, seed=0).numpy()
        np.testing.assert_array_equal(y, x)


def test_topk_keeps_ties():
    upstream = np.array([[3.0, 1.0, 1.0, 1.0, 0.5, -1.0]], np.float32)
    # ceil(0.5 * 6) = 3 largest: 3 and the four tied |1.0| entries all survive.
    actual = backward(np.zeros_like(upstream), upstream, rule="topk")
    np.testing.assert_array_equal(actual, [[3.0, 1.0, 1.0, 1.0, 0.0, -1.0]])
    assert ops.num_kept(0.1, 10) == 1 and ops.num_kept(0.3, 10) == 3


@pytest.mark.parametrize("mode", ("eager", "xla"))
def test_topk_uses_a_threshold_that_xla_can_compile(mode):
    # On the CPU outside XLA the k-th value comes from NthElement, inside XLA from
    # top_k; both must give the reference.
    upstream = random_gradient(4, seed=11)
    expected, borderline = reference_mask(upstream, rule="topk", keep_fraction=0.25)
    actual = backward(upstream, upstream, mode=mode, rule="topk", keep_fraction=0.25)
    assert_matches_reference(actual, expected, borderline)


class TestRandomRule:
    def keep_map(self, shape, seed, mode="eager", keep_fraction=0.5):
        return backward(
            np.zeros(shape, np.float32),
            np.ones(shape, np.float32),
            mode=mode,
            rule="random",
            seed=seed,
            keep_fraction=keep_fraction,
        )

    def test_matches_reference_given_its_draw(self):
        upstream = random_gradient(4, seed=5)
        keep = self.keep_map(upstream.shape, seed=3)
        for rescale in (False, True):
            expected, _ = reference_mask(
                upstream, "random", rescale=rescale, random_keep=keep
            )
            actual = backward(
                upstream, upstream, rule="random", seed=3, rescale=rescale
            )
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)

    def test_keeps_the_requested_share_and_is_reproducible(self):
        shape = (8, 16, 16, 8)
        keep = self.keep_map(shape, seed=1, keep_fraction=0.3)
        assert set(np.unique(keep)) == {0.0, 1.0}
        assert abs(keep.mean() - 0.3) < 0.01
        np.testing.assert_array_equal(keep, self.keep_map(shape, seed=1, keep_fraction=0.3))
        assert (keep != self.keep_map(shape, seed=2, keep_fraction=0.3)).any()

    def test_same_draw_with_and_without_xla(self):
        shape = SHAPES[4]
        np.testing.assert_array_equal(
            self.keep_map(shape, seed=4), self.keep_map(shape, seed=4, mode="xla")
        )


@pytest.mark.parametrize(
    "dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
)
@pytest.mark.parametrize("rule", ("mean", "local", "topk", "lateral", "log"))
def test_dtypes_threshold_in_float32_result_in_gradient_dtype(rule, dtype):
    upstream = random_gradient(4, seed=9).astype(dtype)
    actual = backward(np.zeros_like(upstream), upstream, rule=rule)
    assert actual.dtype == upstream.dtype
    assert np.isfinite(actual.astype(np.float64)).all()
    expected, borderline = reference_mask(upstream.astype(np.float32), rule=rule)
    assert_matches_reference(
        actual.astype(np.float32), expected, borderline, atol=0, rtol=0
    )


def test_float16_threshold_does_not_overflow():
    # 60000 is near float16's maximum: a float16 sum would overflow to inf and mask
    # everything; the float32 threshold keeps the entries above the mean.
    upstream = np.full(SHAPES[4], 60000.0, np.float16)
    upstream[:, ::2] = 100.0
    actual = backward(np.zeros_like(upstream), upstream, rule="mean")
    np.testing.assert_array_equal(actual, np.where(upstream > 100, upstream, 0))


# Soft mode is not defined for the position rules (lateral, log).
_RULE_SOFT = [
    (rule, soft)
    for rule in ops.RULES
    for soft in (False, True)
    if not (soft and rule in ("lateral", "log"))
]


@pytest.mark.parametrize("rescale", (False, True))
@pytest.mark.parametrize("rule, soft", _RULE_SOFT)
def test_all_zero_gradient_gives_zeros(rule, soft, rescale):
    for rank in (2, 4):
        zeros = np.zeros(SHAPES[rank], np.float32)
        actual = backward(
            zeros, zeros, rule=rule, soft=soft, rescale=rescale, seed=0
        )
        np.testing.assert_array_equal(actual, zeros)


@pytest.mark.parametrize("rule, soft", [pair for pair in _RULE_SOFT if pair[0] != "none"])
def test_nan_in_gradient_is_passed_on(rule, soft):
    upstream = random_gradient(4, seed=2)
    upstream[0, 1, 1, 0] = np.nan
    options = dict(rule=rule, soft=soft, seed=0)
    if rule == "random":
        options["keep_fraction"] = 1.0
    actual = backward(np.zeros_like(upstream), upstream, **options)
    assert np.isnan(actual[0, 1, 1, 0])
    # The other sample's gradient is untouched by the NaN: no NaN is created there.
    assert np.isfinite(actual[1]).all()


INVALID = [
    (dict(rule="median"), "rule"),
    (dict(scope="pixel"), "scope"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(keep_fraction=0.0), "keep_fraction"),
    (dict(keep_fraction=1.5), "keep_fraction"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(zone_size=-3), "zone_size"),
    (dict(zone_size=2.0), "zone_size"),
    (dict(inhibition_base=-1.0), "inhibition_base"),
    (dict(inhibition_strength=-0.5), "inhibition_strength"),
    (dict(rule="lateral", soft=True), "soft"),
    (dict(rule="log", soft=True), "soft"),
    (dict(soft="yes"), "soft"),
    (dict(seed=1.5), "seed"),
    (dict(rule="log", sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(sigma=float("nan")), "sigma"),
    (dict(sigma=float("inf")), "sigma"),
    (dict(sigma="1"), "sigma"),
    (dict(rule="none", control=True), "control"),
    (dict(rule="random", control=True), "control"),
    (dict(rule="mean", soft=True, control=True), "control"),
    (dict(rule="topk", control="yes"), "control"),
]


@pytest.mark.parametrize("options,name", INVALID)
def test_invalid_parameters_name_the_parameter(options, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        gradient_mask(tf.ones([2, 3]), **options)


def test_rank_and_dtype_errors_are_clear():
    with pytest.raises(ValueError, match="rank-2"):
        gradient_mask(tf.ones([2, 3, 4]))
    with pytest.raises(ValueError, match="float"):
        gradient_mask(tf.ones([2, 3], tf.int32))


def test_masks_whichever_way_the_op_is_called():
    # tf.custom_gradient falls back to plain autodiff for tensors passed by keyword
    # (tensorflow#65839): every calling convention must still mask.
    x = tf.constant(random_gradient(2, seed=4))
    upstream = tf.constant(random_gradient(2, seed=5))
    calls = {
        "positional": lambda: gradient_mask(x, "mean"),
        "keyword x": lambda: gradient_mask(x=x, rule="mean"),
        "default rule": lambda: gradient_mask(x),
        "all keywords": lambda: gradient_mask(x=x, rule="mean", scope="spatial"),
    }
    expected, _ = reference_mask(upstream.numpy(), "mean")
    for name, call in calls.items():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = call()
        actual = tape.gradient(y, x, output_gradients=upstream).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-6, err_msg=name)


def test_masked_identity_reports_statistics_and_obeys_enabled():
    x = tf.constant(random_gradient(4, seed=6))
    upstream = tf.constant(random_gradient(4, seed=8))
    config = MaskConfig("mean")
    _, expected = mask_gradient(upstream, config)
    probe = tf.ones([2])  # non-zero: measure
    for enabled in (True, False, tf.constant(True), tf.constant(False)):
        with tf.GradientTape() as tape:
            tape.watch([x, probe])
            y = ops.masked_identity(x, config, enabled=enabled, probe=probe)
        grad_x, statistics = tape.gradient(y, [x, probe], output_gradients=upstream)
        assert statistics.shape == (2,) and statistics.dtype == tf.float32
        if bool(enabled):
            np.testing.assert_allclose(statistics.numpy(), expected.numpy())
            # kept_fraction < kept_l1 < 1: the mask keeps the larger entries.
            assert 0 < statistics[0] < statistics[1] < 1
            assert (grad_x.numpy() == 0).any()
        else:
            np.testing.assert_array_equal(statistics.numpy(), [1.0, 1.0])
            np.testing.assert_array_equal(grad_x.numpy(), upstream.numpy())
    # A zero probe switches the statistics off; the mask is the same.
    for probe_value in (tf.zeros([2]), None):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.masked_identity(x, config, probe=probe_value)
        grad_x = tape.gradient(y, x, output_gradients=upstream)
        np.testing.assert_array_equal(grad_x.numpy(), mask_gradient(upstream, config)[0].numpy())
    with tf.GradientTape() as tape:
        probe = tf.zeros([2])
        tape.watch(probe)
        y = ops.masked_identity(x, config, probe=probe)
    np.testing.assert_array_equal(tape.gradient(y, probe, output_gradients=upstream), [0, 0])


@pytest.mark.parametrize("rule", ("mean", "local"))
def test_constant_maps_are_kept_whole(rule):
    # In exact arithmetic |g| >= mean(|g|) holds everywhere on a constant map (the
    # gradient right before global average pooling is one); a float32 mean that
    # rounds up must not drop the whole map.
    rng = np.random.default_rng(12)
    for size in (4, 7, 16, 28):
        values = (rng.random(8) * 10.0 ** rng.uniform(-8, 2, 8)).astype(np.float32)
        # Channel c of every sample is the constant map values[c].
        upstream = np.ascontiguousarray(np.broadcast_to(values, (8, size, size, 8)))
        actual = backward(np.zeros_like(upstream), upstream, rule=rule)
        np.testing.assert_array_equal(actual, upstream)
    flat = np.full((3, 257), 0.1, np.float32)
    np.testing.assert_array_equal(backward(flat, flat, rule=rule), flat)


def sparse_gradient(shape, seed, zero_share=0.4, dtype=np.float32):
    """A random gradient with exact zeros, some of them whole positions."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=shape)
    g[rng.random(shape) < zero_share] = 0.0
    if len(shape) == 4:
        g[rng.random(shape[:3]) < zero_share / 2] = 0.0  # positions zero in every channel
    return g.astype(dtype)


class TestLogRule:
    def test_constant_maps_are_kept_whole(self):
        # r = sum_p K_p (m_p - m_centre) is exactly 0 on a constant magnitude map.
        rng = np.random.default_rng(13)
        for size in (1, 3, 8):
            channels = rng.normal(size=3).astype(np.float32) * 10.0 ** rng.uniform(-6, 3)
            upstream = np.ascontiguousarray(np.broadcast_to(channels, (2, size, size, 3)))
            actual = backward(np.zeros_like(upstream), upstream, rule="log", sigma=0.7)
            np.testing.assert_array_equal(actual, upstream)

    @pytest.mark.parametrize(
        "shape", [(2, 1, 1, 2), (2, 2, 3, 2), (1, 3, 3, 2), (2, 4, 2, 1)]
    )
    def test_maps_smaller_than_the_zone_reflect_as_numpy_does(self, shape):
        # np.pad's `reflect` repeats the reflection where the map is smaller than the
        # zone's half (tf.pad's REFLECT cannot); a 1x1 map is constant, kept whole.
        upstream = sparse_gradient(shape, seed=sum(shape), zero_share=0.2)
        expected, borderline = reference_mask(upstream, "log", zone_size=7)
        assert not borderline.any()
        actual = backward(np.zeros_like(upstream), upstream, rule="log", zone_size=7)
        assert_matches_reference(actual, expected, borderline)

    def test_centre_survives_and_surround_is_inhibited(self):
        upstream = np.full((1, 7, 7, 1), 0.1, np.float32)
        upstream[0, 3, 3, 0] = 1.0
        keep = backward(np.zeros_like(upstream), upstream, rule="log", zone_size=5) != 0
        assert keep[0, 3, 3, 0]
        # The ring at distance 2, where -LoG is negative beside a strong centre, falls.
        assert not keep[0, 1, 3, 0] and not keep[0, 3, 5, 0]
        assert keep[0, 0, 0, 0]  # far from the centre: a flat map, kept


@pytest.mark.parametrize("soft", (False, True))
@pytest.mark.parametrize("scope", ("spatial", "channel"))
@pytest.mark.parametrize("rank", (2, 4))
def test_topk_budget_counts_only_nonzero_entries(rank, scope, soft):
    upstream = sparse_gradient(SHAPES[rank], seed=21, zero_share=0.6)
    options = dict(rule="topk", scope=scope, soft=soft, keep_fraction=0.4)
    expected, borderline = reference_mask(upstream, **options)
    actual = backward(np.zeros_like(upstream), upstream, **options)
    assert_matches_reference(actual, expected, borderline)
    row = np.array([[3.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, -0.5]], np.float32)
    # n = 4 non-zero entries: ceil(0.5 * 4) = 2 kept, not ceil(0.5 * 8) = 4.
    np.testing.assert_array_equal(
        backward(row, row, rule="topk"), [[3.0, 0, 0, 0, 2.0, 0, 0, 0]]
    )


STATISTICS_CASES = [
    dict(rule="mean"),
    dict(rule="mean", scope="channel", soft=True, alpha=0.7),
    dict(rule="local", kernel_size=5),
    dict(rule="topk", keep_fraction=0.3),
    dict(rule="topk", scope="channel", soft=True),
    dict(rule="lateral", zone_size=3),
    dict(rule="log", zone_size=5),
]


@pytest.mark.parametrize("rank", (2, 4))
@pytest.mark.parametrize("options", STATISTICS_CASES)
def test_statistics_count_nonzero_entries_and_their_l1_mass(options, rank):
    upstream = sparse_gradient(SHAPES[rank], seed=31, zero_share=0.5)
    keep, borderline = reference_keep(upstream, **options)
    assert not (borderline & (upstream != 0)).any()  # zero entries do not count
    expected = reference_statistics(upstream, keep)
    _, statistics = mask_gradient(upstream, MaskConfig(**options, rescale=True))
    np.testing.assert_allclose(statistics.numpy(), expected, rtol=1e-6)
    # Zero entries carry nothing: adding more of them changes neither figure.
    padded = np.concatenate([upstream, np.zeros_like(upstream)], axis=0)
    _, padded_statistics = mask_gradient(padded, MaskConfig(**options))
    np.testing.assert_allclose(padded_statistics.numpy(), expected, rtol=1e-6)


def test_statistics_of_none_random_all_zero_and_nan():
    upstream = sparse_gradient(SHAPES[4], seed=32)
    _, statistics = mask_gradient(upstream, MaskConfig("none"))
    np.testing.assert_array_equal(statistics.numpy(), [1.0, 1.0])
    _, statistics = mask_gradient(np.zeros_like(upstream), MaskConfig("topk"))
    np.testing.assert_array_equal(statistics.numpy(), [1.0, 1.0])
    masked, statistics = mask_gradient(upstream, MaskConfig("random", seed=4))
    drawn = masked.numpy() != 0
    np.testing.assert_allclose(
        statistics.numpy(), reference_statistics(upstream, drawn), rtol=1e-6
    )
    # A NaN is left out: the figures are those of the finite entries.
    upstream[1, 2, 2, 1] = np.nan
    masked, statistics = mask_gradient(upstream, MaskConfig("mean"))
    kept = np.isfinite(masked.numpy()) & (masked.numpy() != 0)
    expected = reference_statistics(upstream, kept)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(statistics.numpy(), expected, rtol=1e-6)


CONTROLLED = [
    dict(rule="mean"),
    dict(rule="mean", scope="channel", alpha=0.5),
    dict(rule="local", kernel_size=3),
    dict(rule="topk", keep_fraction=0.3),
    dict(rule="topk", scope="channel"),
    dict(rule="lateral", zone_size=3),
    dict(rule="log", zone_size=3),
]


def control_units(array, options):
    """Per neighbourhood of the control, a bool vector: the units that are non-zero.

    Units are positions (non-zero where any channel is finite and non-zero) for
    `lateral` and `log` on rank 4, entries otherwise; non-finite entries never count.
    """
    counted = np.isfinite(array) & (array != 0)
    if array.ndim == 4 and options["rule"] in ("lateral", "log"):
        return [counted[n].any(axis=-1).ravel() for n in range(array.shape[0])]
    if array.ndim == 2:
        return list(counted)
    if options["rule"] == "local" or options.get("scope") != "channel":
        return list(counted.transpose(0, 3, 1, 2).reshape(-1, np.prod(array.shape[1:3])))
    return list(counted.reshape(-1, array.shape[3]))


def control_masses(array, options):
    """Per neighbourhood of the control, the L1 mass of the finite entries."""
    magnitude = np.where(np.isfinite(array), np.abs(array.astype(np.float64)), 0.0)
    if array.ndim == 4 and options["rule"] in ("lateral", "log"):
        return magnitude.sum(axis=(1, 2, 3))
    if array.ndim == 2:
        return magnitude.sum(axis=1)
    if options["rule"] == "local" or options.get("scope") != "channel":
        return magnitude.sum(axis=(1, 2)).ravel()
    return magnitude.sum(axis=3).ravel()


def assert_matched_control(upstream, rule_output, controlled, options, rtol=1e-5):
    """Same count and mass per neighbourhood, at non-zero places, one factor each."""
    assert controlled.dtype == upstream.dtype
    upstream64 = upstream.astype(np.float64)
    controlled64 = controlled.astype(np.float64)
    finite = np.isfinite(upstream64)
    # Non-finite entries are passed on as they are.
    np.testing.assert_array_equal(controlled64[~finite], upstream64[~finite])
    assert np.isfinite(controlled64[finite]).all()
    for eligible, by_rule, by_control in zip(
        control_units(upstream64, options),
        control_units(rule_output.astype(np.float64), options),
        control_units(controlled64, options),
    ):
        assert by_control.sum() == by_rule.sum()
        assert not (by_control & ~eligible).any()
    np.testing.assert_allclose(
        control_masses(controlled64, options),
        control_masses(rule_output.astype(np.float64), options),
        rtol=rtol,
    )
    # Kept entries are the gradient's times one factor per neighbourhood.
    kept = finite & (controlled64 != 0)
    ratio = np.where(kept, controlled64 / np.where(kept, upstream64, 1.0), np.nan)
    for index in range(upstream.shape[0]):
        values = ratio[index][np.isfinite(ratio[index])]
        if options["rule"] in ("lateral", "log") and upstream.ndim == 4 and values.size:
            np.testing.assert_allclose(values, values[0], rtol=rtol)
        assert (values > 0).all()


class TestMatchedControl:
    @pytest.mark.parametrize("rescale", (False, True))
    @pytest.mark.parametrize("rank", (2, 4))
    @pytest.mark.parametrize("options", CONTROLLED)
    def test_count_and_mass_match_the_rule_per_neighbourhood(self, options, rank, rescale):
        upstream = sparse_gradient(SHAPES[rank], seed=41 + rank)
        expected, borderline = reference_mask(upstream, **options, rescale=rescale)
        assert not (borderline & (upstream != 0)).any()  # zero entries stay zero
        controlled, statistics = mask_gradient(
            upstream, MaskConfig(**options, rescale=rescale, control=True, seed=7)
        )
        controlled = controlled.numpy()
        assert_matched_control(upstream, expected, controlled, options)
        # The statistics are those of the control's own selection, before scaling.
        np.testing.assert_allclose(
            statistics.numpy(),
            reference_statistics(upstream, controlled != 0),
            rtol=1e-6,
        )
        if rank == 4:  # An uninformed choice: it differs from the rule's somewhere.
            assert ((controlled != 0) != (expected != 0)).any()

    def test_entries_are_chosen_uniformly(self):
        # 3000 neighbourhoods, each [5, 4, 0, 3, 2, 0, 1, 0.5]: topk keeps 3 of the 6
        # non-zero entries; the control's 3 must be each of the 20 subsets equally
        # often, and never a zero entry. A fixed seed makes the test deterministic;
        # at p < 1e-6 a correct sampler would fail it for one seed in a million.
        scipy_stats = pytest.importorskip("scipy.stats")
        row = np.array([5.0, 4.0, 0.0, 3.0, 2.0, 0.0, 1.0, 0.5], np.float32)
        upstream = np.tile(row, (3000, 1))
        config = MaskConfig("topk", control=True, seed=11)
        controlled, _ = mask_gradient(upstream, config)
        chosen = controlled.numpy() != 0
        assert (chosen.sum(axis=1) == 3).all()
        assert not chosen[:, [2, 5]].any()
        subsets = list(itertools.combinations((0, 1, 3, 4, 6, 7), 3))
        codes = {subset: index for index, subset in enumerate(subsets)}
        counts = np.bincount(
            [codes[tuple(np.flatnonzero(c))] for c in chosen], minlength=len(subsets)
        )
        assert scipy_stats.chisquare(counts).pvalue > 1e-6

    def test_positions_are_chosen_uniformly(self):
        # 2000 samples of one 2x3 map with one all-zero position and one half-zero
        # position (still eligible): the control keeps the rule's number k of
        # positions, each k-subset of the 5 eligible ones equally often.
        scipy_stats = pytest.importorskip("scipy.stats")
        sample = np.array(
            [[[3.0, 1.0], [0.0, 0.0], [0.5, 0.2]], [[0.4, 0.0], [2.0, 2.0], [0.1, 0.3]]],
            np.float32,
        )
        upstream = np.tile(sample, (2000, 1, 1, 1))
        rule_output = mask_gradient(upstream[:1], MaskConfig("log", zone_size=3))[0]
        num_kept = int(np.count_nonzero(rule_output.numpy()[0].any(axis=-1)))
        assert 0 < num_kept < 5
        controlled, _ = mask_gradient(
            upstream, MaskConfig("log", zone_size=3, control=True, seed=12)
        )
        chosen = (controlled.numpy() != 0).any(axis=-1).reshape(len(upstream), 6)
        assert (chosen.sum(axis=1) == num_kept).all()
        assert not chosen[:, 1].any()
        subsets = list(itertools.combinations((0, 2, 3, 4, 5), num_kept))
        codes = {subset: index for index, subset in enumerate(subsets)}
        counts = np.bincount(
            [codes[tuple(np.flatnonzero(c))] for c in chosen], minlength=len(subsets)
        )
        assert scipy_stats.chisquare(counts).pvalue > 1e-6

    def test_feature_map_entries_are_chosen_uniformly(self):
        # 600 feature maps of 12x12 whose magnitudes grow with the position, so
        # `mean` keeps mostly late positions: the control must take each non-zero
        # entry of a map with probability k / n (k kept of its n), wherever it
        # lies. Per position, the chosen count against its expectation, squared
        # over its variance, summed: about chi-square with 144 degrees of freedom.
        scipy_stats = pytest.importorskip("scipy.stats")
        upstream = sparse_gradient((200, 12, 12, 3), seed=47)
        upstream *= np.linspace(0.5, 2.0, 144, dtype=np.float32).reshape(1, 12, 12, 1)
        controlled, _ = mask_gradient(upstream, MaskConfig("mean", control=True, seed=13))
        eligible = np.moveaxis(upstream != 0, 3, 1).reshape(600, 144)
        chosen = np.moveaxis(controlled.numpy() != 0, 3, 1).reshape(600, 144)
        share = chosen.sum(1, keepdims=True) / eligible.sum(1, keepdims=True)
        assert 0.2 < share.mean() < 0.8
        expected = (eligible * share).sum(0)
        variance = (eligible * share * (1 - share)).sum(0)
        statistic = (((chosen.sum(0) - expected) ** 2) / variance).sum()
        assert scipy_stats.chi2.sf(statistic, 144) > 1e-6
        # The rule's own choice fails the same test by far.
        rule = np.moveaxis(mask_gradient(upstream, MaskConfig("mean"))[0].numpy() != 0, 3, 1)
        statistic = (((rule.reshape(600, 144).sum(0) - expected) ** 2) / variance).sum()
        assert scipy_stats.chi2.sf(statistic, 144) < 1e-12

    def test_draws_are_keyed_by_seed(self):
        upstream = sparse_gradient((4, 8, 8, 4), seed=43)
        config = MaskConfig("mean", control=True, seed=3)

        def chosen(config, seed=None):
            return mask_gradient(upstream, config, seed)[0].numpy() != 0

        np.testing.assert_array_equal(chosen(config), chosen(config))
        assert (chosen(config) != chosen(MaskConfig("mean", control=True, seed=4))).any()
        # The layer's path: a [2] seed tensor (seed, step) replaces config.seed.
        step_one = chosen(config, tf.constant([3, 1], tf.int64))
        np.testing.assert_array_equal(step_one, chosen(config, tf.constant([3, 1])))
        assert (step_one != chosen(config, tf.constant([3, 2], tf.int64))).any()
        # No seed at all: a fresh draw on every call.
        fresh = MaskConfig("mean", control=True)
        assert (chosen(fresh) != chosen(fresh)).any()

    @pytest.mark.parametrize(
        "options", [dict(rule="topk"), dict(rule="log", zone_size=3)]
    )
    def test_same_draw_with_and_without_xla(self, options):
        upstream = sparse_gradient(SHAPES[4], seed=44)
        draws = [
            backward(upstream, upstream, mode=mode, control=True, seed=5, **options)
            for mode in ("eager", "xla")
        ]
        np.testing.assert_array_equal(draws[0] != 0, draws[1] != 0)
        np.testing.assert_allclose(draws[0], draws[1], rtol=1e-6)
        expected, _ = reference_mask(upstream, **options)
        assert_matched_control(upstream, expected, draws[1], options)

    @pytest.mark.parametrize(
        "dtype,rtol",
        [(np.float16, 2e-3), (ml_dtypes.bfloat16, 2e-2), (np.float64, 1e-6)],
    )
    @pytest.mark.parametrize(
        "options", [dict(rule="mean", rescale=True), dict(rule="lateral")]
    )
    def test_dtypes(self, options, dtype, rtol):
        upstream = sparse_gradient(SHAPES[4], seed=45, dtype=dtype)
        rule_output = backward(upstream, upstream, **options)
        controlled = backward(upstream, upstream, control=True, seed=1, **options)
        assert_matched_control(upstream, rule_output, controlled, options, rtol=rtol)

    @pytest.mark.parametrize("rescale", (False, True))
    @pytest.mark.parametrize("options", CONTROLLED)
    def test_zeros_stay_zero_and_nan_is_passed_on(self, options, rescale):
        options = dict(options, rescale=rescale, control=True, seed=2)
        for rank in (2, 4):
            zeros = np.zeros(SHAPES[rank], np.float32)
            np.testing.assert_array_equal(backward(zeros, zeros, **options), zeros)
        upstream = sparse_gradient(SHAPES[4], seed=46)
        upstream[0, 1, 1, 0] = np.nan
        upstream[0, 2, 3, 1] = np.inf
        controlled = backward(upstream, upstream, **options)
        rule_output = backward(upstream, upstream, **dict(options, control=False))
        assert np.isnan(controlled[0, 1, 1, 0])
        np.testing.assert_array_equal(controlled[0, 2, 3, 1], upstream[0, 2, 3, 1])
        assert np.isfinite(controlled[1]).all()
        assert_matched_control(upstream, rule_output, controlled, options)

    def test_channel_scope_with_dynamic_height_and_width(self):
        # Its neighbourhoods (a position's channels) are static; the batch, height and
        # width need not be.
        upstream = sparse_gradient(SHAPES[4], seed=47)
        options = dict(rule="mean", scope="channel")

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, SHAPES[4][3]])] * 2)
        def controlled(x, up):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = gradient_mask(x, control=True, seed=3, **options)
            return tape.gradient(y, x, output_gradients=up)

        result = controlled(tf.ones_like(upstream), tf.constant(upstream)).numpy()
        expected, _ = reference_mask(upstream, **options)
        assert_matched_control(upstream, expected, result, options)

    def test_needs_static_neighbourhood_sizes(self):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3])])
        def dynamic(x):
            return ops.mask_gradient(x, MaskConfig("mean", control=True))[0]

        with pytest.raises(ValueError, match="control"):
            dynamic.get_concrete_function()
