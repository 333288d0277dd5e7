"""Pruning evaluation (eval/pruning.py) on tiny models with fixed random weights."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from eval import pruning, tfmot_compat
from gradmask_tf import build_model, mask_layers, ops
from tests.reference import reference_mask

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASET = "fashion_mnist"
MASK_CONFIG = ops.MaskConfig(rule="mean", scope="spatial", alpha=1.0, seed=0)
FINE_TUNE = pruning.FineTune(
    optimizer="adam", learning_rate=1e-4, batch_size=16, epochs=1, num_examples=32,
    mask_config=MASK_CONFIG, seed=0,
)


def randomize(model, seed):
    """Fixed random weights, biases and BatchNorm statistics, none at their defaults."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        name = variable.path.split("/")[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0, np.sqrt(2 / fan_in), shape)
        elif name in ("bias", "beta", "moving_mean"):
            value = rng.normal(0, 0.1, shape)
        elif name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # A mask point's switch and probe keep their values.
            continue
        variable.assign(value.astype(variable.dtype))
    return model


@pytest.fixture(scope="module")
def cnn():
    model = build_model(
        "cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule="mean",
        dataset="fashion_mnist", seed=0,
    )
    return randomize(model, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.random((24, 28, 28, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def labels():
    return np.random.default_rng(2).integers(0, 10, 24)


def fresh_twin(model, **options):
    return tfmot_compat.build_twin(model, "cnn", dataset=DATASET, **options)


@pytest.fixture(scope="module")
def twin(cnn):
    return fresh_twin(cnn, mask_config=MASK_CONFIG)


def layer_values(model, names):
    return {name: [w.copy() for w in model.get_layer(name).get_weights()] for name in names}


def test_twin_predicts_what_the_model_does(cnn, twin, images):
    expected = cnn.predict(images, verbose=0)
    actual = tfmot_compat.verify_twin(cnn, twin, images, batch_size=10)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in twin.layers] == [layer.name for layer in cnn.layers]
    for name in ("conv1", "conv2", "dense1", "logits"):
        for a, b in zip(cnn.get_layer(name).get_weights(), twin.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("architecture", ["cnn", "vgg"])
def test_a_block_twin_predicts_what_the_model_does(architecture):
    shape = (28, 28, 1) if architecture == "cnn" else (8, 8, 3)
    model = randomize(
        build_model(architecture, input_shape=shape, num_classes=4, mask_rule="mean",
                    placement="block", seed=0),
        seed=6,
    )
    images = np.random.default_rng(7).random((6, *shape), dtype=np.float32)
    twin = tfmot_compat.build_twin(model, architecture, mask_config=MASK_CONFIG,
                                   placement="block")
    actual = tfmot_compat.verify_twin(model, twin, images)
    np.testing.assert_allclose(actual, model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
    for mask in mask_layers(model):  # Each twin mask point follows the same layer.
        assert (twin.get_layer(mask.name).input._keras_history[0].name
                == mask.input._keras_history[0].name)
    # The other placement builds other mask points: refused, naming the placement.
    with pytest.raises(ValueError, match=r"--mask_placement.*placement='activation'"):
        tfmot_compat.build_twin(model, architecture)


def test_a_broken_twin_fails_loudly(cnn, images):
    broken = fresh_twin(cnn)
    broken.get_layer("conv2").bias[3].assign(broken.get_layer("conv2").bias[3] + 1.0)
    with pytest.raises(RuntimeError, match=r"Weights that differ: conv2/bias\."):
        tfmot_compat.verify_twin(cnn, broken, images)
    # Other normalization statistics: no weight differs, the layer's output does.
    other = tfmot_compat.build_twin(cnn, "cnn", dataset="mnist")
    with pytest.raises(RuntimeError, match=r"Weights that differ: none\. .*: normalization"):
        tfmot_compat.verify_twin(cnn, other, images)


def test_a_model_of_another_architecture_or_rule_is_refused(cnn):
    with pytest.raises(ValueError, match="mask_config.rule='topk'"):
        fresh_twin(cnn, mask_config=ops.MaskConfig(rule="topk"))
    with pytest.raises(ValueError, match="architecture='vgg'"):
        tfmot_compat.build_twin(cnn, "vgg", dataset=DATASET)
    with pytest.raises(ValueError, match="build_graph can also build with tf_keras"):
        tfmot_compat.build_twin(cnn, "keras.applications.ResNet50")


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8, 0.95])
def test_one_shot_reaches_the_target_sparsity(cnn, target):
    pruned = pruning.prune_one_shot(fresh_twin(cnn), target)
    stripped = pruning.strip(pruned)
    names = pruning.prunable_layer_names(stripped)
    assert names == ["conv1", "conv2", "dense1", "logits"]
    for name in names:  # Every kernel, as TF-MOT's assert_model_sparsity checks.
        kernel = stripped.get_layer(name).kernel.numpy()
        assert abs(1 - np.count_nonzero(kernel) / kernel.size - target) <= 0.01, name
    assert abs(pruning.kernel_sparsity(stripped, names) - target) <= 0.01


def test_the_stripped_model_predicts_what_the_pruned_one_did(cnn, images):
    pruned = pruning.prune_one_shot(fresh_twin(cnn), 0.7)
    expected = pruned(images, training=False).numpy()
    stripped = pruning.strip(pruned)
    assert not any(hasattr(layer, "pruning_obj") for layer in stripped.layers)
    assert any(hasattr(layer, "pruning_obj") for layer in pruned.layers)
    np.testing.assert_array_equal(stripped(images, training=False).numpy(), expected)


def test_one_shot_zeroes_the_smallest_kernel_entries_and_nothing_else():
    # A ResNet: BatchNorm statistics must not move (no training step is taken).
    model = randomize(
        build_model("resnet20", input_shape=(8, 8, 3), num_classes=4, mask_rule="mean"),
        seed=3,
    )
    twin = tfmot_compat.build_twin(model, "resnet20")
    tfmot_compat.verify_twin(
        model, twin, np.random.default_rng(4).random((4, 8, 8, 3), "float32")
    )
    prunable = pruning.prunable_layer_names(twin)
    before = layer_values(twin, [layer.name for layer in twin.layers if layer.weights])
    stripped = pruning.strip(pruning.prune_one_shot(twin, 0.6))
    for name, values in before.items():
        after = stripped.get_layer(name).get_weights()
        if name not in prunable:  # BatchNorm: gamma, beta and both statistics.
            for a, b in zip(values, after):
                np.testing.assert_array_equal(a, b)
            continue
        kernel, pruned_kernel = values[0], after[0]
        for a, b in zip(values[1:], after[1:]):  # The logits' bias.
            np.testing.assert_array_equal(a, b)
        kept = pruned_kernel != 0
        np.testing.assert_array_equal(pruned_kernel[kept], kernel[kept])
        assert np.abs(kernel[kept]).min() >= np.abs(kernel[~kept]).max(), name


def test_the_twin_masks_gradients_with_the_run_rule_only_in_training(cnn, twin):
    legacy = tfmot_compat.legacy_keras()
    trained = {layer.name: layer.mask_config for layer in mask_layers(cnn)}
    twins = {
        layer.name: layer.mask_config
        for layer in twin.layers
        if isinstance(layer, legacy.GradientMask)
    }
    assert twins == trained
    assert {config.rule for config in twins.values()} == {"mean"}
    layer = twin.get_layer("mask1")
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 6, 6, 3)).astype("float32"))
    upstream = rng.normal(size=(2, 6, 6, 3)).astype("float32")

    def input_gradient(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        return tape.gradient(y, x, output_gradients=upstream).numpy()

    expected, _ = reference_mask(upstream, "mean")
    np.testing.assert_allclose(input_gradient(True), expected, rtol=1e-6)
    np.testing.assert_array_equal(input_gradient(False), upstream)
    np.testing.assert_array_equal(input_gradient(None), upstream)


@pytest.mark.parametrize(
    "options",
    (dict(mask_rule="random", keep_fraction=0.5), dict(mask_rule="mean", control=True)),
    ids=("random", "mean control"),
)
def test_the_twin_draws_a_new_mask_each_training_step(options):
    model = build_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=7, **options)
    config = model.get_layer("mask2").mask_config
    twin = tfmot_compat.build_twin(model, "cnn", mask_config=config)
    layer = twin.get_layer("mask2")
    assert layer.mask_config == config
    x = tf.ones((2, 6, 6, 8))
    upstream = tf.random.stateless_normal(x.shape, seed=[1, 2])

    def kept():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, x, output_gradients=upstream).numpy() != 0

    first, second = kept(), kept()
    assert 0.2 < first.mean() < 0.8
    assert (first != second).any()


def test_the_fine_tune_reaches_its_target_at_the_last_mask_update():
    assert pruning.fine_tune_schedule(2) == (1, 2)
    assert pruning.fine_tune_schedule(469) == (46, 460)  # 9 steps recover after it.
    assert pruning.fine_tune_schedule(1000) == (100, 1000)


def test_evaluate_pruning_result(cnn, images, labels, monkeypatch):
    calls = []
    masked_identity = ops.masked_identity

    def counting(*args, **kwargs):
        calls.append(args[1].rule)
        return masked_identity(*args, **kwargs)

    monkeypatch.setattr(ops, "masked_identity", counting)
    train_data = tf.data.Dataset.from_tensor_slices(
        (np.random.default_rng(6).random((40, 28, 28, 1), "float32"),
         np.arange(40, dtype="int32") % 10)
    )
    result = pruning.evaluate_pruning(
        cnn, (images, labels), architecture="cnn", dataset=DATASET, sparsities=(0.9, 0.5),
        fine_tune=FINE_TUNE, train_data=train_data,
    )
    assert json.loads(json.dumps(result)) == result
    assert set(result) == {"dense_accuracy", "one_shot", "fine_tuned", "num_examples",
                           "settings"}
    assert result["num_examples"] == len(images)
    expected_accuracy = np.mean(np.argmax(cnn.predict(images, verbose=0), -1) == labels)
    assert result["dense_accuracy"] == pytest.approx(expected_accuracy)
    for mode in pruning.PRUNING_MODES:
        assert list(result[mode]) == ["0.5", "0.9"]
        for key, point in result[mode].items():
            assert set(point) == {"accuracy", "sparsity"}
            assert 0 <= point["accuracy"] <= 1
            assert abs(point["sparsity"] - float(key)) <= 0.01, (mode, key)
    settings = result["settings"]
    assert settings["sparsities"] == [0.5, 0.9]
    assert settings["pruned_layers"] == ["conv1", "conv2", "dense1", "logits"]
    assert settings["fine_tune_examples"] == 32
    assert settings["fine_tune_steps"] == 2  # 32 examples in batches of 16.
    assert settings["learning_rate"] == pytest.approx(1e-4)
    assert settings["optimizer"] == "adam"
    assert settings["schedule"]["one_shot"] == "ConstantSparsity"
    assert settings["schedule"]["fine_tuned"] == "PolynomialDecay"
    assert settings["masks"] == "mean during fine-tuning; inactive at evaluation"
    assert set(settings["library_versions"]) >= {
        "tensorflow-model-optimization", "tf-keras", "tensorflow"}
    assert all(settings["library_versions"].values())
    # The masks ran in the fine-tune's training graph and never at inference: each
    # fine-tune traced its step once (3 mask points, 2 sparsities; its optimizer's
    # variables made before, or tf_keras traces the whole step twice).
    assert calls == ["mean"] * 6


def test_one_shot_only_runs_no_mask(cnn, images, labels, monkeypatch):
    monkeypatch.setattr(ops, "masked_identity", None)  # Any call would fail.
    result = pruning.evaluate_pruning(
        cnn, (images, labels), architecture="cnn", dataset=DATASET, sparsities=(0.5,)
    )
    assert result["fine_tuned"] == {}
    assert list(result["one_shot"]) == ["0.5"]
    assert result["settings"]["fine_tune_steps"] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sparsities=(0.5, 1.0)), "sparsities"),
        (dict(sparsities=()), "sparsities"),
        (dict(batch_size=0), "batch_size"),
        (dict(fine_tune=FINE_TUNE), "train_data"),
        (dict(fine_tune={"epochs": 1}), "fine_tune"),
    ],
)
def test_invalid_arguments_are_refused(cnn, images, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pruning.evaluate_pruning(cnn, (images, labels), architecture="cnn", **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epochs=0), "epochs=0"),
        (dict(num_examples=0), "num_examples=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0"),
        (dict(optimizer="adagrad"), "optimizer='adagrad'"),
        (dict(mask_config={"rule": "mean"}), "mask_config"),
        (dict(momentum=1.0), "momentum=1.0"),
    ],
)
def test_invalid_fine_tune_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pruning.FineTune(**kwargs)


def test_the_fine_tune_takes_the_runs_optimizer_and_momentum():
    config = {"optimizer": "sgd", "momentum": 0.5, "learning_rate": 0.05, "batch_size": 64,
              "seed": 3, "mask_rule": "mean", "mask_control": True}
    fine_tune = pruning.fine_tune_of_run(config)
    assert (fine_tune.optimizer, fine_tune.momentum, fine_tune.batch_size) == ("sgd", 0.5, 64)
    assert fine_tune.learning_rate == pytest.approx(0.005)
    assert fine_tune.mask_config.control and fine_tune.mask_config.rule == "mean"


def test_invalid_data_is_refused(cnn, images, labels):
    with pytest.raises(ValueError, match="images"):
        pruning.evaluate_pruning(cnn, (images[..., 0], labels), architecture="cnn")
    with pytest.raises(ValueError, match=r"shape \[N, 28, 28, 1\], the model.s input"):
        pruning.evaluate_pruning(cnn, (images[:, :20, :20], labels), architecture="cnn")
    batched = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with pytest.raises(ValueError, match="unbatched"):
        pruning.evaluate_pruning(cnn, (images, labels), architecture="cnn",
                                 fine_tune=FINE_TUNE, train_data=batched)


_ENVIRONMENT_CHECK = """
import os, sys
before = os.environ.get("TF_USE_LEGACY_KERAS")
import numpy as np
import tensorflow as tf
from eval import pruning
from gradmask_tf import build_model
model = build_model("cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule="mean")
images = np.zeros((4, 28, 28, 1), "float32")
train = tf.data.Dataset.from_tensor_slices((images, np.zeros(4, "int32")))
fine_tune = pruning.FineTune(optimizer="sgd", batch_size=4, seed=0) if FINE_TUNE else None
pruning.evaluate_pruning(
    model, (images, np.zeros(4, "int64")), architecture="cnn", sparsities=(0.5,),
    fine_tune=fine_tune, train_data=train if FINE_TUNE else None)
import keras
assert "tf_keras" in sys.modules and "tensorflow_model_optimization" in sys.modules
assert os.environ.get("TF_USE_LEGACY_KERAS") == before, os.environ.get("TF_USE_LEGACY_KERAS")
assert tf.keras.layers.Dense is keras.layers.Dense, tf.keras
assert tf.keras.version().startswith("3."), tf.keras.version()
print("unchanged")
"""


# One-shot pruning imports TF-MOT through the adapter too; the fine-tune (a tf_keras
# fit, seconds) once.
@pytest.mark.parametrize("previous, fine_tune", [(None, True), ("0", False)])
def test_tf_keras_stays_keras_3_and_the_environment_unchanged(previous, fine_tune):
    # A fresh process: tf.keras has not been resolved before TF-MOT is imported.
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    env.pop("TF_USE_LEGACY_KERAS", None)
    if previous is not None:
        env["TF_USE_LEGACY_KERAS"] = previous
    process = subprocess.run(
        [sys.executable, "-c", f"FINE_TUNE = {fine_tune}\n{_ENVIRONMENT_CHECK}"],
        cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip().endswith("unchanged")
