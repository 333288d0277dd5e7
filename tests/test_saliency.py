"""Saliency maps and foreground focus, on tiny fixed-weight models."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from eval import focus, saliency
from gradmask_tf import GradientMask, build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SHAPE = (12, 12, 1)
NUM_CLASSES = 3
SMOKE = dict(smoothgrad_samples=3)


def tiny_cnn(mask_options=None, seed=0):
    """conv-relu-[mask]-conv-relu-[mask]-pool-dense; same seed, same weights."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE, name="images")
    x = inputs
    for index in (1, 2):
        # Non-zero biases, as after training: with zero ones, the gradient vanishes
        # wherever a receptive field is all background.
        x = keras.layers.Conv2D(
            4, 3, padding="same", bias_initializer="random_normal", name=f"conv{index}"
        )(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        if mask_options is not None:
            x = GradientMask(name=f"mask{index}", **mask_options)(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs)


def object_images(num_images=5, seed=0):
    """Rectangles of positive pixels on an exactly-zero background."""
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, *IMAGE_SHAPE), np.float32)
    for image in images:
        top, left = rng.integers(1, 5, size=2)
        height, width = rng.integers(4, 7, size=2)
        patch = rng.uniform(0.2, 1.0, size=(height, width, 1))
        image[top : top + height, left : left + width] = patch
    labels = np.arange(num_images) % NUM_CLASSES
    return images, labels


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def data():
    return object_images()


def test_maps_have_the_image_shape_and_are_finite_non_negative_distributions(
    model, data
):
    images, labels = data
    maps = saliency.saliency_maps(
        model, images, labels, saliency.METHODS, smoothgrad_samples=3, batch_size=2
    )
    assert list(maps) == list(saliency.METHODS)
    for method, method_maps in maps.items():
        assert method_maps.shape == images.shape[:3], method
        assert np.all(np.isfinite(method_maps)), method
        assert np.all(method_maps >= 0), method
        np.testing.assert_allclose(method_maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        # Not a constant map: the method saw the image.
        assert np.all(method_maps.std(axis=(1, 2)) > 0), method
        values = focus.foreground_focus(method_maps, images)
        assert values.shape == (len(images),)
        assert np.all((values >= 0) & (values <= 1)), (method, values)


def test_vanilla_map_is_the_channel_max_of_the_absolute_input_gradient(model, data):
    images, labels = data
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        score = tf.gather(logits, labels, batch_dims=1)
    expected = np.abs(tape.gradient(score, x).numpy()).max(axis=-1)
    expected /= expected.sum(axis=(1, 2), keepdims=True)
    maps = saliency.saliency_maps(model, images, labels, ("saliency",))
    np.testing.assert_allclose(maps["saliency"], expected, rtol=1e-5, atol=1e-8)


def test_all_zero_maps_have_no_focus_and_are_excluded_with_a_count(data):
    images, labels = data
    # Logits that ignore the image: every gradient map is zero.
    blind = tiny_cnn()
    for layer in blind.layers:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    result, _ = saliency.evaluate_saliency(
        blind, (images, labels), methods=("saliency", "smoothgrad"), **SMOKE
    )
    assert result["num_excluded"] == {
        "saliency": len(images),
        "smoothgrad": len(images),
    }
    assert result["foreground_focus"] == {"saliency": None, "smoothgrad": None}
    json.dumps(result, allow_nan=False)


def plain_and_masked():
    """A tiny cnn, and its twin with `topk` masks and the same weights."""
    plain = tiny_cnn()
    masked = tiny_cnn(dict(rule="topk", keep_fraction=0.1))
    for layer in plain.layers:
        masked.get_layer(layer.name).set_weights(layer.get_weights())
    return plain, masked


def test_gradient_mask_layers_leave_the_maps_exact(data):
    images, labels = data
    plain, masked = plain_and_masked()

    def input_gradient(model, training):
        x = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.gather(model(x, training=training), labels, batch_dims=1)
        return tape.gradient(score, x).numpy()

    # The masks would change the gradients if they were active...
    assert not np.allclose(input_gradient(masked, True), input_gradient(plain, True))
    # ...and the saliency methods run with them inactive.
    options = dict(smoothgrad_samples=3, penultimate_layer="relu2")
    expected = saliency.saliency_maps(plain, images, labels, **options)
    maps = saliency.saliency_maps(masked, images, labels, **options)
    for method in saliency.DEFAULT_METHODS:
        np.testing.assert_allclose(maps[method], expected[method], rtol=1e-6, atol=1e-9)


def test_gradcam_plus_plus_survives_logits_whose_exp_overflows(data):
    images, labels = data
    confident = tiny_cnn()
    logits = confident.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 100.0, bias + 200.0])
    true_logits = confident(images).numpy()[np.arange(len(labels)), labels]
    assert np.all(true_logits > np.log(np.finfo(np.float32).max))  # exp overflows.
    maps = saliency.saliency_maps(confident, images, labels, ("gradcam++",))
    assert np.all(np.isfinite(maps["gradcam++"]))
    np.testing.assert_allclose(maps["gradcam++"].sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_penultimate_layer_of_the_reference_cnn():
    cnn = build_model("cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule="mean")
    assert saliency.find_penultimate_layer(cnn) == "mask2"
    images, labels = object_images(2)
    images = np.pad(images, ((0, 0), (8, 8), (8, 8), (0, 0)))
    result, _ = saliency.evaluate_saliency(cnn, (images, labels), methods=("gradcam++",))
    assert result["settings"]["penultimate_layer"] == "mask2"
    # Named explicitly: the mask point is an identity at inference, so its ReLU gives
    # the same map, while the convolution before the ReLU does not.
    maps = {
        name: saliency.saliency_maps(
            cnn, images, labels, ("gradcam++",), penultimate_layer=name
        )["gradcam++"]
        for name in ("mask2", "relu2", "conv2")
    }
    np.testing.assert_allclose(maps["relu2"], maps["mask2"], rtol=1e-5, atol=1e-9)
    assert not np.allclose(maps["conv2"], maps["mask2"], rtol=1e-3, atol=1e-6)
    for name, match in (("dense1", "4-D"), ("nope", "name of a layer")):
        with pytest.raises(ValueError, match=match):
            saliency.saliency_maps(
                cnn, images, labels, ("gradcam++",), penultimate_layer=name
            )
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no layer with a 4-D output"):
        saliency.find_penultimate_layer(dense)


def test_works_after_legacy_keras_is_switched_on_in_the_process(
    model, data, monkeypatch
):
    images, labels = data
    before, _ = saliency.evaluate_saliency(
        model, (images, labels), methods=saliency.METHODS, **SMOKE
    )
    # What importing TF-MOT (eval/pruning.py) does; monkeypatch restores it.
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    # TensorFlow bound `tf.keras` when eval.saliency imported tf-keras-vis; the
    # variable no longer changes it.
    assert tf.keras.Model is keras.Model
    after, _ = saliency.evaluate_saliency(
        model, (images, labels), methods=saliency.METHODS, **SMOKE
    )
    assert after["foreground_focus"] == before["foreground_focus"]


def test_works_where_tf_keras_was_bound_to_legacy_keras_before_import():
    # TensorFlow binds `tf.keras` once per process; here to tf_keras, before
    # eval.saliency (and tf-keras-vis) is imported, as when TF-MOT comes first.
    script = textwrap.dedent(
        """
        import json, os
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tensorflow as tf
        assert tf.keras.Model.__module__.startswith("tf_keras"), tf.keras.Model
        import keras
        import numpy as np
        from eval import saliency
        from tests.test_saliency import object_images, tiny_cnn
        images, labels = object_images(3)
        result, maps = saliency.evaluate_saliency(
            tiny_cnn(), (images, labels), methods=saliency.METHODS, smoothgrad_samples=2
        )
        assert tf.keras.Model.__module__.startswith("tf_keras")
        assert all(np.isfinite(m).all() for m in maps.values())
        print(json.dumps(result))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert set(result["foreground_focus"]) == set(saliency.METHODS)
    assert all(0 <= value <= 1 for value in result["foreground_focus"].values())


def test_result_is_json_with_settings_and_the_maps(model, data):
    images, labels = data
    result, maps = saliency.evaluate_saliency(model, (images, labels), num_images=4, **SMOKE)
    json.loads(json.dumps(result, allow_nan=False))
    methods = list(saliency.DEFAULT_METHODS)
    assert set(result) == {
        "foreground_focus",
        "foreground_focus_std",
        "num_excluded",
        "chance",
        "num_examples",
        "settings",
    }
    for key in ("foreground_focus", "foreground_focus_std", "num_excluded"):
        assert list(result[key]) == methods
    assert result["num_examples"] == 4
    assert result["chance"] == pytest.approx(focus.object_share(images[:4]).mean())
    # The maps are those of the first images, and their focus is the result's.
    assert list(maps) == methods
    for method in methods:
        assert maps[method].shape == (4, *IMAGE_SHAPE[:2])
        values = focus.foreground_focus(maps[method], images[:4])
        assert result["foreground_focus"][method] == pytest.approx(values.mean())
    settings = result["settings"]
    assert settings["methods"] == methods
    assert settings["smoothgrad_samples"] == 3
    assert settings["smoothgrad_noise"] == 0.2
    assert settings["penultimate_layer"] == "relu2"
    assert settings["score"] == "true-label logit"
    assert settings["masks"] == "inactive (exact gradients)"
    versions = settings["library_versions"]
    assert versions["tf-keras-vis"] and {"tensorflow", "keras"} <= set(versions)


def test_smoothgrad_noise_is_seeded_and_numpy_state_restored(model, data):
    images, labels = data
    state = np.random.get_state()[1].copy()

    def smoothgrad(seed):
        return saliency.saliency_maps(
            model, images, labels, ("smoothgrad",), smoothgrad_samples=2, seed=seed
        )["smoothgrad"]

    np.testing.assert_array_equal(smoothgrad(1), smoothgrad(1))
    assert not np.allclose(smoothgrad(1), smoothgrad(2))
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_invalid_arguments_are_named(model, data):
    images, labels = data
    valid_names = r"saliency, smoothgrad, gradcam\+\+, scorecam"
    with pytest.raises(ValueError, match=valid_names):
        saliency.evaluate_saliency(model, (images, labels), methods=("gradcam",))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        saliency.evaluate_saliency(model, (images * 255, labels), **SMOKE)
    with pytest.raises(ValueError, match="num_images"):
        saliency.evaluate_saliency(model, (images, labels), num_images=0)
    with pytest.raises(ValueError, match="labels"):
        saliency.saliency_maps(model, images, labels + NUM_CLASSES, ("saliency",))
    with pytest.raises(ValueError, match="smoothgrad_samples"):
        saliency.saliency_maps(model, images, labels, smoothgrad_samples=0)
    with pytest.raises(ValueError, match="smoothgrad_noise"):
        saliency.saliency_maps(model, images, labels, ("smoothgrad",), smoothgrad_noise=-1.0)
