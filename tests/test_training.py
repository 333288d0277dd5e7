"""Tests of `GradMaskModel.train_step` and the mask switches of `gradmask_tf.training`."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import GradientMask
from gradmask_tf.training import GradMaskModel, mask_layers, set_masks_enabled

BATCH = 8


def _model(rule="mean", **options):
    """Dense -> mask -> logits; no ReLU, so every gradient entry at the mask is non-zero."""
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="hidden")(inputs)
    x = GradientMask(rule, name="mask", **options)(x)
    return GradMaskModel(inputs, keras.layers.Dense(3, name="logits")(x))


def _compile(model, optimizer=None):
    # A zero learning rate: the step reports on the weights the test measured.
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


@pytest.fixture
def batch(rng):
    x = rng.normal(size=(BATCH, 6)).astype("float32")
    y = rng.integers(0, 3, BATCH).astype("int32")
    return x, y


def _loss(model, x, y):
    logits = tf.cast(model(x, training=True), tf.float32)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)


def _gradient_norm(model, x, y):
    """The global norm of the gradient the optimizer receives (masks active)."""
    with tf.GradientTape() as tape:
        loss = _loss(model, x, y)
    return float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))


def _tracker(model, name):
    return next(metric for metric in model.metrics if metric.name == name)


def test_gradient_norm_is_the_global_norm_of_the_masked_gradient(batch):
    model = _compile(_model("mean"))
    expected = _gradient_norm(model, *batch)
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["gradient_norm"] == pytest.approx(expected, rel=1e-5)
    # The mask acts: the unmasked gradient has another norm.
    set_masks_enabled(model, False)
    assert _gradient_norm(model, *batch) != pytest.approx(expected, rel=1e-3)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_gradient_norm_undoes_loss_scaling_in_mixed_precision(batch, mixed_float16):
    model = _compile(_model("mean"))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    expected = _gradient_norm(model, *batch)
    logs = model.train_on_batch(*batch, return_dict=True)
    assert float(model.optimizer.dynamic_scale) > 1  # so forgetting to undo it shows
    assert logs["gradient_norm"] == pytest.approx(expected, rel=1e-2)


def test_gradient_norm_is_unscaled_by_the_scale_the_step_used(batch, mixed_float16):
    # The scale grows after every finite step here: the step's own scale must count.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.0), dynamic_growth_steps=1
    )
    model = _compile(_model("mean"), optimizer)
    expected = _gradient_norm(model, *batch)
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["gradient_norm"] == pytest.approx(expected, rel=1e-2)


def test_overflowed_step_is_left_out_of_the_gradient_norm(batch, mixed_float16):
    # A loss scale of 2^60 overflows float16 in the backward pass.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.0), initial_scale=2.0**60
    )
    model = _compile(_model("mean"), optimizer)
    logs = model.train_on_batch(*batch, return_dict=True)
    tracker = _tracker(model, "gradient_norm")
    assert float(tracker.count) == 0 and logs["gradient_norm"] == 0.0


def test_loss_is_the_global_mean_under_a_mirrored_strategy(batch):
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, "conftest makes two logical CPU devices"
    # Every strategy in a process numbers its collective ops from the same keys, so
    # they could meet another test's: reducing through one device uses none.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        model = _compile(_model("mean"))
    x, y = batch
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    # Keras divides each replica's loss by the number of replicas; the log does not.
    assert history.history["loss"][0] == pytest.approx(float(_loss(model, x, y)), rel=1e-5)
    # Each replica's own gradient norm (its half of the batch), averaged.
    half = BATCH // 2
    expected = np.mean([_gradient_norm(model, x[:half], y[:half]),
                        _gradient_norm(model, x[half:], y[half:])])
    assert history.history["gradient_norm"][0] == pytest.approx(expected, rel=1e-5)


def test_kept_fraction_is_reported_per_mask_point(batch):
    # topk keeps 4 of the 8 non-zero entries of each sample.
    model = _compile(_model("topk", keep_fraction=0.5))
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["kept_fraction/mask"] == pytest.approx(0.5)
    baseline = _compile(_model("none"))
    assert baseline.train_on_batch(*batch, return_dict=True)["kept_fraction/mask"] == 1.0


class _Counts(keras.callbacks.Callback):
    """The number of measured steps behind each epoch's mask metrics."""

    def __init__(self):
        super().__init__()
        self.counts = []

    def on_epoch_end(self, epoch, logs=None):
        tracker = _tracker(self.model, "kept_fraction/mask")
        self.counts.append(int(tracker.count.numpy()))


@pytest.mark.parametrize("mirrored", (False, True))
def test_mask_metrics_are_measured_every_n_steps_and_each_epochs_first(rng, mirrored):
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64).astype("int32")
    scope = (
        tf.distribute.MirroredStrategy(
            [device.name for device in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        ).scope()
        if mirrored
        else contextlib.nullcontext()
    )
    with scope:
        model = _compile(_model("topk", keep_fraction=0.5))
    assert model.mask_metrics_every == 10  # the default: sampled, as train.py does
    model.mask_metrics_every = 3
    counts = _Counts()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[counts])
    # Steps 0, 3, 6 of the first epoch; 8 (the epoch's first), 9, 12, 15 of the second
    # (each replica counts its own).
    replicas = 2 if mirrored else 1
    assert counts.counts == [3 * replicas, 4 * replicas]
    assert history.history["kept_fraction/mask"] == pytest.approx([0.5, 0.5])
    # Unmeasured steps switch the probe off: the statistics are not computed there.
    assert model.mask_layers[0].gradient_probe.numpy().tolist() == [1.0, 1.0]  # step 15
    with pytest.raises(ValueError, match="mask_metrics_every"):
        model.mask_metrics_every = 0


def test_evaluation_logs_leave_out_the_training_trackers(batch):
    model = _compile(_model("mean"))
    model.train_on_batch(*batch)
    logs = model.evaluate(*batch, verbose=0, return_dict=True)
    assert "loss" in logs
    assert not [name for name in logs if name.startswith("kept_fraction/")]
    assert "gradient_norm" not in logs


def _nested_model():
    inner_inputs = keras.Input((6,))
    inner = keras.Model(
        inner_inputs,
        GradientMask("topk", keep_fraction=0.5, name="inner_mask")(
            keras.layers.Dense(8, name="inner_dense")(inner_inputs)
        ),
        name="inner",
    )
    inputs = keras.Input((6,))
    x = GradientMask("topk", keep_fraction=0.5, name="outer_mask")(inner(inputs))
    return GradMaskModel(inputs, keras.layers.Dense(3, name="logits")(x))


def test_mask_layers_finds_nested_masks_in_order():
    model = _nested_model()
    assert [layer.name for layer in mask_layers(model)] == ["inner_mask", "outer_mask"]
    assert model.mask_layers == mask_layers(model)


def test_set_masks_enabled_switches_every_mask_point(batch):
    model = _compile(_nested_model())
    set_masks_enabled(model, False)
    assert not any(bool(layer.enabled.numpy()) for layer in mask_layers(model))
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["kept_fraction/inner_mask"] == 1.0 and logs["kept_fraction/outer_mask"] == 1.0
    set_masks_enabled(model, True)
    assert all(bool(layer.enabled.numpy()) for layer in mask_layers(model))
    model.reset_metrics()
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["kept_fraction/outer_mask"] == pytest.approx(0.5)


def test_fit_traces_its_step_once_and_trains_as_keras_would(batch):
    """The optimizer's and the metrics' variables are made before the first trace, not
    in it (Keras does so only under a strategy), so the step is traced once; the weights
    end as those of the same fit traced twice."""
    x, y = batch
    weights = []
    for build_first in (True, False):
        keras.utils.set_random_seed(0)
        model = _model("mean")
        model.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        if not build_first:  # Keras's own order: variables made inside the first trace
            model._maybe_symbolic_build = lambda **kwargs: None
        traces = []
        step = model.train_step
        model.train_step = lambda data: (traces.append(1), step(data))[1]
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
        assert len(traces) == (1 if build_first else 2)
        weights.append(model.get_weights())
    for built, keras_order in zip(*weights):
        np.testing.assert_array_equal(built, keras_order)
