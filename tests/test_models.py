"""The reference architectures, in process: mask points (METHOD.md §3) and a training step."""

import functools
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradmask_tf
from gradmask_tf.layers import point_seeds

# `activation` placement: one mask point after every conv block's non-linearity (in
# a residual block: after the add and its ReLU; plus the ResNet stem) and after every
# hidden dense layer.
MASK_POINTS = {"cnn": 2 + 1, "vgg": 6 + 1, "resnet20": 1 + 9, "resnet32": 1 + 15, "resnet56": 1 + 27}
# The smallest inputs every architecture's pooling and strides still take.
INPUT_SHAPES = {"cnn": (8, 8, 1)}
NUM_CLASSES = 5


def _graph(model):
    """`(producer, consumers)`: the layer that makes each layer's input(s), and the reverse."""
    maker = {id(layer.output): layer for layer in model.layers}
    producers, consumers = {}, {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        producers[layer.name] = [maker[id(tensor)] for tensor in inputs]
        for source in producers[layer.name]:
            consumers[source.name].append(layer)
    return producers, consumers


@functools.cache
def _masked(architecture):
    return _build(architecture, "mean")


def _build(architecture, rule, **options):
    keras.utils.set_random_seed(0)
    return gradmask_tf.build_model(
        architecture,
        input_shape=INPUT_SHAPES.get(architecture, (8, 8, 3)),
        num_classes=NUM_CLASSES,
        mask_rule=rule,
        **options,
    )


def _train_step(model, rule):
    """One `GradMaskModel.train_step` on a batch of 4; returns the step's logs.

    Run eagerly: tracing a deep model's step costs many times the step itself, and
    train.py's runs (tests/test_train.py) run the traced step.
    """
    shape = model.inputs[0].shape[1:]
    rng = np.random.default_rng(0)
    images = rng.random((4, *shape)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, 4)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    before = [np.array(weight) for weight in model.trainable_weights]
    logs = model.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"])
    unchanged = [
        weight.path
        for weight, old in zip(model.trainable_weights, before)
        if np.array_equal(np.array(weight), old)
    ]
    # The first conv's kernel changes only if the gradient came through every mask point.
    assert not unchanged, f"weights the step did not update: {unchanged}"
    kept = [value for name, value in logs.items() if name.startswith("kept_fraction/")]
    assert len(kept) == len(gradmask_tf.mask_layers(model))
    if rule == "none":
        assert all(value == 1.0 for value in kept)
    else:
        # A mask right before global average pooling sees the same gradient at every
        # position: a tie that `mean` keeps whole.
        assert all(0 < value <= 1 for value in kept) and min(kept) < 1, kept
    assert logs["gradient_norm"] > 0
    return logs


@pytest.mark.parametrize("architecture", gradmask_tf.ARCHITECTURES)
def test_mask_points_sit_after_each_block_nonlinearity_and_never_on_the_logits(architecture):
    model = _masked(architecture)
    masks = gradmask_tf.mask_layers(model)
    assert len(masks) == MASK_POINTS[architecture]
    assert all(isinstance(mask, gradmask_tf.GradientMask) for mask in masks)
    producers, consumers = _graph(model)
    for mask in masks:
        (relu,) = producers[mask.name]
        assert isinstance(relu, keras.layers.ReLU), (mask.name, relu.name)
        (before,) = producers[relu.name]
        allowed = (keras.layers.Add, keras.layers.BatchNormalization, keras.layers.Conv2D, keras.layers.Dense)
        assert isinstance(before, allowed), (mask.name, before.name)
    masked_relus = {producers[mask.name][0].name for mask in masks}
    for layer in model.layers:
        feeds = consumers[layer.name]
        if isinstance(layer, keras.layers.Add) or (
            isinstance(layer, keras.layers.Dense) and layer.name not in model.output_names
        ):
            # Every residual add and every hidden dense layer reaches a mask through its ReLU.
            (relu,) = feeds
            assert relu.name in masked_relus, layer.name
        if isinstance(layer, keras.layers.ReLU) and layer.name not in masked_relus:
            # Only the ReLU inside a residual block, before its second conv, has none.
            assert architecture.startswith("resnet"), layer.name
            assert [type(f) for f in feeds] == [keras.layers.Conv2D], layer.name
    # The logits: a plain Dense output, no mask on it or after it.
    (output,) = model.outputs
    (logits,) = [layer for layer in model.layers if layer.output is output]
    assert isinstance(logits, keras.layers.Dense) and not consumers[logits.name]
    assert logits.activation in (None, keras.activations.linear)


# A step and a file per builder: resnet32 and resnet56 are resnet20's builder with more
# blocks per stage (their mask points are checked above, block by block).
BUILDERS = [name for name in gradmask_tf.ARCHITECTURES if name not in ("resnet32", "resnet56")]


@pytest.mark.parametrize("architecture", BUILDERS)
def test_one_training_step_with_masks_on_and_off(architecture):
    masked = _masked(architecture)
    _train_step(masked, "mean")
    baseline = _build(architecture, "none")
    # The baseline has the same layers and weights; only the backward pass differs.
    assert [(type(a), a.name) for a in masked.layers] == [(type(b), b.name) for b in baseline.layers]
    assert [w.shape for w in masked.weights] == [w.shape for w in baseline.weights]
    assert {mask.get_config()["rule"] for mask in gradmask_tf.mask_layers(baseline)} == {"none"}
    _train_step(baseline, "none")


# `block` placement (METHOD.md §3): the layer feeding each mask point, in order.
BLOCK_POINTS = {
    "cnn": ["pool1", "pool2", "relu3"],
    "vgg": ["pool1", "pool2", "pool3", "relu7"],
}


@pytest.mark.parametrize("architecture", gradmask_tf.ARCHITECTURES)
def test_block_mask_points_sit_at_each_block_output(architecture):
    model = _build(architecture, "mean", placement="block")
    producers, consumers = _graph(model)
    masks = gradmask_tf.mask_layers(model)
    fed_by = [producers[mask.name][0] for mask in masks]
    if architecture.startswith("resnet"):
        # The ResNets' block outputs are their points under `activation` already.
        activation = _masked(architecture)
        assert [(type(a), a.name) for a in model.layers] == [
            (type(b), b.name) for b in activation.layers
        ]
        assert [layer.name for layer in fed_by] == [
            _graph(activation)[0][mask.name][0].name
            for mask in gradmask_tf.mask_layers(activation)
        ]
        return
    assert [layer.name for layer in fed_by] == BLOCK_POINTS[architecture]
    *pools, dense_relu = fed_by
    assert all(isinstance(pool, keras.layers.MaxPooling2D) for pool in pools)
    assert isinstance(dense_relu, keras.layers.ReLU)
    assert isinstance(producers[dense_relu.name][0], keras.layers.Dense)
    # No mask right after a conv ReLU; none on or after the logits.
    for layer in model.layers:
        if isinstance(layer, keras.layers.ReLU) and layer is not dense_relu:
            assert [type(f) for f in consumers[layer.name]] != [gradmask_tf.GradientMask]
    (logits,) = [layer for layer in model.layers if layer.output is model.outputs[0]]
    assert isinstance(logits, keras.layers.Dense) and not consumers[logits.name]
    # The same weights as under `activation`, by name: only the mask points moved.
    def weights(m):
        return sorted(w.path for w in m.weights if not w.path.startswith("mask"))

    assert weights(model) == weights(_masked(architecture))


def _arriving_gradients(model):
    """The loss gradient arriving at each mask point, on a batch of 4 (inference mode)."""
    masks = gradmask_tf.mask_layers(model)
    probe = keras.Model(model.inputs, [mask.output for mask in masks] + model.outputs)
    rng = np.random.default_rng(5)
    images = rng.random((4, *model.inputs[0].shape[1:])).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, 4)
    with tf.GradientTape() as tape:
        *points, logits = probe(images, training=False)
        tape.watch(points)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return {mask.name: g.numpy() for mask, g in zip(masks, tape.gradient(loss, points))}


def test_the_gradient_arriving_at_cnn_block_points_is_dense():
    block = _build("cnn", "none", placement="block")
    _train_step(block, "none")
    for name, gradient in _arriving_gradients(block).items():
        assert np.count_nonzero(gradient) == gradient.size, name
    # Under `activation`, max pooling zeroes 3 in 4 entries at the conv points.
    activation = _build("cnn", "none")
    _train_step(activation, "none")
    arriving = _arriving_gradients(activation)
    for name in ("mask1", "mask2"):
        assert np.mean(arriving[name] == 0) >= 0.75, name


def test_an_invalid_placement_is_refused():
    with pytest.raises(ValueError, match=r"`placement`: expected one of activation, block"):
        _build("cnn", "mean", placement="blocks")
    with pytest.raises(ValueError, match=r"placement='block'"):
        gradmask_tf.build_model(
            "keras.applications.MobileNet", input_shape=(32, 32, 3), num_classes=2,
            placement="block",
        )


def test_an_application_is_resized_up_and_masked_by_insertion():
    model = gradmask_tf.build_model(
        "keras.applications.MobileNet", input_shape=(28, 28, 1), num_classes=NUM_CLASSES
    )
    (resize,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Resizing)]
    assert resize.output.shape[1:3] == (32, 32)  # the constructor's minimum size
    assert isinstance(model, gradmask_tf.GradMaskModel) and len(model.mask_layers) > 20
    _train_step(model, "mean")


def test_each_mask_point_draws_with_its_own_seed_from_the_run_seed():
    masks = gradmask_tf.mask_layers(_build("cnn", "random", seed=3))
    assert [mask.seed for mask in masks] == list(itertools.islice(point_seeds(3), len(masks)))
    again = gradmask_tf.mask_layers(_build("cnn", "random", seed=3))
    assert [mask.seed for mask in again] == [mask.seed for mask in masks]


@pytest.mark.parametrize("architecture", BUILDERS)
def test_keras_file_round_trip(architecture, tmp_path):
    model = _masked(architecture)
    images = np.random.default_rng(1).random((2, *model.inputs[0].shape[1:])).astype("float32")
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(reloaded, gradmask_tf.GradMaskModel)
    assert [mask.get_config() for mask in gradmask_tf.mask_layers(reloaded)] == [
        mask.get_config() for mask in gradmask_tf.mask_layers(model)
    ]
    np.testing.assert_allclose(
        reloaded(images, training=False), model(images, training=False), rtol=1e-5, atol=1e-6
    )
