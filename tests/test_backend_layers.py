"""The layer, `insert_masks`, `build_model` and `fit` on TensorFlow and on JAX.

Backend-neutral tests (`tests/backends.py`): the shared layer contract
(`tests/layer_contract.py`), masking only in training, the `enabled` switch, a `fit`
of the cnn reporting the mask metrics, `insert_masks` on a functional model; and a
`.keras` file that crosses from each backend to the other with `safe_mode=True`.
"""

import keras
import numpy as np
import pytest

import gradmask_tf
from gradmask_tf import GradientMask
from tests import backends
from tests.layer_contract import check_layer_contract
from tests.reference import reference_mask

CONTRACT_CASES = [
    (dict(rule="mean"), (6, 6, 2)),
    (dict(rule="mean", scope="channel", soft=True, rescale=True), (6, 6, 2)),
    (dict(rule="topk", keep_fraction=0.4), (5,)),
    (dict(rule="random", keep_fraction=0.7, seed=3), (6, 6, 2)),
    (dict(rule="lateral", zone_size=3, control=True, seed=4), (6, 6, 2)),
]
# Run from the TensorFlow process only: it starts a JAX process itself.
TENSORFLOW_ONLY = ("test_keras_file_crosses_backends",)


@pytest.mark.parametrize("config,input_shape", CONTRACT_CASES)
def test_layer_contract(config, input_shape, tmp_path):
    check_layer_contract(GradientMask, config, input_shape, tmp_path)


def test_masks_only_in_training_and_obeys_enabled():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    expected, _ = reference_mask(upstream, "mean")
    layer = GradientMask("mean")
    for training in (None, False):
        passed = backends.vjp(lambda x: layer(x, training=training), x, upstream)
        np.testing.assert_array_equal(passed, upstream)
    masked = backends.vjp(lambda x: layer(x, training=True), x, upstream, compiled=True)
    np.testing.assert_allclose(masked, expected, rtol=1e-6)
    layer.enabled.assign(False)
    passed = backends.vjp(lambda x: layer(x, training=True), x, upstream)
    np.testing.assert_array_equal(passed, upstream)


def _data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((count, 28, 28, 1)).astype("float32"), rng.integers(0, 10, count)


def _compiled_cnn(rule, **options):
    keras.utils.set_random_seed(0)
    model = gradmask_tf.build_model(
        "cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule=rule, seed=1, **options
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.mask_metrics_every = 1
    return model


def test_fit_masks_gradients_and_reports_the_mask_metrics():
    x, y = _data()
    histories, weights = {}, {}
    for rule in ("none", "mean"):
        model = _compiled_cnn(rule)
        histories[rule] = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
        weights[rule] = model.get_weights()
    names = [f"{prefix}mask{i}" for prefix in ("kept_fraction/", "kept_l1/") for i in (1, 2, 3)]
    for name in names:
        assert histories["none"][name] == [1.0]
        assert 0.3 < histories["mean"][name][0] < 1.0, name
    # mean keeps most of the L1 mass and fewer of the entries (METHOD.md section 3).
    assert histories["mean"]["kept_l1/mask1"][0] > histories["mean"]["kept_fraction/mask1"][0]
    assert histories["mean"]["gradient_norm"][0] > 0
    # Same initial weights and data: only the masked backward pass differs.
    assert any(not np.allclose(a, b) for a, b in zip(weights["none"], weights["mean"]))


def _tiny_masked_model(**mask):
    """A conv, its mask point and a dense head: little to compile on either backend."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    hidden = GradientMask(**mask)(hidden)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(hidden))
    model = gradmask_tf.GradMaskModel(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_control_and_random_fit_reproducibly():
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % 10
    for mask in (dict(rule="topk", control=True, seed=5), dict(rule="random", seed=5)):
        results = []
        for _ in range(2):
            model = _tiny_masked_model(**mask)
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            results.append(model.get_weights())
        for first, second in zip(*results):
            np.testing.assert_array_equal(first, second)
        # The draws are keyed by the step: a masked step changed the weights.
        initial = _tiny_masked_model(**mask).get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(results[0], initial))


def test_insert_masks_and_set_masks_enabled():
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    model = gradmask_tf.insert_masks(
        keras.Model(inputs, outputs), "mean", after=lambda layer: layer.name == "conv"
    )
    assert [type(layer).__name__ for layer in gradmask_tf.mask_layers(model)] == ["GradientMask"]
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.mask_metrics_every = 1
    x = np.random.default_rng(2).random((8, 8, 8, 1)).astype("float32")
    y = np.arange(8) % 3
    history = model.fit(x, y, epochs=1, verbose=0).history
    name = f"kept_fraction/{gradmask_tf.mask_layers(model)[0].name}"
    assert history[name][0] < 1.0
    gradmask_tf.set_masks_enabled(model, False)
    assert model.fit(x, y, epochs=1, verbose=0).history[name] == [1.0]


_LOAD_PREDICT_SAVE = r"""
import sys, keras, numpy as np, gradmask_tf
folder = {folder!r}
model = keras.models.load_model(folder + "/{source}.keras", safe_mode=True)
x = np.load(folder + "/x.npy")
np.save(folder + "/{source}_there.npy", model.predict(x, verbose=0))
model.save(folder + "/{target}.keras")
np.save(folder + "/{target}_there.npy", model.predict(x, verbose=0))
"""


def test_keras_file_crosses_backends(tmp_path):
    """Saved on TensorFlow, loaded on JAX (TensorFlow blocked) and back again."""
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    model = _compiled_cnn("mean", control=True)
    x, y = _data(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "here.keras")
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x, verbose=0)
    code = _LOAD_PREDICT_SAVE.format(folder=str(tmp_path), source="here", target="there")
    backends.run_other_backend(code, other)
    np.testing.assert_allclose(np.load(tmp_path / "here_there.npy"), expected, rtol=1e-5, atol=1e-6)
    back = keras.models.load_model(tmp_path / "there.keras", safe_mode=True)
    assert type(back).__name__ == "GradMaskModel"
    np.testing.assert_allclose(back.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
