"""Reference architectures with their mask points (METHOD.md §3).

Two placements: `activation` puts a mask point after every non-linearity, `block` at
each block's output (after its pooling where it pools), where the arriving gradient
is dense.

The builders take the Keras module as an argument, so the pruning adapter can build
the identical graph with `tf_keras` (which TF-MOT requires) and copy weights by
layer name.
"""

import inspect
import re

import keras

# The names a run configuration checks without Keras are declared there, once.
from gradmask_tf.config import APPLICATIONS_PREFIX, ARCHITECTURES, PLACEMENTS
from gradmask_tf.errors import invalid
from gradmask_tf.insert import insert_masks
from gradmask_tf.layers import GradientMask, point_seeds
from gradmask_tf.training import GradMaskModel

# Per-dataset pixel statistics of the training split (images in [0, 1]); the
# normalization lives inside the model so attacks and saliency work in pixel space.
NORMALIZATION = {
    "fashion_mnist": ([0.2860], [0.3530]),
    "mnist": ([0.1307], [0.3081]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}

_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}


def _normalize(k, x, dataset, channels):
    mean, std = NORMALIZATION.get(dataset, ([0.5] * channels, [0.5] * channels))
    if len(mean) != channels:
        mean, std = [0.5] * channels, [0.5] * channels
    return k.layers.Normalization(
        mean=mean, variance=[s * s for s in std], name="normalization"
    )(x)


def _cnn(k, x, num_classes, mask, placement):
    """Small CNN for 28x28 inputs: two conv blocks and a hidden dense layer.

    Mask points mask1 and mask2 follow each block's ReLU (`activation`) or its max
    pool (`block`); mask3 follows the hidden dense ReLU.
    """
    for index, filters in enumerate((32, 64), start=1):
        x = k.layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = k.layers.ReLU(name=f"relu{index}")(x)
        if placement == "activation":
            x = mask(x, f"mask{index}")
        x = k.layers.MaxPooling2D(name=f"pool{index}")(x)
        if placement == "block":
            x = mask(x, f"mask{index}")
    x = k.layers.Flatten(name="flatten")(x)
    x = k.layers.Dense(128, name="dense1")(x)
    x = k.layers.ReLU(name="relu3")(x)
    x = mask(x, "mask3")
    x = k.layers.Dropout(0.3, name="dropout")(x)
    return k.layers.Dense(num_classes, name="logits")(x)


def _vgg(k, x, num_classes, mask, placement):
    """VGG-style network for 32x32 inputs: three stages of two conv-BN-ReLU.

    Mask points are numbered in order: mask1..mask6 after each conv ReLU and mask7
    after the hidden dense ReLU (`activation`), or mask1..mask3 after each stage's
    max pool and mask4 after the hidden dense ReLU (`block`).
    """
    index = points = 0
    for stage, filters in enumerate((64, 128, 256), start=1):
        for _ in range(2):
            index += 1
            x = k.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"conv{index}"
            )(x)
            x = k.layers.BatchNormalization(name=f"bn{index}")(x)
            x = k.layers.ReLU(name=f"relu{index}")(x)
            if placement == "activation":
                points += 1
                x = mask(x, f"mask{points}")
        x = k.layers.MaxPooling2D(name=f"pool{stage}")(x)
        if placement == "block":
            points += 1
            x = mask(x, f"mask{points}")
    x = k.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = k.layers.Dense(256, name="dense1")(x)
    x = k.layers.ReLU(name=f"relu{index + 1}")(x)
    x = mask(x, f"mask{points + 1}")
    x = k.layers.Dropout(0.3, name="dropout")(x)
    return k.layers.Dense(num_classes, name="logits")(x)


def _resnet(k, x, num_classes, mask, blocks_per_stage):
    """CIFAR ResNet (He et al. 2016, section 4.2) with projection shortcuts.

    Both placements put the mask points after the stem's ReLU and each residual
    block's add and ReLU (a block's output is its last non-linearity).
    """

    def conv_bn(x, filters, strides, name):
        x = k.layers.Conv2D(
            filters,
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"{name}_conv",
        )(x)
        return k.layers.BatchNormalization(name=f"{name}_bn")(x)

    x = conv_bn(x, 16, 1, "stem")
    x = k.layers.ReLU(name="stem_relu")(x)
    x = mask(x, "stem_mask")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(blocks_per_stage):
            name = f"stage{stage}_block{block + 1}"
            strides = 2 if stage > 1 and block == 0 else 1
            shortcut = x
            y = conv_bn(x, filters, strides, f"{name}_a")
            y = k.layers.ReLU(name=f"{name}_a_relu")(y)
            y = conv_bn(y, filters, 1, f"{name}_b")
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = k.layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False, name=f"{name}_proj"
                )(shortcut)
                shortcut = k.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
            x = k.layers.Add(name=f"{name}_add")([shortcut, y])
            x = k.layers.ReLU(name=f"{name}_relu")(x)
            # One mask point per residual block, after the add and its ReLU.
            x = mask(x, f"{name}_mask")
    x = k.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return k.layers.Dense(num_classes, name="logits")(x)


def check_placement(placement):
    """Raises the `ValueError` of `invalid` unless `placement` is one of `PLACEMENTS`."""
    if placement not in PLACEMENTS:
        raise invalid("placement", f"one of {', '.join(PLACEMENTS)}", placement)
    return placement


def build_graph(
    architecture,
    *,
    input_shape,
    num_classes,
    dataset=None,
    mask=None,
    keras_module=None,
    placement="activation",
):
    """Builds an architecture's functional graph with any Keras module.

    Args:
      architecture: One of `ARCHITECTURES`.
      input_shape: Image shape `(H, W, C)`; images are float in [0, 1].
      num_classes: Number of classes (logits).
      dataset: Dataset name, for the normalization statistics. Defaults to None
        (normalize [0, 1] to [-1, 1]).
      mask: `mask(tensor, name) -> tensor`, called at each mask point; None leaves
        the points out (the graph for a model without masks).
      keras_module: `keras` (default) or `tf_keras`.
      placement: Where the mask points go (METHOD.md §3): `"activation"` (after
        every non-linearity) or `"block"` (at each block's output, after its
        pooling where it pools; in the ResNets the same points). Defaults to
        `"activation"`.

    Returns:
      `(inputs, outputs)` of the graph.
    """
    k = keras if keras_module is None else keras_module
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Invalid value for argument `architecture`: expected one of "
            f"{', '.join(ARCHITECTURES)}. Received: architecture={architecture!r}"
        )
    check_placement(placement)
    if mask is None:
        mask = lambda tensor, name: tensor  # noqa: E731
    inputs = k.Input(tuple(input_shape), name="images")
    x = _normalize(k, inputs, dataset, input_shape[-1])
    if architecture == "cnn":
        outputs = _cnn(k, x, num_classes, mask, placement)
    elif architecture == "vgg":
        outputs = _vgg(k, x, num_classes, mask, placement)
    else:
        outputs = _resnet(k, x, num_classes, mask, _RESNET_DEPTHS[architecture])
    return inputs, outputs


def application_constructor(architecture):
    """The `keras.applications` constructor named `keras.applications.<Name>`, or None."""
    if not isinstance(architecture, str) or not architecture.startswith(APPLICATIONS_PREFIX):
        return None
    name = architecture[len(APPLICATIONS_PREFIX) :]
    constructor = getattr(keras.applications, name, None)
    if not name or not name[0].isupper() or not callable(constructor):
        raise ValueError(
            f"Invalid value for argument `architecture`: keras.applications has no model "
            f"{name!r}. Received: architecture={architecture!r}"
        )
    return constructor


def build_application(architecture, *, input_shape, num_classes, dataset=None):
    """A `keras.applications` model (`weights=None`) for images in [0, 1], logits out.

    The dataset's normalization comes first; images are resized up when the
    architecture needs a larger input than the dataset's (the minimum that its
    constructor asks for). The application keeps its own layers, including any
    preprocessing it builds in (EfficientNet rescales by 1/255 inside).

    Returns:
      A functional `keras.Model` without masks (`build_model` inserts them).
    """
    constructor = application_constructor(architecture)
    parameters = inspect.signature(constructor).parameters
    options = {"weights": None, "classes": num_classes}
    if "classifier_activation" in parameters:
        options["classifier_activation"] = None  # logits
    if "include_preprocessing" in parameters:
        options["include_preprocessing"] = False  # images are already normalized
    size = tuple(input_shape)
    try:
        application = constructor(input_shape=size, **options)
    except ValueError as error:
        minimum = re.search(r"at least (\d+)x(\d+)", str(error))
        if not minimum:
            raise
        size = (int(minimum.group(1)), int(minimum.group(2)), input_shape[-1])
        application = constructor(input_shape=size, **options)
    inputs = keras.Input(tuple(input_shape), name="images")
    x = _normalize(keras, inputs, dataset, input_shape[-1])
    if size[:2] != tuple(input_shape[:2]):
        x = keras.layers.Resizing(size[0], size[1], name="resize")(x)
    outputs = application(x)
    return keras.Model(inputs, outputs, name=application.name)


def build_model(
    architecture,
    *,
    input_shape,
    num_classes,
    mask_rule="mean",
    dataset=None,
    placement="activation",
    **mask_options,
):
    """Builds an uncompiled `GradMaskModel` with its mask points (METHOD.md §3).

    `mask_rule="none"` gives the same layers, so a baseline differs from a masked
    model only in its backward pass.

    Args:
      architecture: `"cnn"` (small, for 28x28 inputs), `"vgg"` (VGG-style for
        32x32), `"resnet20"`, `"resnet32"` or `"resnet56"` (CIFAR ResNets), or
        `"keras.applications.<Name>"` (built with `weights=None`, masks inserted
        after every trunk non-linearity by `insert_masks`).
      input_shape: Image shape `(H, W, C)`; images are float in [0, 1].
      num_classes: Number of classes; the model outputs logits.
      mask_rule: The `GradientMask` rule at every mask point. Defaults to `"mean"`.
      dataset: Dataset name for the normalization layer's statistics. Defaults to
        None.
      placement: Where the mask points go in the reference architectures:
        `"activation"` (after every non-linearity) or `"block"` (at each block's
        output, after its pooling where it pools; the ResNets' points are the
        same). Defaults to `"activation"`. A `keras.applications` model takes only
        `"activation"` (`insert_masks(after=...)` chooses other points there).
      **mask_options: Other `GradientMask` arguments (`alpha`, `scope`, ...). Each
        mask point gets its own seed derived from `seed` (`point_seeds`), so the
        draws of `random` masks and controls are independent.

    Returns:
      An uncompiled `GradMaskModel`.
    """
    seed = mask_options.pop("seed", None)
    # Validates the options once, before any layer is built.
    GradientMask(mask_rule, seed=seed, **mask_options)
    check_placement(placement)
    if application_constructor(architecture) is not None:
        if placement != "activation":
            raise invalid(
                "placement",
                "'activation' for a keras.applications model (insert_masks(after=...) "
                "chooses other mask points there)",
                placement,
            )
        base = build_application(
            architecture, input_shape=input_shape, num_classes=num_classes, dataset=dataset
        )
        model = insert_masks(base, mask_rule, seed=seed, **mask_options)
        return model
    seeds = point_seeds(seed)

    def mask(tensor, name):
        return GradientMask(mask_rule, seed=next(seeds), name=name, **mask_options)(tensor)

    inputs, outputs = build_graph(
        architecture,
        input_shape=input_shape,
        num_classes=num_classes,
        dataset=dataset,
        mask=mask,
        placement=placement,
    )
    return GradMaskModel(inputs, outputs, name=f"{architecture}_{mask_rule}")
