"""GSNR: the formula on toys whose answer is known, and on real models."""

import keras
import numpy as np
import pytest

import gradmask_tf
from eval.quality import evaluate_quality
from gradmask_tf import quality


def _linear_model(dim):
    inputs = keras.Input((dim,))
    outputs = keras.layers.Dense(1, use_bias=False, name="linear")(inputs)
    return keras.Model(inputs, outputs)


def _output_mean(labels, outputs):
    # d(mean output)/dw = mean of the inputs: per-example gradients are the inputs.
    return keras.ops.mean(outputs)


def test_linear_toy_matches_the_formula():
    rng = np.random.default_rng(0)
    images = rng.normal(1.0, 2.0, (24, 3)).astype("float32")
    model = _linear_model(3)
    result = quality.gsnr(
        model, images, np.zeros(24), num_micro_batches=4, loss=_output_mean
    )
    micro = images.reshape(4, 6, 3).mean(axis=1).astype(np.float64)
    expected = micro.mean(0) ** 2 / (6 * micro.var(0, ddof=1) + quality.EPSILON)
    assert result["per_layer"]["linear"] == pytest.approx(expected.mean(), rel=1e-4)
    assert result["gsnr"] == pytest.approx(expected.mean(), rel=1e-4)
    assert result["micro_batches"] == 4 and result["micro_batch_size"] == 6


def test_constant_gradient_gives_mean_squared_over_epsilon():
    images = np.full((8, 2), 0.5, np.float32)
    result = quality.gsnr(
        _linear_model(2), images, np.zeros(8), num_micro_batches=2, loss=_output_mean
    )
    assert result["gsnr"] == pytest.approx(0.25 / quality.EPSILON, rel=1e-4)


def test_real_model_gsnr_is_finite_positive_and_leaves_the_model_unchanged():
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
    images = rng.random((32, 8, 8, 1)).astype("float32")
    labels = rng.integers(0, 3, 32)
    before = [w.copy() for w in model.get_weights()]
    result = quality.gsnr(model, images, labels, num_micro_batches=4)
    assert np.isfinite(result["gsnr"]) and result["gsnr"] > 0
    assert set(result["per_layer"]) == {"conv", "bn", "logits"}
    assert all(np.isfinite(v) and v > 0 for v in result["per_layer"].values())
    assert 0 < result["kept_fraction"]["mask"] < 1
    for b, a in zip(before, model.get_weights()):
        np.testing.assert_array_equal(b, a)


def test_masks_change_the_gradients_gsnr_measures():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    images = rng.random((32, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, 32)
    results = {}
    for rule in ("none", "topk"):
        keras.utils.set_random_seed(0)
        model = gradmask_tf.build_model(
            "cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule=rule
        )
        results[rule] = quality.gsnr(model, images, labels, num_micro_batches=4)
    assert results["none"]["kept_fraction"] == {"mask1": 1.0, "mask2": 1.0, "mask3": 1.0}
    # ceil(0.5 n) of each sample's n non-zero entries: a half, or just above it.
    assert 0.5 <= results["topk"]["kept_fraction"]["mask3"] < 0.52
    assert results["none"]["per_layer"]["conv1"] != results["topk"]["per_layer"]["conv1"]


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


def test_evaluate_quality_adds_settings_and_the_logged_curve():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="logits")])
    rng = np.random.default_rng(5)
    data = (rng.random((16, 4)).astype("float32"), rng.integers(0, 3, 16))
    history = [{"epoch": 1, "gsnr": 0.5}, {"epoch": 2, "gsnr": float("nan")}, {"epoch": 3}]
    result = evaluate_quality(model, data, num_micro_batches=4, history=history)
    expected = quality.gsnr(model, *data, num_micro_batches=4)
    assert result["gsnr"] == pytest.approx(expected["gsnr"])
    assert result["num_examples"] == 16
    assert result["training_curve"] == {"1": 0.5}  # Epochs without a finite GSNR left out.
    assert result["settings"]["masks"].startswith("active")
    assert {"python", "tensorflow", "keras", "numpy", "gradmask_tf"} <= set(
        result["settings"]["library_versions"]
    )
    assert "training_curve" not in evaluate_quality(model, data, num_micro_batches=4)
