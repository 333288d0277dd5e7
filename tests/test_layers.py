"""The GradientMask layer: Keras's contract, training-only masking, the switch."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import GradientMask
from gradmask_tf.layers import point_seeds
from tests.layer_contract import check_layer_contract
from tests.reference import reference_keep, reference_mask, reference_statistics

CONTRACT_CASES = [
    (dict(rule="none"), (6, 6, 2)),
    (dict(rule="mean"), (6, 6, 2)),
    (dict(rule="mean", scope="channel", soft=True, rescale=True), (6, 6, 2)),
    (dict(rule="local", kernel_size=5, alpha=0.8), (6, 6, 2)),
    (dict(rule="topk", keep_fraction=0.25), (6, 6, 2)),
    (dict(rule="lateral", zone_size=3), (6, 6, 2)),
    (dict(rule="random", keep_fraction=0.7, seed=3), (6, 6, 2)),
    (dict(rule="topk", keep_fraction=0.4), (5,)),
    (dict(rule="log", zone_size=3, sigma=0.8), (6, 6, 2)),
    (dict(rule="lateral", zone_size=3, control=True, seed=4), (6, 6, 2)),
    (dict(rule="topk", keep_fraction=0.4, control=True), (5,)),
]


@pytest.mark.parametrize("config,input_shape", CONTRACT_CASES)
def test_layer_contract(config, input_shape, tmp_path):
    check_layer_contract(GradientMask, config, input_shape, tmp_path)


def _input_gradient(layer, x, upstream, **call_kwargs):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **call_kwargs) if "inputs" not in call_kwargs else layer(**call_kwargs)
    return tape.gradient(y, x, output_gradients=upstream).numpy()


def test_masks_only_in_training_whichever_way_it_is_called():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    expected, _ = reference_mask(upstream, "mean")
    layer = GradientMask("mean")
    for training in (None, False):
        np.testing.assert_array_equal(
            _input_gradient(layer, x, upstream, training=training), upstream
        )
    np.testing.assert_allclose(
        _input_gradient(layer, x, upstream, training=True), expected, rtol=1e-6
    )
    # By keyword (tensorflow#65839 concerns tensors passed by keyword).
    x_tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        y = layer(inputs=x_tensor, training=True)
    np.testing.assert_allclose(
        tape.gradient(y, x_tensor, output_gradients=upstream).numpy(), expected, rtol=1e-6
    )
    # Through a functional model, where Keras propagates `training`.
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, GradientMask("mean")(inputs))
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        y = model(x_tensor, training=True)
    np.testing.assert_allclose(
        tape.gradient(y, x_tensor, output_gradients=upstream).numpy(), expected, rtol=1e-6
    )
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        y = model(x_tensor)
    np.testing.assert_array_equal(
        tape.gradient(y, x_tensor, output_gradients=upstream).numpy(), upstream
    )


def test_enabled_switch_flips_without_retracing():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 4, 4, 2)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(2, 4, 4, 2)).astype("float32"))
    layer = GradientMask("mean")
    traces = []

    @tf.function
    def step(x, upstream):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, x, output_gradients=upstream)

    masked = step(x, upstream).numpy()
    layer.enabled.assign(False)
    passed = step(x, upstream).numpy()
    layer.enabled.assign(True)
    masked_again = step(x, upstream).numpy()
    assert len(traces) == 1
    assert (masked == 0).any()
    np.testing.assert_array_equal(passed, upstream.numpy())
    np.testing.assert_array_equal(masked_again, masked)


def test_gradient_probe_reports_kept_fraction_and_kept_l1():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(3, 8)).astype("float32"))
    upstream = rng.normal(size=(3, 8)).astype("float32")
    upstream[:, :2] = 0.0  # zero entries: not counted, nor part of topk's budget
    layer = GradientMask("topk", keep_fraction=0.25)
    assert tuple(layer.gradient_probe.shape) == (2,)
    with tf.GradientTape() as tape:
        tape.watch(layer.gradient_probe.value)
        y = layer(x, training=True)
    (statistics,) = tape.gradient(y, [layer.gradient_probe], output_gradients=upstream)
    keep, _ = reference_keep(upstream, "topk", keep_fraction=0.25)
    expected = reference_statistics(upstream, keep)
    assert expected[0] == pytest.approx(2 / 6)  # ceil(0.25 * 6) of the 6 non-zero
    np.testing.assert_allclose(statistics.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "options", [dict(rule="random"), dict(rule="mean", control=True)]
)
def test_draws_are_keyed_by_seed_and_step(options):
    x = tf.zeros([2, 6, 6, 4])
    upstream = tf.constant(np.random.default_rng(4).normal(size=(2, 6, 6, 4)), tf.float32)

    def draws(layer, steps=3):
        return [
            _input_gradient(layer, x, upstream, training=True) != 0 for _ in range(steps)
        ]

    first = draws(GradientMask(**options, seed=5))
    second = draws(GradientMask(**options, seed=5))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert (first[0] != first[1]).any(), "each training step draws a new mask"
    assert (first[0] != draws(GradientMask(**options, seed=6), 1)[0]).any()


def test_point_seeds_are_distinct_across_points_and_run_seeds():
    # Point i of run seed s used to be s + i: point 1 of seed 0 drew point 0 of seed 1.
    seeds = [list(itertools.islice(point_seeds(seed), 60)) for seed in range(100)]
    flat = [value for run in seeds for value in run]
    assert len(set(flat)) == len(flat)
    assert all(isinstance(value, int) and 0 <= value < 2**63 for value in flat)
    assert list(itertools.islice(point_seeds(5), 60)) == seeds[5], "the same run seed, the same seeds"
    assert next(point_seeds(-1)) not in flat
    assert list(itertools.islice(point_seeds(None), 2)) == [None, None]


@pytest.mark.parametrize(
    "options,name",
    [
        (dict(rule="max"), "rule"),
        (dict(alpha=-1.0), "alpha"),
        (dict(rule="lateral", soft=True), "soft"),
        (dict(rule="log", sigma=0.0), "sigma"),
        (dict(rule="random", control=True), "control"),
    ],
)
def test_invalid_parameters_fail_at_construction(options, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        GradientMask(**options)


def test_fit_under_mirrored_strategy_on_two_devices():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, "conftest configures two logical CPU devices"
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        inputs = keras.Input((6, 6, 1))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        mask = GradientMask("mean")
        x = mask(x)
        outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    rng = np.random.default_rng(3)
    images = rng.random((16, 6, 6, 1)).astype("float32")
    labels = rng.integers(0, 3, 16)
    before = model.get_weights()
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.array_equal(b, a) for b, a in zip(before, model.get_weights()))

    # Each replica's backward pass is masked.
    @tf.function
    def replica_gradient(batch):
        with tf.GradientTape() as tape:
            tape.watch(batch)
            features = mask(batch, training=True)
        return tape.gradient(features, batch, output_gradients=batch)

    batch = tf.constant(rng.normal(size=(4, 4, 4, 4)).astype("float32"))
    per_replica = strategy.run(replica_gradient, args=(batch,))
    for gradient in strategy.experimental_local_results(per_replica):
        expected, _ = reference_mask(batch.numpy(), "mean")
        np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-6)
