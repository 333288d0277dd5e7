"""`GradMaskModel`: a Keras model whose training step reports what the masks do."""

import keras
import tensorflow as tf

from gradmask_tf.errors import invalid
from gradmask_tf.layers import GradientMask

KEPT_FRACTION_PREFIX = "kept_fraction/"
KEPT_L1_PREFIX = "kept_l1/"
MASK_METRIC_PREFIXES = (KEPT_FRACTION_PREFIX, KEPT_L1_PREFIX)
GRADIENT_NORM = "gradient_norm"
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
        return super().metrics + mask_trackers + [self._gradient_norm_tracker]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        measure = self._switch_mask_metrics()
        # Each mask point's probe receives [kept_fraction, kept_l1] as its "gradient".
        probes = [layer.gradient_probe.value for layer in self.mask_layers]
        with tf.GradientTape() as tape:
            tape.watch(probes)
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        # The factor the loss was scaled by, read before `apply` may grow or shrink it.
        loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
        trainable_variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, trainable_variables + probes)
        gradients, mask_statistics = (
            gradients[: len(trainable_variables)],
            gradients[len(trainable_variables) :],
        )
        self.optimizer.apply(gradients, trainable_variables)

        # Keras losses are divided by the number of replicas; the logged loss is not.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        for metric in super().metrics:
            if metric.name == "loss":
                metric.update_state(loss * replicas, sample_weight=batch_size)
        for trackers, statistics in zip(self._mask_trackers, mask_statistics):
            # A mask point the loss does not reach reports no gradient at all.
            if statistics is not None:
                for index, tracker in enumerate(trackers):
                    tracker.update_state(statistics[index], sample_weight=measure)
        self._update_gradient_norm(gradients, loss_scale, replicas)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _switch_mask_metrics(self):
        """Turns the probes on for a measured step; returns 1.0 if measured, else 0.0."""
        if self._mask_metrics_every == 1 or not self._mask_trackers:
            return tf.constant(1.0)
        # Every N-th step, and the epoch's first (the trackers were just reset), so
        # every epoch has a figure.
        measure = tf.logical_or(
            self.optimizer.iterations % self._mask_metrics_every == 0,
            tf.equal(self._mask_trackers[0][0].count.value, 0.0),
        )
        switch = tf.cast(measure, tf.float32)
        for layer in self.mask_layers:
            layer.gradient_probe.assign(tf.fill([2], switch))
        return switch

    def _update_gradient_norm(self, gradients, loss_scale, replicas):
        norm = tf.linalg.global_norm(
            [tf.cast(g, tf.float32) for g in gradients if g is not None]
        )
        # Undo loss scaling, so the figure means the same in mixed precision.
        norm = norm / tf.cast(loss_scale, tf.float32) * replicas
        finite = tf.math.is_finite(norm)
        self._gradient_norm_tracker.update_state(
            tf.where(finite, norm, 0.0), sample_weight=tf.cast(finite, tf.float32)
        )

    def test_step(self, data):
        logs = super().test_step(data)
        # The mask trackers describe training steps only.
        return {
            name: value
            for name, value in logs.items()
            if not name.startswith(MASK_METRIC_PREFIXES) and name != GRADIENT_NORM
        }
