"""Accuracy after magnitude pruning (METHOD.md section 5, claim 2), through TF-MOT.

A trained Keras 3 model is rebuilt as a `tf_keras` twin (the same graph, from
`gradmask_tf.models.build_graph`), its weights copied by layer name, and the twin is
checked to predict what the original does. Every Conv2D and Dense kernel of the twin
(the classifier included, as TF-MOT prunes every supported layer by default) is then
pruned by magnitude with `tfmot.sparsity.keras.prune_low_magnitude` at each target
sparsity, in two modes:

- one-shot: the masks are computed from the trained weights and applied, with no
  training step, so no other weight and no BatchNorm statistic moves;
- fine-tuned: a short fine-tune on training data while the sparsity ramps from 0 to
  the target (Zhu and Gupta's polynomial schedule), with the run's optimizer and with
  the run's own Gradient Mask rule active, so a Gradient Mask network is fine-tuned
  the way it was trained.

The pruning wrappers are then stripped, and the share of zeros in the pruned kernels
is measured and reported beside each target.

This module is the project's one adapter to TF-MOT, which accepts only `tf_keras`
models: `tf_keras` is used nowhere else. Importing TF-MOT sets
`TF_USE_LEGACY_KERAS=1` in the process, which would make `tf.keras` mean `tf_keras`
for every library used later, so both are imported only inside `legacy_keras()`,
which restores the variable and keeps `tf.keras` what it was.

References:
  Han, Pool, Tran, Dally. "Learning both Weights and Connections for Efficient Neural
  Networks". NeurIPS 2015 (magnitude pruning).
  Zhu, Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
  compression". arXiv:1710.01878, 2017 (the polynomial sparsity schedule).
"""

import dataclasses
import functools
import math
import numbers
import os
import pathlib
import types

import keras
import numpy as np
import tensorflow as tf

from eval import figures
from gradmask_tf import ops
from gradmask_tf.errors import invalid
from gradmask_tf.models import ARCHITECTURES, build_graph
from gradmask_tf.training import mask_layers

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
MODES = ("one_shot", "fine_tuned")
MODE_LABELS = {"one_shot": "one-shot", "fine_tuned": "fine-tuned"}

# Largest |twin logit - original logit| accepted, relative to max(1, max |logit|).
# Both run the same float32 TensorFlow kernels, so only summation order differs;
# a model that computes in 16 bits is compared with the float32 twin more loosely.
TWIN_TOLERANCE = 1e-4
TWIN_TOLERANCE_16_BIT = 1e-2

# Most mask updates a fine-tune makes while the sparsity ramps up (TF-MOT's default
# frequency is 100 steps; a short fine-tune needs a finer one).
_MAX_MASK_UPDATES = 10
_LEGACY_KERAS_VARIABLE = "TF_USE_LEGACY_KERAS"
_TWIN_MASK_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(ops.MaskConfig))


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
            # The `random` rule draws a new mask each step, keyed by seed and step,
            # as the Keras 3 layer's seed generator does.
            self.draws = None
            if self.mask_config.rule == "random" and self.mask_config.seed is not None:
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


def _run_mask_config(model, run_config):
    """The mask configuration of each mask point, as the run trained it.

    Each mask point keeps the trained layer's own configuration (per-point seeds
    included) and switch; `run_config`'s `mask_*` flags serve points the model
    lacks.

    Returns:
      `({mask point name: (MaskConfig, enabled)}, fallback MaskConfig)`.

    Raises:
      ValueError: if the model's rule is not `run_config["mask_rule"]`.
    """
    trained = {
        layer.name: (layer.mask_config, bool(_numpy(layer.enabled)))
        for layer in mask_layers(model)
    }
    rule = run_config.get("mask_rule")
    for name, (config, _) in trained.items():
        if rule is not None and config.rule != rule:
            raise ValueError(
                f"The model's mask point `{name}` uses rule {config.rule!r} but the "
                f"run config says mask_rule={rule!r}; pass the config of the run "
                "that trained this model."
            )
    options = {
        key[len("mask_"):]: value
        for key, value in run_config.items()
        if key.startswith("mask_") and key[len("mask_"):] in _TWIN_MASK_CONFIG_FIELDS
    }
    options["rule"] = rule or "none"
    options.setdefault("seed", run_config.get("seed"))
    return trained, ops.MaskConfig(**options)


def _short_name(variable):
    # tf_keras names a variable "conv1/kernel:0", Keras 3 "kernel".
    return variable.name.split("/")[-1].split(":")[0]


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def _layer_weights(layer):
    return {_short_name(variable): variable for variable in layer.weights}


def build_twin(model, run_config):
    """Builds the `tf_keras` twin of a trained model and copies its weights.

    The twin is `build_graph(run_config["model"], ..., keras_module=tf_keras)`, with
    `TwinGradientMask` layers at the mask points. Weights are copied by layer name
    and, within a layer, by weight name (the two Keras versions may order them
    differently); a `GradientMask` layer's switch and probe have no twin.

    Args:
      model: The trained Keras 3 model.
      run_config: The run's flags (`model`, `dataset`, `mask_rule`, `mask_*`,
        `seed`).

    Returns:
      The `tf_keras.Model` twin (not yet checked; see `verify_twin`).

    Raises:
      ValueError: if `run_config` names no architecture or one `build_graph` does
        not build (e.g. a `keras.applications` model), if its mask rule is not the
        model's, or if a weight of the twin has no counterpart of the same shape in
        `model`.
    """
    legacy = legacy_keras()
    architecture = run_config.get("model")
    if architecture is None:
        raise ValueError(
            "`run_config` has no `model` entry (the architecture). Pass the `flags` "
            "of the run's config.json."
        )
    if architecture not in ARCHITECTURES:
        raise invalid(
            "run_config['model']",
            f"one of {', '.join(ARCHITECTURES)} (the architectures that "
            "gradmask_tf.models.build_graph can also build with tf_keras, as TF-MOT needs)",
            architecture,
        )
    trained_masks, fallback = _run_mask_config(model, run_config)

    def mask(tensor, name):
        config, enabled = trained_masks.get(name, (fallback, True))
        return legacy.GradientMask(config.to_dict(), enabled, name=name)(tensor)

    inputs, outputs = build_graph(
        architecture,
        input_shape=tuple(model.input_shape[1:]),
        num_classes=int(model.output_shape[-1]),
        dataset=run_config.get("dataset"),
        mask=mask,
        keras_module=legacy.keras,
    )
    twin = legacy.keras.Model(inputs, outputs, name=f"{architecture}_tf_keras_twin")
    hint = (
        f"Is run_config['model']={architecture!r} the architecture of this model? "
        "Pass the flags of the run that trained it."
    )
    source_layers = {layer.name: layer for layer in model.layers}
    mask_names = {layer.name for layer in mask_layers(model)}
    copied = set()
    for layer in twin.layers:
        targets = _layer_weights(layer)
        if isinstance(layer, legacy.GradientMask):
            continue
        source = source_layers.get(layer.name)
        if source is None:
            if targets:
                raise ValueError(
                    f"The twin's layer `{layer.name}` has weights but the model has no "
                    f"layer of that name. {hint}"
                )
            continue
        sources = _layer_weights(source)
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
        layer.name
        for layer in model.layers
        if layer.weights and layer.name not in copied and layer.name not in mask_names
    )
    if missed:
        raise ValueError(
            f"The model's layers {missed} have weights but no counterpart in the "
            f"tf_keras twin. {hint}"
        )
    return twin


def _tolerance(model):
    compute_dtypes = {getattr(layer, "compute_dtype", "float32") for layer in model.layers}
    if compute_dtypes & {"float16", "bfloat16"}:
        return TWIN_TOLERANCE_16_BIT
    return TWIN_TOLERANCE


def _max_difference(reference, other):
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
      RuntimeError: if the largest logit difference exceeds the tolerance
        (`TWIN_TOLERANCE` times max(1, max |logit|)); the message names the layers
        whose weights differ and the first layer whose output differs.
    """
    if reference_logits is None:
        reference_logits = model.predict(images, batch_size=batch_size, verbose=0)
    twin_logits = _logits(twin, images, batch_size)
    scale = max(1.0, float(np.max(np.abs(reference_logits))))
    difference = _max_difference(reference_logits, twin_logits)
    tolerance = _tolerance(model) * scale
    if difference <= tolerance:
        return twin_logits
    raise RuntimeError(
        f"The tf_keras twin does not predict what the Keras 3 model does: largest "
        f"logit difference {difference:.3g} > tolerance {tolerance:.3g} on "
        f"{len(images)} images. {_diagnose(model, twin, images[:32], tolerance)}"
    )


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
            if name not in sources or _max_difference(
                _numpy(sources[name]), variable.numpy()
            ) > 0:
                weights_differ.append(f"{layer.name}/{name}")
    names = [
        layer.name
        for layer in twin.layers
        if layer.name in source_layers
        and not isinstance(layer, legacy.keras.layers.InputLayer)
    ]
    reference = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    mirror = legacy.keras.Model(twin.inputs, [twin.get_layer(n).output for n in names])
    outputs_differ = []
    for name, a, b in zip(names, reference([images]), mirror(images)):
        difference = _max_difference(np.asarray(a), np.asarray(b))
        if difference > tolerance:
            outputs_differ.append(f"{name} ({difference:.3g})")
    return (
        f"Weights that differ: {', '.join(weights_differ) or 'none'}. "
        f"Layer outputs that differ, in graph order (largest difference): "
        f"{', '.join(outputs_differ) or 'none'}."
    )


def prunable_layer_names(twin):
    """Names of the twin's Conv2D and Dense layers, whose kernels are pruned."""
    layers = legacy_keras().keras.layers
    return [
        layer.name for layer in twin.layers if isinstance(layer, (layers.Conv2D, layers.Dense))
    ]


def wrap_for_pruning(twin, schedule):
    """Wraps the twin's Conv2D and Dense layers in TF-MOT's `PruneLowMagnitude`.

    As in TF-MOT's guide to pruning some layers: `clone_model` with a clone function
    that wraps the chosen layers and reuses every other one, so the wrapped model
    shares the twin's weights.
    """
    legacy = legacy_keras()
    prunable = set(prunable_layer_names(twin))
    prune_low_magnitude = legacy.tfmot.sparsity.keras.prune_low_magnitude

    def clone(layer):
        if layer.name in prunable:
            return prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return legacy.keras.models.clone_model(twin, clone_function=clone)


def _pruning_wrappers(pruned):
    # TF-MOT exports no name for its wrapper class; its layers hold `pruning_obj`.
    wrapper = legacy_keras().keras.layers.Wrapper
    return [
        layer
        for layer in pruned.layers
        if isinstance(layer, wrapper) and hasattr(layer, "pruning_obj")
    ]


def prune_one_shot(twin, sparsity):
    """Prunes the twin's kernels to `sparsity` by magnitude, without training.

    Each wrapper's step is set to 0 (as `UpdatePruningStep.on_train_begin` does),
    then its pruning object computes the masks (`conditional_mask_update`, which
    `ConstantSparsity(sparsity, begin_step=0, frequency=1)` allows at step 0) and
    multiplies the kernels by them (`weight_mask_op`): what TF-MOT's own
    `prune_for_benchmark` tool does, and what one training step would do minus the
    gradient step, so biases and BatchNorm statistics are untouched.

    Args:
      twin: The `tf_keras` twin; its kernels are pruned in place.
      sparsity: Target share of zeros in each kernel, in [0, 1).

    Returns:
      The wrapped (pruned, not stripped) model.
    """
    schedule = legacy_keras().tfmot.sparsity.keras.ConstantSparsity(
        sparsity, begin_step=0, frequency=1
    )
    pruned = wrap_for_pruning(twin, schedule)
    for wrapper in _pruning_wrappers(pruned):
        wrapper.pruning_step.assign(0)
        wrapper.pruning_obj.conditional_mask_update()
        wrapper.pruning_obj.weight_mask_op()
    return pruned


def strip(pruned):
    """The pruned model without its wrappers (TF-MOT's `strip_pruning`)."""
    return legacy_keras().tfmot.sparsity.keras.strip_pruning(pruned)


def kernel_sparsity(model, layer_names):
    """Share of exact zeros over all kernels of the named layers, together."""
    zeros = total = 0
    for name in layer_names:
        kernel = model.get_layer(name).kernel.numpy()
        zeros += kernel.size - np.count_nonzero(kernel)
        total += kernel.size
    return zeros / total


def _make_optimizer(tf_keras, name, learning_rate):
    # As train.py's make_optimizer, with tf_keras's classes.
    if name == "sgd":
        return tf_keras.optimizers.SGD(learning_rate, momentum=0.9)
    classes = {
        "adam": tf_keras.optimizers.Adam,
        "adamw": tf_keras.optimizers.AdamW,
        "rmsprop": tf_keras.optimizers.RMSprop,
    }
    if name not in classes:
        raise invalid("run_config['optimizer']", "one of adam, adamw, sgd, rmsprop", name)
    return classes[name](learning_rate)


def _count(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def fine_tune_schedule(num_steps):
    """`(frequency, end_step)` of the fine-tune's mask updates.

    At most `_MAX_MASK_UPDATES` updates, the last at `end_step`, a multiple of the
    frequency no later than the last step: the target sparsity is reached there.
    """
    frequency = max(1, num_steps // _MAX_MASK_UPDATES)
    return frequency, frequency * (num_steps // frequency)


def prune_fine_tuned(
    twin, sparsity, train_data, *, epochs, batch_size, optimizer, learning_rate, seed=None
):
    """Prunes while fine-tuning: sparsity ramps 0 -> target (PolynomialDecay).

    The twin's mask layers apply the run's Gradient Mask rule during the fine-tune
    (they are called with `training=True` by `fit`).

    Args:
      twin: The `tf_keras` twin; trained and pruned in place.
      sparsity: Target share of zeros in each kernel, in [0, 1).
      train_data: Unbatched `(image, label)` pairs, already capped.
      epochs: Fine-tuning epochs.
      batch_size: Fine-tuning batch size.
      optimizer: `"adam"`, `"adamw"`, `"sgd"` (momentum 0.9) or `"rmsprop"`.
      learning_rate: Fine-tuning learning rate.
      seed: Seeds Python, NumPy and TensorFlow before the fine-tune (dropout,
        `random` masks), or None.

    Returns:
      `(pruned, info)`: the wrapped model and `{"steps", "frequency", "end_step"}`.
    """
    legacy = legacy_keras()
    sparsity_api = legacy.tfmot.sparsity.keras
    num_examples = _count(train_data)
    num_steps = math.ceil(num_examples / batch_size) * epochs
    frequency, end_step = fine_tune_schedule(num_steps)
    schedule = sparsity_api.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )
    pruned = wrap_for_pruning(twin, schedule)
    pruned.compile(
        optimizer=_make_optimizer(legacy.keras, optimizer, learning_rate),
        loss=legacy.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    if seed is not None:
        legacy.keras.utils.set_random_seed(seed)
    pruned.fit(
        train_data.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        epochs=epochs,
        callbacks=[sparsity_api.UpdatePruningStep()],
        verbose=0,
    )
    return pruned, {"steps": num_steps, "frequency": frequency, "end_step": end_step}


def _logits(model, images, batch_size):
    """The model's logits at inference, batch by batch.

    Eager calls rather than `predict`: every pruned copy is a new model, and each
    `predict` would trace a new function for one pass over the images.
    """
    return np.concatenate([
        np.asarray(model(images[start:start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ])


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _validate(model, images, labels, sparsities, fine_tune_epochs, fine_tune_examples,
              batch_size, learning_rate):
    expected = tuple(model.input_shape[1:])
    if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected:
        raise invalid("data", f"images of shape [N, {', '.join(map(str, expected))}]",
                       f"images of shape {images.shape}")
    if len(images) == 0 or labels.shape != (len(images),):
        raise invalid("data", "one integer label per image, at least one image",
                       f"{len(images)} images and labels of shape {labels.shape}")
    if not sparsities or any(
        not isinstance(s, numbers.Real) or isinstance(s, bool) or not 0 <= s < 1
        for s in sparsities
    ):
        raise invalid("sparsities", "a non-empty sequence of floats in [0, 1)", sparsities)
    for name, value, expected in (
        ("fine_tune_epochs", fine_tune_epochs, "an integer >= 0"),
        ("fine_tune_examples", fine_tune_examples, "a positive integer or None"),
        ("batch_size", batch_size, "a positive integer"),
    ):
        if value is None and "None" in expected:
            continue
        lowest = 0 if name == "fine_tune_epochs" else 1
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (
            value < lowest
        ):
            raise invalid(name, expected, value)
    if learning_rate is not None and (
        not isinstance(learning_rate, numbers.Real) or not learning_rate > 0
    ):
        raise invalid("learning_rate", "a float > 0 or None", learning_rate)


def evaluate_pruning(
    model,
    data,
    *,
    run_config,
    train_data=None,
    sparsities=DEFAULT_SPARSITIES,
    fine_tune_epochs=1,
    fine_tune_examples=None,
    batch_size=128,
    learning_rate=None,
    progress=True,
    figure_path=None,
    title=None,
):
    """Test accuracy after magnitude pruning, one-shot and with a short fine-tune.

    The model is rebuilt as a `tf_keras` twin (checked to predict what the model
    does; see `verify_twin`), and at each target sparsity every Conv2D and Dense
    kernel (the classifier's included) is pruned by magnitude, layer by layer, with
    TF-MOT. One-shot applies `ConstantSparsity` masks with no training step
    (`prune_one_shot`). Fine-tuned ramps the sparsity from 0 to the target with
    `PolynomialDecay` (at most 10 mask updates, the target reached at the last)
    during `fine_tune_epochs` epochs on `train_data`, with the run's optimizer and
    batch size and the run's Gradient Mask rule active in the mask layers
    (`prune_fine_tuned`); each sparsity starts again from the trained weights, and
    Python, NumPy and TensorFlow are seeded with the run's seed before each
    fine-tune. The wrappers are then stripped, the share of zeros in the pruned
    kernels measured, and the stripped model evaluated with the masks inactive.

    Args:
      model: The trained Keras 3 model (from the run's `model.keras`); outputs
        logits. Input shape and class count are read from it.
      data: `(images, labels)` NumPy arrays: float images `[N, H, W, C]` in [0, 1]
        and integer labels `[N]` (e.g. the first N test examples).
      run_config: The run's flags (`config.json`'s `flags`): `model` (the
        architecture), `dataset`, `mask_rule` and `mask_*`, `seed`,
        `learning_rate`, `optimizer`, `batch_size`.
      train_data: A `tf.data.Dataset` of unbatched `(image, label)` training pairs
        for the fine-tune (in the order to use; it is not shuffled here), or None to
        skip the fine-tuned mode. Defaults to None.
      sparsities: Target sparsities, each in [0, 1). Defaults to
        `(0.3, 0.5, 0.7, 0.8, 0.9, 0.95)`.
      fine_tune_epochs: Epochs of each fine-tune; 0 skips the fine-tuned mode.
        Defaults to 1.
      fine_tune_examples: Use the first N pairs of `train_data`, or None for all.
        Defaults to None.
      batch_size: Batch size of inference (the fine-tune uses the run's).
        Defaults to 128.
      learning_rate: Fine-tuning learning rate. Defaults to None: the run's
        learning rate / 10.
      progress: Show a progress bar over the sparsities. Defaults to True.
      figure_path: Where to write a PNG of accuracy against target sparsity, or
        None. Defaults to None.
      title: The figure's title. Defaults to None (a title naming the run).

    Returns:
      A JSON-able dict: `dense_accuracy`; `one_shot` and `fine_tuned` (empty when
      skipped), each `{format(s, "g"): {"accuracy", "sparsity"}}` where `sparsity`
      is the measured share of zeros; `num_examples`; and `settings` (sparsities,
      fine-tune epochs, examples, steps and learning rate, pruned layers,
      schedules, masks, library versions).

    Raises:
      ValueError: for an invalid argument.
      RuntimeError: if the `tf_keras` twin does not predict what `model` does.

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
      Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning
      for model compression", arXiv:1710.01878, 2017.
    """
    images, labels = data
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[-1] == 1:
        labels = labels[:, 0]
    sparsities = list(sparsities)
    _validate(model, images, labels, sparsities, fine_tune_epochs, fine_tune_examples,
              batch_size, learning_rate)
    sparsities = sorted({float(s) for s in sparsities})
    fine_tune = train_data is not None and fine_tune_epochs > 0
    fine_tune_info = {}
    num_fine_tune_examples = fine_tune_batch_size = optimizer = None
    if fine_tune:
        if learning_rate is None:
            if run_config.get("learning_rate") is None:
                raise ValueError(
                    "`run_config` has no `learning_rate`, so the fine-tune's cannot be "
                    "derived from it; pass `learning_rate`."
                )
            learning_rate = float(run_config["learning_rate"]) / 10
        element = train_data.element_spec
        image_shape = tuple(model.input_shape[1:])
        if not (isinstance(element, tuple) and len(element) == 2
                and tuple(element[0].shape) == image_shape):
            raise invalid(
                "train_data",
                f"a dataset of unbatched (image, label) pairs, images of shape "
                f"{image_shape}",
                element,
            )
        if fine_tune_examples is not None:
            train_data = train_data.take(fine_tune_examples)
        elif int(train_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise invalid("fine_tune_examples", "a cap for an infinite `train_data`",
                           fine_tune_examples)
        num_fine_tune_examples = _count(train_data)
        if num_fine_tune_examples == 0:
            raise invalid("train_data", "at least one (image, label) pair", train_data)
        fine_tune_batch_size = int(run_config.get("batch_size") or batch_size)
        optimizer = run_config.get("optimizer", "adam")
        _make_optimizer(legacy_keras().keras, optimizer, 1.0)  # Validates the name.

    legacy = legacy_keras()
    twin = build_twin(model, run_config)
    reference_logits = model.predict(images, batch_size=batch_size, verbose=0)
    twin_logits = verify_twin(
        model, twin, images, batch_size=batch_size, reference_logits=reference_logits
    )
    pruned_layers = prunable_layer_names(twin)
    mask_rules = sorted({layer.mask_config.rule for layer in twin.layers
                         if isinstance(layer, legacy.GradientMask)})

    def evaluate(pruned):
        stripped = strip(pruned)
        logits = _logits(stripped, images, batch_size)
        return {
            "accuracy": _accuracy(logits, labels),
            "sparsity": kernel_sparsity(stripped, pruned_layers),
        }

    modes = ["one_shot"] + (["fine_tuned"] if fine_tune else [])
    results = {mode: {} for mode in MODES}
    bar = None
    if progress:
        bar = keras.utils.Progbar(
            len(sparsities) * len(modes),
            unit_name="pruning",
            stateful_metrics=["sparsity", *modes],  # Latest values, not running means.
        )
    for index, sparsity in enumerate(sparsities):
        key = format(sparsity, "g")
        # Each sparsity starts from the trained weights: pruning edits a twin in place,
        # and a new twin gets the same weights, by name, as the verified one.
        pruned = prune_one_shot(build_twin(model, run_config), sparsity)
        results["one_shot"][key] = evaluate(pruned)
        if bar is not None:
            bar.update(
                index * len(modes) + 1,
                [("sparsity", sparsity), ("one_shot", results["one_shot"][key]["accuracy"])],
            )
        if fine_tune:
            pruned, fine_tune_info = prune_fine_tuned(
                build_twin(model, run_config),
                sparsity,
                train_data,
                epochs=fine_tune_epochs,
                batch_size=fine_tune_batch_size,
                optimizer=optimizer,
                learning_rate=learning_rate,
                seed=run_config.get("seed"),
            )
            results["fine_tuned"][key] = evaluate(pruned)
            if bar is not None:
                bar.update(
                    index * len(modes) + 2,
                    [("fine_tuned", results["fine_tuned"][key]["accuracy"])],
                )

    mask_rule = ", ".join(mask_rules) or "no masks"
    result = {
        "dense_accuracy": _accuracy(twin_logits, labels),
        "one_shot": results["one_shot"],
        "fine_tuned": results["fine_tuned"],
        "num_examples": len(images),
        "settings": {
            "model": run_config.get("model"),
            "dataset": run_config.get("dataset"),
            "num_classes": int(model.output_shape[-1]),
            "sparsities": sparsities,
            "fine_tune_epochs": fine_tune_epochs if fine_tune else 0,
            "fine_tune_examples": num_fine_tune_examples or 0,
            "fine_tune_batch_size": fine_tune_batch_size,
            "fine_tune_steps": fine_tune_info.get("steps", 0),
            "optimizer": optimizer,
            "learning_rate": learning_rate if fine_tune else None,
            "pruned_layers": pruned_layers,
            "granularity": "each kernel pruned to the target by weight magnitude; "
                           "biases, BatchNorm and normalization not pruned",
            "schedule": {
                "one_shot": "ConstantSparsity",
                "fine_tuned": "PolynomialDecay",
                "fine_tuned_frequency": fine_tune_info.get("frequency"),
                "fine_tuned_end_step": fine_tune_info.get("end_step"),
            },
            "masks": f"{mask_rule} during fine-tuning; inactive at evaluation",
            "mask_rule": mask_rules[0] if len(mask_rules) == 1 else mask_rules,
            "twin_max_logit_difference": _max_difference(reference_logits, twin_logits),
            "library_versions": {
                "tensorflow_model_optimization": legacy.tfmot.__version__,
                "tf_keras": legacy.keras.__version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
        },
    }
    if figure_path is not None:
        plot_pruning(result, figure_path, title=title)
    return result


def _default_title(results):
    settings = results[0].get("settings", {})
    name = ", ".join(str(settings[key]) for key in ("dataset", "model") if settings.get(key))
    if len(results) == 1 and settings.get("mask_rule"):
        name += f", mask rule {settings['mask_rule']}"
    return "Accuracy after magnitude pruning" + (f" ({name})" if name else "")


def _subtitle(results):
    """What the runs share: test examples and the fine-tune's length."""
    parts = []
    examples = {r.get("num_examples") for r in results}
    if len(examples) == 1 and None not in examples:
        parts.append(f"{examples.pop()} test examples")
    fine_tunes = {
        (r["settings"].get("fine_tune_examples"), r["settings"].get("fine_tune_epochs"))
        for r in results
        if r.get("fine_tuned") and "settings" in r
    }
    if len(fine_tunes) == 1:
        num_examples, epochs = fine_tunes.pop()
        if num_examples and epochs:
            parts.append(
                f"fine-tune: {num_examples} training examples, {epochs} "
                f"epoch{'s' if epochs != 1 else ''}"
            )
    return "; ".join(parts)


def _percent(value):
    return f"{value:.0%}" if round(value * 100, 6) == round(value * 100) else f"{value:.1%}"


def plot_pruning(results, path, labels=None, title=None):
    """Plots test accuracy against target sparsity; writes a PNG atomically.

    One run: a line per mode (one-shot, fine-tuned), the dense accuracy as a dashed
    line and chance as a dotted one. Several runs (a comparison): a colour per run
    and a line style per mode (one-shot dash-dotted, fine-tuned solid, dense
    dashed), with a legend for each outside the axes.

    Args:
      results: One `evaluate_pruning` result or a list of them.
      path: Where to write the PNG.
      labels: One legend label per run. Defaults to None (each run's mask rule).
      title: The figure's title. Defaults to None (one naming the runs).

    Returns:
      The path written, as a `pathlib.Path`.

    Raises:
      ValueError: if there is no result, or not one label per result.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    results = [results] if isinstance(results, dict) else list(results)
    if not results:
        raise invalid("results", "at least one evaluate_pruning result", results)
    if labels is None:
        labels = [
            str(r.get("settings", {}).get("mask_rule", f"run {i + 1}"))
            for i, r in enumerate(results)
        ]
    labels = list(labels)
    if len(labels) != len(results):
        raise invalid("labels", f"{len(results)} labels, one per run", labels)
    single = len(results) == 1
    dense_style = (0, (5, 3))
    styles = {"one_shot": ("-." if not single else "-", "o"), "fine_tuned": ("-", "s")}

    figure = Figure(figsize=(6.4 if single else 8.4, 4.4), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    sparsities = set()
    for index, (result, label) in enumerate(zip(results, labels)):
        for mode_index, mode in enumerate(MODES):
            points = result.get(mode) or {}
            if not points:
                continue
            keys = sorted(points, key=float)
            sparsities.update(float(key) for key in keys)
            linestyle, marker = styles[mode]
            axes.plot(
                [float(key) for key in keys],
                [points[key]["accuracy"] for key in keys],
                linestyle=linestyle,
                marker=marker,
                markersize=5,
                linewidth=1.6,
                color=f"C{mode_index}" if single else f"C{index}",
                label=MODE_LABELS[mode],
            )
        axes.axhline(
            result["dense_accuracy"],
            linestyle=dense_style,
            linewidth=1.2,
            color="0.3" if single else f"C{index}",
            alpha=1.0 if single else 0.7,
            label=f"dense ({result['dense_accuracy']:.3f})",
        )
    num_classes = results[0].get("settings", {}).get("num_classes")
    if num_classes:
        axes.axhline(1 / num_classes, linestyle=":", linewidth=1, color="0.55",
                     label="chance")
    ticks = sorted(sparsities)
    if ticks:
        axes.set_xticks(ticks, [_percent(tick) for tick in ticks])
        margin = 0.04 * max(ticks[-1] - ticks[0], 0.1)
        axes.set_xlim(ticks[0] - margin, ticks[-1] + margin)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("Target sparsity (share of Conv2D and Dense weights pruned)")
    axes.set_ylabel("Test accuracy")
    axes.grid(True, color="0.9", linewidth=0.8)
    axes.set_axisbelow(True)
    subtitle = _subtitle(results)
    axes.set_title((title or _default_title(results)) + (f"\n{subtitle}" if subtitle else ""),
                   fontsize=10)
    if single:
        axes.legend(loc="best", fontsize=8)
    else:
        # Colours name the runs, line styles the modes: one legend for each, to the
        # right of the axes ("outside" places them in the constrained layout).
        figure.legend(
            [Line2D([], [], color=f"C{index}", linewidth=3) for index in range(len(labels))],
            [f"{label}, dense {r['dense_accuracy']:.3f}" for label, r in zip(labels, results)],
            title="run", loc="outside right upper", fontsize=8, title_fontsize=8,
            alignment="left",
        )
        handles = [
            Line2D([], [], color="0.2", linestyle=styles[mode][0], marker=styles[mode][1])
            for mode in MODES
        ] + [Line2D([], [], color="0.2", linestyle=dense_style)]
        names = [MODE_LABELS[mode] for mode in MODES] + ["dense"]
        if num_classes:
            handles.append(Line2D([], [], color="0.55", linestyle=":"))
            names.append("chance")
        figure.legend(handles, names, title="mode", loc="outside right lower", fontsize=8,
                      title_fontsize=8, alignment="left")

    figures.save(figure, path, dpi=figure.get_dpi())
    return pathlib.Path(path)
