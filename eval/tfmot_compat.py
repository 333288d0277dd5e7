"""The `tf_keras` twin of a trained model, for TF-MOT: the project's one adapter to it.

TF-MOT accepts only `tf_keras` models, so a trained Keras 3 model is rebuilt as a
`tf_keras` twin (the same graph, from `gradmask_tf.models.build_graph` with
`keras_module=tf_keras`, `TwinGradientMask` layers at the mask points), its weights are
copied by layer and weight name, and `verify_twin` checks that the twin predicts what
the original does. `tf_keras` is imported nowhere else.

The import trap: importing TF-MOT sets `TF_USE_LEGACY_KERAS=1` in the process, which
would make `tf.keras` mean `tf_keras` for every library used later (tf-keras-vis among
them), so both are imported only inside `legacy_keras()`, which restores the variable
and keeps `tf.keras` what it was. (TF-MOT's own `compat.py` is the pattern.)
"""

import functools
import os
import types

import keras
import numpy as np
import tensorflow as tf

from gradmask_tf import ops
from gradmask_tf.errors import invalid
from gradmask_tf.models import ARCHITECTURES, build_graph
from gradmask_tf.training import mask_layers

# The distributions behind this adapter, for `gradmask_tf.versions.library_versions`.
PACKAGES = ("tensorflow-model-optimization", "tf-keras")

# Largest |twin logit - original logit| accepted, relative to max(1, max |logit|).
# Both run the same float32 TensorFlow kernels, so only summation order differs;
# a model that computes in 16 bits is compared with the float32 twin more loosely.
TWIN_TOLERANCE = 1e-4
TWIN_TOLERANCE_16_BIT = 1e-2

_LEGACY_KERAS_VARIABLE = "TF_USE_LEGACY_KERAS"


@functools.cache
def legacy_keras():
    """Imports `tf_keras` and TF-MOT without changing what `tf.keras` means.

    TF-MOT's import sets `os.environ["TF_USE_LEGACY_KERAS"] = "1"` and reads
    `tf.keras`; TensorFlow resolves its lazy `tf.keras` aliases on first use, so one
    not yet used would be bound to `tf_keras` for good. The aliases are resolved
    first, and the variable is restored (or removed) right after the import.

    Returns:
      A namespace with `keras` (the `tf_keras` module), `tfmot` (the
      `tensorflow_model_optimization` module) and `GradientMask` (the `tf_keras`
      twin of `gradmask_tf.GradientMask`).
    """
    for alias in (tf.keras, tf.compat.v2.keras, tf.losses, tf.metrics, tf.optimizers,
                  tf.initializers):
        dir(alias)  # Resolves the alias under the current setting.
    previous = os.environ.get(_LEGACY_KERAS_VARIABLE)
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    finally:
        if previous is None:
            os.environ.pop(_LEGACY_KERAS_VARIABLE, None)
        else:
            os.environ[_LEGACY_KERAS_VARIABLE] = previous
    return types.SimpleNamespace(
        keras=tf_keras, tfmot=tfmot, GradientMask=_twin_mask_class(tf_keras)
    )


def _twin_mask_class(tf_keras):
    """The `tf_keras` layer that stands for `GradientMask` in the twin."""

    class TwinGradientMask(tf_keras.layers.Layer):
        """`gradmask_tf.ops.masked_identity` when training, the identity otherwise.

        Args:
          mask_config: `MaskConfig` fields as a dict (the rule and its options).
          enabled: Whether the mask is on when training (as the trained layer's
            `enabled` switch was). Defaults to True.
          **kwargs: Base layer arguments.
        """

        def __init__(self, mask_config=None, enabled=True, **kwargs):
            super().__init__(**kwargs)
            self.mask_config = ops.MaskConfig(**(mask_config or {}))
            self.enabled = bool(enabled)
            self.supports_masking = True
            # The `random` rule and the matched control draw anew each step, keyed by
            # seed and step, as the Keras 3 layer's seed generator does.
            self.draws = None
            draws = self.mask_config.rule == "random" or self.mask_config.control
            if draws and self.mask_config.seed is not None:
                self.draws = self.add_weight(
                    name="draws", shape=(), dtype="int64", initializer="zeros",
                    trainable=False,
                )

        def call(self, inputs, training=None):
            if not training or not self.enabled or self.mask_config.rule == "none":
                return inputs
            seed = None
            if self.draws is not None:
                step = self.draws.assign_add(1)
                seed = tf.stack([tf.constant(self.mask_config.seed, tf.int64), step])
            return ops.masked_identity(inputs, self.mask_config, seed=seed)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = {"mask_config": self.mask_config.to_dict(), "enabled": self.enabled}
            return {**super().get_config(), **config}

    return TwinGradientMask


def build_twin(model, architecture, *, dataset=None, mask_config=None, placement="activation"):
    """Builds the `tf_keras` twin of a trained model and copies its weights.

    Each mask point keeps the trained layer's own configuration (per-point seeds
    included) and `enabled` switch. Weights are copied by layer name and, within a
    layer, by weight name (the two Keras versions may order them differently); a
    `GradientMask` layer's switch and probe have no twin.

    Args:
      model: The trained Keras 3 model.
      architecture: Its name in `gradmask_tf.models.ARCHITECTURES`.
      dataset: The dataset it was trained on, for `build_graph`'s normalization.
        Defaults to None.
      mask_config: The `ops.MaskConfig` the model was trained with: its rule must be
        every mask point's, and it serves any mask point the model lacks. Defaults
        to None (no check; rule `none` for missing points).
      placement: The model's mask placement (`build_graph`'s `placement`, the
        run's `--mask_placement`). Defaults to `"activation"`.

    Returns:
      The `tf_keras.Model` twin (not yet checked; see `verify_twin`).

    Raises:
      ValueError: If `architecture` is not one `build_graph` builds (e.g. a
        `keras.applications` model), if `mask_config`'s rule is not the model's, if
        a mask point of the model follows another layer in the twin (another
        placement), or if the twin's weights do not match the model's.
    """
    legacy = legacy_keras()
    if architecture not in ARCHITECTURES:
        raise invalid(
            "architecture",
            f"one of {', '.join(ARCHITECTURES)} (the architectures that "
            "gradmask_tf.models.build_graph can also build with tf_keras, as TF-MOT needs)",
            architecture,
        )
    trained = _trained_masks(model, mask_config)
    fallback = mask_config or ops.MaskConfig(rule="none")

    def mask(tensor, name):
        config, enabled = trained.get(name, (fallback, True))
        return legacy.GradientMask(config.to_dict(), enabled, name=name)(tensor)

    inputs, outputs = build_graph(
        architecture,
        input_shape=tuple(model.input_shape[1:]),
        num_classes=int(model.output_shape[-1]),
        dataset=dataset,
        mask=mask,
        keras_module=legacy.keras,
        placement=placement,
    )
    twin = legacy.keras.Model(inputs, outputs, name=f"{architecture}_tf_keras_twin")
    _check_mask_points(model, twin, placement)
    _copy_weights(model, twin, hint=(
        f"Is architecture={architecture!r} the architecture of this model? Pass the one "
        "of the run that trained it."
    ))
    return twin


def _mask_points(model, names):
    """`{mask point name: name of the layer feeding it}` for the named layers."""
    # A symbolic tensor's history starts with the layer that made it, in both Kerases.
    return {
        layer.name: layer.input._keras_history[0].name
        for layer in model.layers
        if layer.name in names
    }


def _check_mask_points(model, twin, placement):
    """Each of the model's mask points follows the same layer in the twin."""
    names = {layer.name for layer in mask_layers(model)}
    trained, built = _mask_points(model, names), _mask_points(twin, names)
    if trained != built:
        raise invalid(
            "placement",
            f"the model's own mask placement: its mask points follow {trained}, the "
            f"twin's {built} (pass the run's --mask_placement)",
            placement,
        )


def _trained_masks(model, mask_config):
    """`{mask point name: (MaskConfig, enabled)}`, each rule checked against the config."""
    trained = {
        layer.name: (layer.mask_config, bool(_numpy(layer.enabled)))
        for layer in mask_layers(model)
    }
    for name, (config, _) in trained.items():
        if mask_config is not None and config.rule != mask_config.rule:
            raise ValueError(
                f"The model's mask point `{name}` uses rule {config.rule!r} but "
                f"mask_config.rule={mask_config.rule!r}; pass the mask configuration "
                "the model was trained with."
            )
    return trained


def _copy_weights(model, twin, hint):
    """Copies every weight of `model` into the twin's layer and weight of that name."""
    source_layers = {layer.name: layer for layer in model.layers}
    copied = {layer.name for layer in mask_layers(model)}
    for layer in twin.layers:
        targets = _layer_weights(layer)
        if isinstance(layer, legacy_keras().GradientMask) or not targets:
            continue
        if layer.name not in source_layers:
            raise ValueError(
                f"The twin's layer `{layer.name}` has weights but the model has no layer "
                f"of that name. {hint}"
            )
        sources = _layer_weights(source_layers[layer.name])
        if set(sources) != set(targets):
            raise ValueError(
                f"Layer `{layer.name}` holds weights {sorted(sources)} in the model but "
                f"{sorted(targets)} in its tf_keras twin. {hint}"
            )
        for name, variable in targets.items():
            value = _numpy(sources[name])
            if tuple(variable.shape) != value.shape:
                raise ValueError(
                    f"Weight `{layer.name}/{name}` has shape {value.shape} in the model "
                    f"but {tuple(variable.shape)} in its tf_keras twin. {hint}"
                )
            variable.assign(value.astype(variable.dtype.as_numpy_dtype))
        copied.add(layer.name)
    missed = sorted(
        layer.name for layer in model.layers if layer.weights and layer.name not in copied
    )
    if missed:
        raise ValueError(
            f"The model's layers {missed} have weights but no counterpart in the tf_keras "
            f"twin. {hint}"
        )


def _short_name(variable):
    # tf_keras names a variable "conv1/kernel:0", Keras 3 "kernel".
    return variable.name.split("/")[-1].split(":")[0]


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def _layer_weights(layer):
    return {_short_name(variable): variable for variable in layer.weights}


def predict_logits(model, images, batch_size):
    """A `tf_keras` model's logits at inference, batch by batch (NumPy).

    Eager calls rather than `predict`: every pruned copy is a new model, and each
    `predict` would trace a new function for one pass over the images.
    """
    return np.concatenate([
        np.asarray(model(images[start:start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ])


def max_difference(reference, other):
    """The largest absolute difference of two arrays, in float64."""
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(other))))


def verify_twin(model, twin, images, *, batch_size=128, reference_logits=None):
    """Checks that the twin predicts what the model does, and fails loudly if not.

    Args:
      model: The Keras 3 model.
      twin: Its `tf_keras` twin (from `build_twin`).
      images: Float images `[N, H, W, C]` in [0, 1].
      batch_size: Inference batch size. Defaults to 128.
      reference_logits: The model's logits on `images`, if already computed.

    Returns:
      The twin's logits on `images` (NumPy).

    Raises:
      RuntimeError: If the largest logit difference exceeds the tolerance
        (`TWIN_TOLERANCE` times max(1, max |logit|)); the message names the layers
        whose weights differ and the first layer whose output differs.
    """
    if reference_logits is None:
        reference_logits = model.predict(images, batch_size=batch_size, verbose=0)
    twin_logits = predict_logits(twin, images, batch_size)
    scale = max(1.0, float(np.max(np.abs(reference_logits))))
    difference = max_difference(reference_logits, twin_logits)
    tolerance = _tolerance(model) * scale
    if difference <= tolerance:
        return twin_logits
    raise RuntimeError(
        f"The tf_keras twin does not predict what the Keras 3 model does: largest "
        f"logit difference {difference:.3g} > tolerance {tolerance:.3g} on "
        f"{len(images)} images. {_diagnose(model, twin, images[:32], tolerance)}"
    )


def _tolerance(model):
    compute_dtypes = {getattr(layer, "compute_dtype", "float32") for layer in model.layers}
    if compute_dtypes & {"float16", "bfloat16"}:
        return TWIN_TOLERANCE_16_BIT
    return TWIN_TOLERANCE


def _diagnose(model, twin, images, tolerance):
    """Names the layers whose weights differ and the first layer whose output does."""
    legacy = legacy_keras()
    source_layers = {layer.name: layer for layer in model.layers}
    weights_differ = []
    for layer in twin.layers:
        source = source_layers.get(layer.name)
        if source is None or isinstance(layer, legacy.GradientMask):
            continue
        sources = _layer_weights(source)
        for name, variable in _layer_weights(layer).items():
            if name not in sources or max_difference(_numpy(sources[name]), variable.numpy()) > 0:
                weights_differ.append(f"{layer.name}/{name}")
    names = [
        layer.name
        for layer in twin.layers
        if layer.name in source_layers and not isinstance(layer, legacy.keras.layers.InputLayer)
    ]
    reference = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    mirror = legacy.keras.Model(twin.inputs, [twin.get_layer(n).output for n in names])
    outputs_differ = [
        f"{name} ({difference:.3g})"
        for name, a, b in zip(names, reference([images]), mirror(images))
        if (difference := max_difference(np.asarray(a), np.asarray(b))) > tolerance
    ]
    return (
        f"Weights that differ: {', '.join(weights_differ) or 'none'}. "
        f"Layer outputs that differ, in graph order (largest difference): "
        f"{', '.join(outputs_differ) or 'none'}."
    )
