"""insert_masks on keras.applications and hand-written functional models."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradmask_tf
from gradmask_tf import GradientMask, insert_masks, is_trunk_nonlinearity
from gradmask_tf.layers import point_seeds


def _input_gradients(model, x, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = model(x, training=training)
        loss = sum(tf.reduce_sum(tf.square(o)) for o in tf.nest.flatten(outputs))
    return tape.gradient(loss, x).numpy()


def _expected_masks(model):
    return sum(
        1 for layer in model.layers if is_trunk_nonlinearity(layer) and layer.name not in model.output_names
    )


def check_insertion(base, inputs, tmp_path=None, fit_targets=None, *, run_eagerly=False,
                    training_gradient=True):
    """The contract of insert_masks on one model.

    With `fit_targets`, also one `fit` step and a `.keras` round trip into `tmp_path`
    (`run_eagerly`: a deep model's step is not worth tracing here; the hand-written
    models below run the traced step). `training_gradient`: also check that the
    gradient in training differs from the model's without masks (on a deep model,
    eagerly, each of its tens of mask shapes compiles the rule anew: seconds).
    """
    masked = insert_masks(base, "mean")
    assert isinstance(masked, gradmask_tf.GradMaskModel)
    # Forward outputs equal: the same layers, so the same weights.
    for a, b in zip(
        tf.nest.flatten(base(inputs, training=False)), tf.nest.flatten(masked(inputs, training=False))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(masked.mask_layers) == _expected_masks(base)
    assert not any(name.endswith("_mask") for name in masked.output_names)
    # Inference gradients are exact; training gradients are masked.
    single = inputs if not isinstance(inputs, (list, tuple)) else None
    if single is not None:
        np.testing.assert_allclose(
            _input_gradients(masked, single, False), _input_gradients(base, single, False), rtol=1e-5, atol=1e-7
        )
        if training_gradient:
            assert not np.allclose(
                _input_gradients(masked, single, True), _input_gradients(base, single, True))
    if fit_targets is None:
        return masked
    # One fit step and a .keras round trip with safe_mode.
    masked.compile(
        keras.optimizers.SGD(1e-3), loss=keras.losses.MeanSquaredError(), run_eagerly=run_eagerly
    )
    history = masked.fit(inputs, fit_targets, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "masked.keras"
    masked.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    assert len(reloaded.mask_layers) == len(masked.mask_layers)
    for a, b in zip(
        tf.nest.flatten(masked(inputs, training=False)), tf.nest.flatten(reloaded(inputs, training=False))
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    return masked


@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "EfficientNetB0"])
def test_keras_applications(name, tmp_path):
    keras.utils.set_random_seed(0)
    # Their smallest input size; one of them also trains a step, is saved, and shows
    # masked gradients in training (the layer's own contract, tests/test_layers.py).
    base = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=5)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    trains = name == "MobileNetV2"
    targets = np.zeros((2, 5), "float32") if trains else None
    masked = check_insertion(base, x, tmp_path, targets, run_eagerly=True,
                             training_gradient=trains)
    # The softmax classifier is never masked; every trunk activation is.
    assert base.layers[-1].name in masked.output_names
    assert len(masked.mask_layers) > 30


def _two_input_residual_model():
    image = keras.Input((8, 8, 3), name="image")
    extra = keras.Input((4,), name="extra")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(image)
    branch = keras.layers.Conv2D(6, 3, padding="same", name="conv_b")(x)
    branch = keras.layers.ReLU(name="relu_b")(branch)
    x = keras.layers.Add(name="residual")([x, branch])
    x = keras.layers.GlobalAveragePooling2D()(x)
    e = keras.layers.Dense(6, activation="tanh", name="extra_dense")(extra)
    x = keras.layers.Concatenate()([x, e])
    logits = keras.layers.Dense(3, name="logits")(x)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    return keras.Model([image, extra], [logits, score])


def test_two_inputs_two_outputs_and_a_residual_branch(tmp_path):
    keras.utils.set_random_seed(1)
    base = _two_input_residual_model()
    rng = np.random.default_rng(1)
    inputs = [rng.random((2, 8, 8, 3)).astype("float32"), rng.random((2, 4)).astype("float32")]
    masked = check_insertion(base, inputs, tmp_path, [np.zeros((2, 3)), np.zeros((2, 1))])
    assert {layer.name for layer in masked.mask_layers} == {"conv_a_mask", "relu_b_mask", "extra_dense_mask"}
    # The residual add still takes the masked trunk and its branch.
    add_inputs = masked.get_layer("residual").input
    assert len(add_inputs) == 2
    # Weights are shared with the original.
    assert masked.get_layer("conv_a") is base.get_layer("conv_a")


def test_nested_and_sequential_models():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Dense(5, activation="relu", name="inner_dense")(inner_in), name="inner")
    outer_in = keras.Input((6,))
    outer = keras.Model(outer_in, keras.layers.Dense(2, name="head")(inner(outer_in)))
    masked = insert_masks(outer, "topk", keep_fraction=0.4)
    assert [layer.name for layer in masked.mask_layers] == ["inner_dense_mask"]
    x = np.random.default_rng(2).random((3, 6)).astype("float32")
    np.testing.assert_array_equal(np.asarray(outer(x)), np.asarray(masked(x)))

    sequential = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4), keras.layers.ReLU(), keras.layers.Dense(2, activation="softmax")]
    )
    masked = insert_masks(sequential)
    assert len(masked.mask_layers) == 1
    np.testing.assert_array_equal(np.asarray(sequential(x)), np.asarray(masked(x)))


def test_after_selects_layers():
    base = _two_input_residual_model()
    assert [l.name for l in insert_masks(base, after=keras.layers.ReLU).mask_layers] == ["relu_b_mask"]
    both = insert_masks(base, after=(keras.layers.ReLU, keras.layers.Conv2D))
    assert {l.name for l in both.mask_layers} == {"conv_a_mask", "conv_b_mask", "relu_b_mask"}
    chosen = insert_masks(base, after=lambda layer: layer.name == "conv_b")
    assert [l.name for l in chosen.mask_layers] == ["conv_b_mask"]
    with pytest.raises(ValueError, match="`after`"):
        insert_masks(base, after="relu")
    with pytest.raises(ValueError, match="`alpha`"):
        insert_masks(base, alpha=-1)


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, activation="relu")

        def call(self, inputs):
            return self.dense(inputs)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed.*GradientMask"):
        insert_masks(net)


def test_masks_carry_the_options():
    base = _two_input_residual_model()
    masked = insert_masks(base, "random", keep_fraction=0.3, seed=7)
    configs = [layer.get_config() for layer in masked.mask_layers]
    assert all(c["rule"] == "random" and c["keep_fraction"] == 0.3 for c in configs)
    # One seed per point, derived from the model's (as build_model derives them).
    assert sorted(c["seed"] for c in configs) == sorted(itertools.islice(point_seeds(7), 3))
    assert all(isinstance(layer, GradientMask) for layer in masked.mask_layers)
