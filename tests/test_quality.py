"""GSNR: the estimator on synthetic gradients whose answer is known, and on real models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradmask_tf
from gradmask_tf import quality


def _linear_model(dim):
    inputs = keras.Input((dim,))
    outputs = keras.layers.Dense(1, use_bias=False, name="linear")(inputs)
    return keras.Model(inputs, outputs)


def _output_mean(labels, outputs):
    # d(mean output)/dw = mean of the inputs: per-example gradients are the inputs.
    return keras.ops.mean(outputs)


def _micro_batch_gradients(rng, signal, num_micro_batches, micro_batch_size, correlation=0.0):
    """Means of Gaussian per-example gradients `signal + noise` (noise variance 1).

    `correlation` is the share of each example's noise common to all parameters, as
    parameters of one network share their examples. The true GSNR is `signal ** 2`.
    """
    shape = (num_micro_batches, micro_batch_size)
    shared = rng.standard_normal((*shape, 1))
    own = rng.standard_normal((*shape, signal.size))
    noise = np.sqrt(correlation) * shared + np.sqrt(1 - correlation) * own
    return (signal + noise).mean(axis=1)


@pytest.mark.parametrize("truth", [0.0, 0.01, 0.1])
def test_estimator_recovers_a_known_gsnr_within_its_stated_bias(truth):
    m, b = 32, 8
    rng = np.random.default_rng(int(truth * 1000))
    gradients = _micro_batch_gradients(rng, np.full(20000, np.sqrt(truth)), m, b)
    values = quality.gsnr_from_gradients(gradients, b)
    standard_error = values.std() / np.sqrt(values.size)
    # The bias the module docstring states for Gaussian micro-batch gradients.
    expected = (m - 1) / (m - 3) * truth + 2 / ((m - 3) * m * b)
    assert abs(values.mean() - expected) < 4 * standard_error
    assert abs(values.mean() - truth) < (expected - truth) + 4 * standard_error
    if truth == 0:
        # The plain mu^2 / (b s2) reads about 1 / (m b) on pure noise, the contract's
        # estimator (m - 1) / 2 times less.
        plain = gradients.mean(0) ** 2 / (b * gradients.var(0, ddof=1))
        assert plain.mean() > 10 * (values.mean() + 4 * standard_error)
        assert plain.mean() == pytest.approx((m - 1) / ((m - 3) * m * b), rel=0.05)


def test_linear_toy_matches_the_formula():
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, (24, 3)).astype("float32")
    model = _linear_model(3)
    result = quality.gsnr(model, images, np.zeros(24), num_micro_batches=4, loss=_output_mean)
    micro = images.reshape(4, 6, 3).mean(axis=1).astype(np.float64)
    mean, variance = micro.mean(0), micro.var(0, ddof=1)
    expected = (mean**2 - variance / 4) / (6 * variance)
    assert result["per_layer"]["linear"] == pytest.approx(np.median(expected), rel=1e-4)
    assert result["per_layer_mean"]["linear"] == pytest.approx(expected.mean(), rel=1e-4)
    assert result["gsnr"] == pytest.approx(expected.mean(), rel=1e-4)
    assert result["gsnr_mean_of_layer_medians"] == pytest.approx(np.median(expected), rel=1e-4)
    assert (result["micro_batches"], result["micro_batch_size"], result["num_examples"]) == (4, 6, 24)


def test_parameters_without_gradient_are_left_out_and_counted():
    rng = np.random.default_rng(1)
    noisy = rng.standard_normal((8, 6))
    dead = np.zeros((8, 3))
    constant = np.full((8, 1), 0.5)  # no noise: an infinite GSNR, left out too
    result = quality.gsnr_figures(
        {"conv": np.concatenate([noisy, dead, constant], axis=1), "gone": np.zeros((8, 2, 5))}, 4
    )
    alone = quality.gsnr_figures({"conv": noisy}, 4)
    assert result["gsnr"] == pytest.approx(alone["gsnr"])
    assert result["gsnr_mean_of_layer_medians"] == pytest.approx(alone["per_layer"]["conv"])
    assert result["gsnr_standard_error"] == pytest.approx(alone["gsnr_standard_error"])
    assert result["num_parameters"] == 20
    assert result["share_without_gradient"] == pytest.approx(13 / 20)
    assert result["share_without_noise"] == pytest.approx(1 / 20)
    assert result["per_layer_share_without_gradient"] == {"conv": 0.3, "gone": 1.0}
    assert np.isnan(result["per_layer"]["gone"]) and np.isnan(result["per_layer_mean"]["gone"])
    # Through a model: an input that is always zero gives its weight no gradient.
    images = rng.random((16, 3)).astype("float32")
    images[:, 2] = 0
    result = quality.gsnr(_linear_model(3), images, np.zeros(16), num_micro_batches=4,
                          loss=_output_mean)
    assert result["share_without_gradient"] == pytest.approx(1 / 3)
    assert result["per_layer_share_without_gradient"] == {"linear": pytest.approx(1 / 3)}


def test_jackknife_standard_error_matches_the_spread_over_repeated_probes():
    m, b = 32, 8
    rng = np.random.default_rng(2)
    signal = np.concatenate([np.full(300, 0.3), np.linspace(0, 0.5, 300)])
    figures, errors, spread_over_parameters = [], [], []
    for _ in range(200):
        gradients = _micro_batch_gradients(rng, signal, m, b, correlation=0.5)
        result = quality.gsnr_figures({"a": gradients[:, :300], "b": gradients[:, 300:]}, b)
        figures.append([result["gsnr"], result["gsnr_mean_of_layer_medians"]])
        errors.append(
            [result["gsnr_standard_error"], result["gsnr_mean_of_layer_medians_standard_error"]]
        )
        values = quality.gsnr_from_gradients(gradients, b)
        spread_over_parameters.append(values.std() / np.sqrt(values.size))
    empirical = np.std(figures, axis=0, ddof=1)
    jackknife = np.sqrt(np.mean(np.square(errors), axis=0))
    np.testing.assert_allclose(jackknife, empirical, rtol=0.2)
    # Parameters share their examples: an error taken over parameters is far too small.
    assert np.mean(spread_over_parameters) < 0.3 * empirical[0]


def _random_draws_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = gradmask_tf.GradientMask("random", keep_fraction=0.5, seed=1, name="random_mask")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    x = gradmask_tf.GradientMask("mean", control=True, seed=2, name="control_mask")(x)
    x = keras.layers.Dropout(0.5, seed=3)(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return gradmask_tf.GradMaskModel(inputs, outputs)


def test_random_draws_are_fixed_within_a_probe_and_training_state_is_unchanged():
    model = _random_draws_model()
    rng = np.random.default_rng(3)
    examples = rng.standard_normal((4, 6)).astype("float32")
    labels = rng.integers(0, 3, 4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # Without fixing, two training calls on the same examples draw differently.
    gradients = []
    for _ in range(2):
        with tf.GradientTape() as tape:
            value = loss(labels, model(examples, training=True))
        gradients.append(tape.gradient(value, model.trainable_variables)[0].numpy())
    assert not np.array_equal(*gradients)
    state = [variable.numpy() for variable in model.variables]
    probe = quality.GradientProbe(model)
    # Two micro-batches of the same examples: the same gradients, draws and all.
    first, kept = probe(np.concatenate([examples, examples]), np.tile(labels, 2),
                        num_micro_batches=2)
    assert set(kept) == {"random_mask", "control_mask"}
    for stacked in first:
        np.testing.assert_array_equal(stacked[0], stacked[1])
    # Weights, BatchNormalization statistics and seed generator states as before, so
    # training continues as it would have without the probe (and a new probe repeats).
    for before, variable in zip(state, model.variables):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
    second, _ = probe(np.concatenate([examples, examples]), np.tile(labels, 2),
                      num_micro_batches=2)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_real_model_gsnr_is_finite_with_standard_errors():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = gradmask_tf.GradientMask("mean", name="mask")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = gradmask_tf.GradMaskModel(inputs, outputs)
    rng = np.random.default_rng(1)
    images = rng.random((64, 8, 8, 1)).astype("float32")
    labels = rng.integers(0, 3, 64)
    result = quality.gsnr(model, images, labels, num_micro_batches=8)
    for name in ("gsnr", "gsnr_mean_of_layer_medians"):
        assert np.isfinite(result[name]) and result[f"{name}_standard_error"] > 0
    assert set(result["per_layer"]) == set(result["per_layer_mean"]) == {"conv", "bn", "logits"}
    assert all(np.isfinite(v) for v in result["per_layer"].values())
    assert result["num_parameters"] == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert 0 < result["kept_fraction"]["mask"] < 1


def test_layers_are_named_as_in_the_model_nested_models_by_their_path():
    keras.utils.set_random_seed(0)
    block = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="dense")], name="block")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, name="logits")(block(inputs))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(4)
    result = quality.gsnr(model, rng.random((16, 4)), rng.integers(0, 3, 16), num_micro_batches=4)
    assert set(result["per_layer"]) == {"block/dense", "logits"}
    assert result["num_parameters"] == 4 * 5 + 5 + 5 * 3 + 3


def test_masks_change_the_gradients_gsnr_measures():
    rng = np.random.default_rng(2)
    images = rng.random((32, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, 32)
    results = {}
    for rule in ("none", "topk"):
        keras.utils.set_random_seed(0)
        model = gradmask_tf.build_model(
            "cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule=rule
        )
        results[rule] = quality.gsnr(
            model, images, labels, num_micro_batches=4, standard_errors=False
        )
    assert results["none"]["kept_fraction"] == {"mask1": 1.0, "mask2": 1.0, "mask3": 1.0}
    # ceil(0.5 n) of each sample's n non-zero entries: a half, or just above it.
    assert 0.5 <= results["topk"]["kept_fraction"]["mask3"] < 0.52
    assert results["none"]["per_layer"]["conv1"] != results["topk"]["per_layer"]["conv1"]


@pytest.mark.parametrize("num_micro_batches", [1, 0, 2.5, True, 5, 9])
def test_a_too_small_probe_is_refused(num_micro_batches):
    # 8 examples: 2 to 4 micro-batches leave at least 2 examples in each.
    with pytest.raises(ValueError, match="num_micro_batches") as error:
        quality.gsnr(_linear_model(2), np.zeros((8, 2)), np.zeros(8),
                     num_micro_batches=num_micro_batches)
    assert "\n" not in str(error.value) and "at most 4" in str(error.value)
    with pytest.raises(ValueError, match="num_micro_batches"):
        quality.GSNRCallback(np.zeros((8, 2)), np.zeros(8), every_n_steps=1,
                             num_micro_batches=num_micro_batches)


def test_the_default_probe_has_the_fixed_size():
    assert quality.NUM_PROBE_EXAMPLES >= 1024 and quality.NUM_MICRO_BATCHES >= 32
    assert quality.NUM_PROBE_EXAMPLES // quality.NUM_MICRO_BATCHES >= 2


def test_callback_logs_gsnr_every_n_steps(tmp_path):
    keras.utils.set_random_seed(0)
    model = _linear_model(3)
    model.compile(keras.optimizers.SGD(0.01), loss=_output_mean)
    rng = np.random.default_rng(3)
    x = rng.random((32, 3)).astype("float32")
    callback = quality.GSNRCallback(
        x[:16], np.zeros(16), every_n_steps=3, num_micro_batches=4, loss=_output_mean
    )
    history = model.fit(x, np.zeros(32), batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    # 4 steps per epoch: measured at steps 3 and 6, and at the end of each epoch.
    assert [m["step"] for m in callback.measurements] == [3, 4, 6, 8]
    assert len(history.history["gsnr"]) == 2 and np.isfinite(history.history["gsnr"]).all()
    assert history.history["gsnr"][-1] == callback.measurements[-1]["gsnr"]


def test_callback_steps_continue_after_a_resume():
    # The steps are the optimizer's iterations, which a checkpoint restores.
    keras.utils.set_random_seed(0)
    model = _linear_model(3)
    model.compile(keras.optimizers.SGD(0.01), loss=_output_mean)
    x = np.random.default_rng(3).random((32, 3)).astype("float32")

    def callback():
        return quality.GSNRCallback(
            x[:16], np.zeros(16), every_n_steps=3, num_micro_batches=4, loss=_output_mean
        )

    first = callback()
    model.fit(x, np.zeros(32), batch_size=8, epochs=1, verbose=0, callbacks=[first])
    resumed = callback()  # a new process: a new callback, the model restored
    model.fit(x, np.zeros(32), batch_size=8, epochs=2, initial_epoch=1, verbose=0, callbacks=[resumed])
    assert [m["step"] for m in first.measurements] == [3, 4]
    assert [m["step"] for m in resumed.measurements] == [6, 8]


@pytest.mark.parametrize("num_micro_batches", [1, 0, 2.5, 9])
def test_invalid_micro_batches(num_micro_batches):
    with pytest.raises(ValueError, match="micro"):
        quality.gsnr(_linear_model(2), np.zeros((8, 2)), np.zeros(8), num_micro_batches=num_micro_batches)


def test_callback_measures_at_each_epoch_end_without_batch_hooks():
    # The multi-worker loop calls only the epoch hooks.
    keras.utils.set_random_seed(0)
    model = _linear_model(3)
    model.compile(keras.optimizers.SGD(0.5), loss=_output_mean)
    x = np.random.default_rng(4).random((16, 3)).astype("float32")
    callback = quality.GSNRCallback(x, np.zeros(16), every_n_steps=1, num_micro_batches=4, loss=_output_mean)
    callback.set_model(model)
    logs = [{}, {}]
    for epoch in range(2):
        callback.on_epoch_begin(epoch)
        model.train_on_batch(x * (epoch + 1), np.zeros(16))
        callback.on_epoch_end(epoch, logs[epoch])
    assert [m["step"] for m in callback.measurements] == [1, 2]
    assert logs[0]["gsnr"] == callback.measurements[0]["gsnr"]
    assert logs[1]["gsnr"] == callback.measurements[1]["gsnr"]


def test_the_probe_measures_the_masks_after_a_step_that_did_not():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(5)
    images = rng.random((8, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, 8)
    model = gradmask_tf.build_model("cnn", input_shape=(28, 28, 1), num_classes=10)
    for layer in model.mask_layers:  # as GradMaskModel leaves them between measurements
        layer.gradient_probe.assign([0.0, 0.0])
    _, kept = quality.GradientProbe(model)(images, labels, num_micro_batches=2)
    assert all(0 < value < 1 for value in kept.values()), kept
    assert all(layer.gradient_probe.numpy().tolist() == [0, 0] for layer in model.mask_layers)
