"""The lateral-inhibition saliency against an independent SciPy computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from eval import lateral_inhibition, saliency
from tests.test_saliency import IMAGE_SHAPE, NUM_CLASSES, object_images, plain_and_masked


@pytest.fixture(scope="module")
def data():
    return object_images()


def pooled_cnn(seed=0):
    """conv-Activation("relu")-pool-conv(activation="relu")-GAP-dense: two ReLU
    outputs of different sizes, one resized."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE, name="images")
    x = keras.layers.Conv2D(
        3, 3, padding="same", bias_initializer="random_normal", name="conv1"
    )(inputs)
    x = keras.layers.Activation("relu", name="act1")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(
        4, 3, padding="same", activation="relu", bias_initializer="random_normal",
        name="conv2",
    )(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs)


def test_lateral_inhibition_matches_an_independent_scipy_computation(data):
    from scipy import ndimage

    images, labels = data
    model = pooled_cnn()
    assert lateral_inhibition.relu_layers(model) == ["act1", "conv2"]
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1.0
    kernel = ndimage.gaussian_laplace(impulse, sigma=11)
    np.testing.assert_array_equal(lateral_inhibition.lateral_inhibition_kernel(), kernel)
    # Each ReLU output's gradient on its own: the output of a sub-model, watched, and
    # the rest of the model applied layer by layer.
    heads = {"act1": ("pool", "conv2", "gap", "logits"), "conv2": ("gap", "logits")}
    total = 0.0
    for name, head in heads.items():
        activation = keras.Model(model.input, model.get_layer(name).output)(images)
        with tf.GradientTape() as tape:
            tape.watch(activation)
            x = activation
            for layer in head:
                x = model.get_layer(layer)(x)
            score = tf.gather(x, labels, batch_dims=1)
        gradient = tape.gradient(score, activation).numpy().astype(np.float64)
        norm = np.sqrt((gradient**2).sum(axis=-1))
        # "reflect" padding with the edge not repeated (NumPy's, tf.pad's, PyTorch's)
        # is SciPy's "mirror".
        filtered = np.stack([ndimage.convolve(m, kernel, mode="mirror") for m in norm])
        response = np.maximum(-filtered, 0.0)
        total = total + tf.image.resize(
            response[..., None], IMAGE_SHAPE[:2], method="bilinear"
        ).numpy()[..., 0]
    low = total.min(axis=(1, 2), keepdims=True)
    expected = (total - low) / (total.max(axis=(1, 2), keepdims=True) - low)
    maps = lateral_inhibition.lateral_inhibition_maps(model, images, labels, batch_size=2)
    assert maps.shape == images.shape[:3] and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    # In saliency_maps, scaled to sum 1 like the other methods.
    scaled = saliency.saliency_maps(model, images, labels, ("lateral_inhibition",))
    np.testing.assert_allclose(
        scaled["lateral_inhibition"], expected / expected.sum(axis=(1, 2), keepdims=True),
        rtol=1e-5, atol=1e-7,
    )


def test_lateral_inhibition_is_exact_with_masks_and_rejects_bad_input(data):
    images, labels = data
    plain, masked = plain_and_masked()
    # The masks follow the ReLUs and do not count; the maps ignore them.
    assert lateral_inhibition.relu_layers(masked) == ["relu1", "relu2"]
    expected = lateral_inhibition.lateral_inhibition_maps(plain, images, labels)
    maps = lateral_inhibition.lateral_inhibition_maps(masked, images, labels)
    np.testing.assert_allclose(maps, expected, rtol=1e-6, atol=1e-7)
    assert np.all((maps >= 0) & (maps <= 1))
    result, _ = saliency.evaluate_saliency(
        masked, (images, labels), methods=("lateral_inhibition",)
    )
    assert result["settings"]["lateral_inhibition_layers"] == ["relu1", "relu2"]
    assert 0 <= result["foreground_focus"]["lateral_inhibition"] <= 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lateral_inhibition.lateral_inhibition_maps(plain, images * 255, labels)
    with pytest.raises(ValueError, match="labels"):
        lateral_inhibition.lateral_inhibition_maps(plain, images, labels + NUM_CLASSES)
    with pytest.raises(ValueError, match="batch_size"):
        lateral_inhibition.lateral_inhibition_maps(plain, images, labels, batch_size=0)
    flat = keras.Sequential([
        keras.Input(IMAGE_SHAPE), keras.layers.Flatten(),
        keras.layers.Dense(4, activation="relu"), keras.layers.Dense(NUM_CLASSES),
    ])
    with pytest.raises(ValueError, match="no ReLU layer with a 4-D output"):
        saliency.saliency_maps(flat, images, labels, ("lateral_inhibition",))
