"""`GradMaskModel`: a Keras model whose training step reports what the masks do.

The model, its trackers and switches are the same on every backend; the training step
itself is the backend's (`training_tf.py`: TensorFlow's tape, `training_jax.py`:
JAX's stateless step), picked by `keras.backend.backend()`.
"""

import importlib

import keras

from gradmask_tf.errors import invalid
from gradmask_tf.files import (  # noqa: F401 (history.csv's names, also for callers)
    GRADIENT_NORM,
    KEPT_FRACTION_PREFIX,
    KEPT_L1_PREFIX,
    MASK_METRIC_PREFIXES,
)
from gradmask_tf.layers import GradientMask
DEFAULT_MASK_METRICS_EVERY = 10


def mask_layers(model):
    """All `GradientMask` layers of a model, nested models included, in order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, GradientMask):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(mask_layers(layer))
    return found


def set_masks_enabled(model, enabled):
    """Turns every mask point of `model` on or off, without retracing."""
    for layer in mask_layers(model):
        layer.enabled.assign(bool(enabled))


@keras.saving.register_keras_serializable(package="gradmask_tf")
class GradMaskModel(keras.Model):
    """A `keras.Model` with a training step that reports its mask points.

    Build it like a functional model, `GradMaskModel(inputs, outputs)`, or with
    `gradmask_tf.build_model`. Besides the compiled loss and metrics, `fit` reports:

    - `kept_fraction/<mask layer>`: the share of the non-zero gradient entries each
      mask point let through, and `kept_l1/<mask layer>` the share of their L1 mass
      (METHOD.md section 2; both 1.0 where masking is off). Entries that arrive as
      exactly zero (below a max pool, say) are not counted, so the figures compare
      across rules and placements. Measured on every `mask_metrics_every`-th step
      (and the first step of each epoch): they cost about as much as the mask;
    - `gradient_norm`: the global L2 norm of the loss gradient over the trainable
      weights, loss scaling undone (the mean over replicas of each replica's
      gradient under a distribution strategy); steps whose gradient overflowed in
      mixed precision are left out.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # As train.py samples them: every step would cost about the mask itself again
        # (1.64x the step of `none` on a 2-core CPU against 1.12x for 10).
        self._mask_metrics_every = DEFAULT_MASK_METRICS_EVERY
        # Made here, under the caller's strategy scope: created inside a distributed
        # step, their variables would not be mirrored correctly.
        self._mask_trackers = [
            [keras.metrics.Mean(name=f"{prefix}{layer.name}") for prefix in MASK_METRIC_PREFIXES]
            for layer in self.mask_layers
        ]
        self._gradient_norm_tracker = keras.metrics.Mean(name=GRADIENT_NORM)

    @property
    def mask_layers(self):
        return mask_layers(self)

    @property
    def mask_metrics_every(self):
        """Measure the mask metrics every N training steps (and each epoch's first).

        Defaults to `DEFAULT_MASK_METRICS_EVERY` (10), as `train.py` does; 1 measures
        every step, at about the cost of the mask itself.

        Set it before `fit` (the step is traced with it); not saved with the model.
        """
        return self._mask_metrics_every

    @mask_metrics_every.setter
    def mask_metrics_every(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid("mask_metrics_every", "a positive integer", value)
        self._mask_metrics_every = value

    @property
    def metrics(self):
        mask_trackers = [tracker for pair in self._mask_trackers for tracker in pair]
        metrics = super().metrics + mask_trackers + [self._gradient_norm_tracker]
        # Once each: Keras tracks metric attributes itself, and JAX's step takes each
        # metric variable once (a variable twice in its state is donated twice).
        return list({id(metric): metric for metric in metrics}.values())

    def train_step(self, *args):
        # The backend's own step: TensorFlow's tape, or JAX's stateless gradient.
        return _backend_steps().train_step(self, *args)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras on TensorFlow builds the optimizer and the compiled metrics before the
        # first step only under a distribution strategy; without one, the step's first
        # trace makes their variables, and TensorFlow then traces the whole step again.
        # Built here from the data's spec: one trace (the same graph and weights;
        # `fit` of the cnn with `mean`, 3.5 s to 2.8 s).
        if (
            keras.backend.backend() == "tensorflow"
            and self._distribute_strategy is None
            and data_batch is None
            and _backend_steps().build_from_spec(self, iterator)
        ):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, *args):
        result = super().test_step(*args)
        # The mask trackers describe training steps only.
        if isinstance(result, tuple):  # JAX: (logs, state)
            return _training_logs_removed(result[0]), result[1]
        return _training_logs_removed(result)


def _training_logs_removed(logs):
    return {
        name: value
        for name, value in logs.items()
        if not name.startswith(MASK_METRIC_PREFIXES) and name != GRADIENT_NORM
    }


def _backend_steps():
    """The module of this backend's training step."""
    name = "jax" if keras.backend.backend() == "jax" else "tf"
    return importlib.import_module(f"gradmask_tf.training_{name}")
