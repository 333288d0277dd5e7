"""Accuracy after magnitude pruning (METHOD.md section 5, claim 2), through TF-MOT.

The trained model's `tf_keras` twin (`eval.tfmot_compat`, checked to predict what the
model does) has every Conv2D and Dense kernel (the classifier's included, as TF-MOT
prunes every supported layer by default) pruned by magnitude, layer by layer, with
`tfmot.sparsity.keras.prune_low_magnitude` at each target sparsity, in two modes:

- one-shot: `ConstantSparsity` masks computed from the trained weights and applied
  with no training step, so no other weight and no BatchNorm statistic moves;
- fine-tuned: a short fine-tune (`FineTune`) while the sparsity ramps from 0 to the
  target with Zhu and Gupta's `PolynomialDecay` (at most 10 mask updates, the target
  reached at the last), with the run's Gradient Mask rule active in the twin's mask
  layers, so a Gradient Mask network is fine-tuned the way it was trained.

Each sparsity starts again from the trained weights. The pruning wrappers are then
stripped, the share of zeros in the pruned kernels is measured and reported beside
each target, and the stripped model is evaluated with the masks inactive.

References:
  Han, Pool, Tran, Dally. "Learning both Weights and Connections for Efficient Neural
  Networks". NeurIPS 2015 (magnitude pruning).
  Zhu, Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
  compression". arXiv:1710.01878, 2017 (the polynomial sparsity schedule).
"""

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

from eval import checks, tfmot_compat
from eval.names import PRUNING_MODES
from gradmask_tf import ops
from gradmask_tf.errors import invalid
from gradmask_tf.optimizers import OPTIMIZERS, make_optimizer
from gradmask_tf.versions import library_versions

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)

# Most mask updates a fine-tune makes while the sparsity ramps up (TF-MOT's default
# frequency is 100 steps; a short fine-tune needs a finer one).
_MAX_MASK_UPDATES = 10


@dataclasses.dataclass(frozen=True)
class FineTune:
    """How each pruned model is fine-tuned: the run's own training, briefly.

    Attributes:
      optimizer: A name from `gradmask_tf.optimizers.OPTIMIZERS`. Defaults to `"adam"`.
      learning_rate: Constant over the fine-tune. Defaults to 1e-4 (a tenth of
        train.py's default).
      momentum: `sgd`'s momentum, in [0, 1). Defaults to 0.9 (train.py's default).
      batch_size: Defaults to 128.
      epochs: Passes over the fine-tuning examples, >= 1. Defaults to 1.
      num_examples: Use the first N pairs of the training data; None for all (then
        the data must be finite). Defaults to None.
      mask_config: The `gradmask_tf.ops.MaskConfig` the model was trained with: its
        rule must be the model's, and it serves any mask point the model lacks (each
        point otherwise keeps its own trained configuration). Defaults to None.
      seed: Seeds Python, NumPy and TensorFlow before each fine-tune (dropout,
        `random` masks), or None. Defaults to None.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 1
    num_examples: int | None = None
    mask_config: ops.MaskConfig | None = None
    seed: int | None = None

    def __post_init__(self):
        checks.names("optimizer", self.optimizer, OPTIMIZERS)
        object.__setattr__(
            self, "learning_rate", checks.positive_float("learning_rate", self.learning_rate)
        )
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise invalid("momentum", "a number in [0, 1)", self.momentum)
        checks.integer("batch_size", self.batch_size)
        checks.integer("epochs", self.epochs)
        if self.num_examples is not None:
            checks.integer("num_examples", self.num_examples)
        if self.mask_config is not None and not isinstance(self.mask_config, ops.MaskConfig):
            raise invalid("mask_config", "a gradmask_tf.ops.MaskConfig or None", self.mask_config)
        if self.seed is not None:
            checks.integer("seed", self.seed, minimum=0)


def fine_tune_of_run(config, *, epochs=1, num_examples=None):
    """The fine-tune of a run as it trained, from its `config.json` flags.

    The run's optimizer (and momentum), batch size, seed and mask flags (`mask_rule`,
    `mask_scope`, ... for each `gradmask_tf.ops.MaskConfig` field), a tenth of its
    learning rate, constant (a run's `--lr_schedule` is not replayed: the fine-tune is
    short).
    """
    names = [field.name for field in dataclasses.fields(ops.MaskConfig)]
    mask_fields = {name: config[f"mask_{name}"] for name in names if f"mask_{name}" in config}
    mask_fields.setdefault("seed", config.get("seed"))
    return FineTune(
        optimizer=config["optimizer"],
        learning_rate=config["learning_rate"] / 10,
        momentum=config.get("momentum", 0.9),
        batch_size=config["batch_size"],
        epochs=epochs,
        num_examples=num_examples,
        mask_config=ops.MaskConfig(**mask_fields),
        seed=config.get("seed"),
    )


def evaluate_pruning(
    model, data, *, architecture, dataset=None, sparsities=DEFAULT_SPARSITIES,
    fine_tune=None, train_data=None, batch_size=128, placement="activation",
):
    """Test accuracy after magnitude pruning, one-shot and with a short fine-tune.

    Args:
      model: The trained Keras 3 model; outputs logits.
      data: `(images, labels)` NumPy arrays: float images `[N, H, W, C]` in [0, 1]
        and integer labels `[N]` (e.g. the first N test examples).
      architecture: The model's name in `gradmask_tf.models.ARCHITECTURES`.
      dataset: The dataset it was trained on (the twin's normalization). Defaults
        to None.
      sparsities: Target sparsities, each in [0, 1). Defaults to
        `DEFAULT_SPARSITIES`.
      fine_tune: A `FineTune`, or None for the one-shot mode only. Defaults to None.
      train_data: With `fine_tune`: a `tf.data.Dataset` of unbatched `(image,
        label)` training pairs, in the order to use (it is not shuffled here).
      batch_size: Batch size of inference. Defaults to 128.
      placement: The model's mask placement (the run's `--mask_placement`), which
        the twin builds. Defaults to `"activation"`.

    Returns:
      A JSON-able dict: `dense_accuracy`; `one_shot` and `fine_tuned` (empty without
      `fine_tune`), each `{format(s, "g"): {"accuracy", "sparsity"}}` where
      `sparsity` is the measured share of zeros; `num_examples`; and `settings`
      (sparsities, the fine-tune's options, examples and steps, pruned layers,
      schedules, masks, library versions).

    Raises:
      ValueError: For an invalid argument, or a mask rule that is not the model's.
      RuntimeError: If the `tf_keras` twin does not predict what `model` does.
    """
    images, labels = checks.labelled_images(data, model)
    sparsities = sorted(checks.floats("sparsities", sparsities, low=0.0, high=1.0))
    batch_size = checks.integer("batch_size", batch_size)
    train_data, num_train = _fine_tune_data(model, fine_tune, train_data)
    # A new twin per sparsity and mode: pruning edits a twin in place.
    twin = functools.partial(tfmot_compat.build_twin, model, architecture, dataset=dataset,
                             mask_config=fine_tune.mask_config if fine_tune else None,
                             placement=placement)
    dense = twin()
    reference_logits = model.predict(images, batch_size=batch_size, verbose=0)
    dense_logits = tfmot_compat.verify_twin(
        model, dense, images, batch_size=batch_size, reference_logits=reference_logits
    )
    layers = prunable_layer_names(dense)
    results, schedule = {mode: {} for mode in PRUNING_MODES}, {}
    for sparsity in sparsities:
        key = checks.key(sparsity)
        pruned = prune_one_shot(twin(), sparsity)
        results["one_shot"][key] = _measure(pruned, layers, images, labels, batch_size)
        if fine_tune:
            pruned, schedule = prune_fine_tuned(twin(), sparsity, train_data, fine_tune)
            results["fine_tuned"][key] = _measure(pruned, layers, images, labels, batch_size)
    settings = {
        "model": architecture,
        "placement": placement,
        "dataset": dataset,
        "num_classes": int(model.output_shape[-1]),
        "sparsities": sparsities,
        "pruned_layers": layers,
        "twin_max_logit_difference": tfmot_compat.max_difference(reference_logits, dense_logits),
    }
    settings.update(_fine_tune_settings(fine_tune, num_train, schedule, _mask_rules(dense)))
    return {"dense_accuracy": _accuracy(dense_logits, labels), **results,
            "num_examples": len(images), "settings": settings}


def _fine_tune_data(model, fine_tune, train_data):
    """The fine-tune's pairs, capped, and their count; `(None, 0)` without a fine-tune."""
    if fine_tune is None:
        return None, 0
    if not isinstance(fine_tune, FineTune):
        raise invalid("fine_tune", "a FineTune or None", fine_tune)
    element = getattr(train_data, "element_spec", None)
    image_shape = tuple(model.input_shape[1:])
    if not (isinstance(element, tuple) and len(element) == 2
            and tuple(element[0].shape) == image_shape):
        raise invalid("train_data",
                      f"a dataset of unbatched (image, label) pairs, images of shape {image_shape}",
                      element)
    if fine_tune.num_examples is not None:
        train_data = train_data.take(fine_tune.num_examples)
    elif int(train_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise invalid("fine_tune.num_examples", "a cap for an infinite `train_data`", None)
    num_examples = _count(train_data)
    if num_examples == 0:
        raise invalid("train_data", "at least one (image, label) pair", train_data)
    return train_data, num_examples


def _fine_tune_settings(fine_tune, num_examples, schedule, mask_rules):
    masks = ", ".join(mask_rules) or "no masks"
    return {
        "fine_tune_epochs": fine_tune.epochs if fine_tune else 0,
        "fine_tune_examples": num_examples,
        "fine_tune_batch_size": fine_tune.batch_size if fine_tune else None,
        "fine_tune_steps": schedule.get("steps", 0),
        "optimizer": fine_tune.optimizer if fine_tune else None,
        "learning_rate": fine_tune.learning_rate if fine_tune else None,
        "momentum": fine_tune.momentum if fine_tune and fine_tune.optimizer == "sgd" else None,
        "granularity": "each kernel pruned to the target by weight magnitude; "
                       "biases, BatchNorm and normalization not pruned",
        "schedule": {
            "one_shot": "ConstantSparsity",
            "fine_tuned": "PolynomialDecay",
            "fine_tuned_frequency": schedule.get("frequency"),
            "fine_tuned_end_step": schedule.get("end_step"),
        },
        "masks": f"{masks} during fine-tuning; inactive at evaluation",
        "mask_rule": mask_rules[0] if len(mask_rules) == 1 else mask_rules,
        "library_versions": library_versions(*tfmot_compat.PACKAGES),
    }


def _mask_rules(twin):
    return sorted({layer.mask_config.rule for layer in twin.layers
                   if isinstance(layer, tfmot_compat.legacy_keras().GradientMask)})


def _measure(pruned, layers, images, labels, batch_size):
    """Accuracy and measured kernel sparsity of the stripped model."""
    stripped = strip(pruned)
    logits = tfmot_compat.predict_logits(stripped, images, batch_size)
    return {"accuracy": _accuracy(logits, labels), "sparsity": kernel_sparsity(stripped, layers)}


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _count(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def prunable_layer_names(twin):
    """Names of the twin's Conv2D and Dense layers, whose kernels are pruned."""
    layers = tfmot_compat.legacy_keras().keras.layers
    return [
        layer.name for layer in twin.layers if isinstance(layer, (layers.Conv2D, layers.Dense))
    ]


def wrap_for_pruning(twin, schedule):
    """Wraps the twin's Conv2D and Dense layers in TF-MOT's `PruneLowMagnitude`.

    As in TF-MOT's guide to pruning some layers: `clone_model` with a clone function
    that wraps the chosen layers and reuses every other one, so the wrapped model
    shares the twin's weights.
    """
    legacy = tfmot_compat.legacy_keras()
    prunable = set(prunable_layer_names(twin))
    prune_low_magnitude = legacy.tfmot.sparsity.keras.prune_low_magnitude

    def clone(layer):
        if layer.name in prunable:
            return prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return legacy.keras.models.clone_model(twin, clone_function=clone)


def _pruning_wrappers(pruned):
    # TF-MOT exports no name for its wrapper class; its layers hold `pruning_obj`.
    wrapper = tfmot_compat.legacy_keras().keras.layers.Wrapper
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
    schedule = tfmot_compat.legacy_keras().tfmot.sparsity.keras.ConstantSparsity(
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
    return tfmot_compat.legacy_keras().tfmot.sparsity.keras.strip_pruning(pruned)


def kernel_sparsity(model, layer_names):
    """Share of exact zeros over all kernels of the named layers, together."""
    zeros = total = 0
    for name in layer_names:
        kernel = model.get_layer(name).kernel.numpy()
        zeros += kernel.size - np.count_nonzero(kernel)
        total += kernel.size
    return zeros / total


def fine_tune_schedule(num_steps):
    """`(frequency, end_step)` of the fine-tune's mask updates.

    At most `_MAX_MASK_UPDATES` updates, the last at `end_step`, a multiple of the
    frequency no later than the last step: the target sparsity is reached there.
    """
    frequency = max(1, num_steps // _MAX_MASK_UPDATES)
    return frequency, frequency * (num_steps // frequency)


def prune_fine_tuned(twin, sparsity, train_data, fine_tune):
    """Prunes while fine-tuning: sparsity ramps 0 -> target (PolynomialDecay).

    The twin's mask layers apply the run's Gradient Mask rule during the fine-tune
    (`fit` calls them with `training=True`).

    Args:
      twin: The `tf_keras` twin; trained and pruned in place.
      sparsity: Target share of zeros in each kernel, in [0, 1).
      train_data: Unbatched `(image, label)` pairs, already capped.
      fine_tune: The `FineTune` options (its `num_examples` is not applied here).

    Returns:
      `(pruned, schedule)`: the wrapped model and `{"steps", "frequency",
      "end_step"}`.
    """
    legacy = tfmot_compat.legacy_keras()
    sparsity_api = legacy.tfmot.sparsity.keras
    num_steps = math.ceil(_count(train_data) / fine_tune.batch_size) * fine_tune.epochs
    frequency, end_step = fine_tune_schedule(num_steps)
    schedule = sparsity_api.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step,
        frequency=frequency,
    )
    pruned = wrap_for_pruning(twin, schedule)
    pruned.compile(
        optimizer=make_optimizer(
            fine_tune.optimizer, fine_tune.learning_rate, momentum=fine_tune.momentum,
            keras_module=legacy.keras
        ),
        loss=legacy.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    # Its variables made now: made inside the first trace of the step, they would
    # have tf_keras trace the whole step again.
    pruned.optimizer.build(pruned.trainable_variables)
    if fine_tune.seed is not None:
        legacy.keras.utils.set_random_seed(fine_tune.seed)
    pruned.fit(
        train_data.batch(fine_tune.batch_size).prefetch(tf.data.AUTOTUNE),
        epochs=fine_tune.epochs,
        callbacks=[sparsity_api.UpdatePruningStep()],
        verbose=0,
    )
    return pruned, {"steps": num_steps, "frequency": frequency, "end_step": end_step}
