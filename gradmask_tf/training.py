"""`GradMaskModel`: a Keras model whose training step reports what the masks do."""

import sys

import keras
import tensorflow as tf

from gradmask_tf.layers import GradientMask

KEPT_FRACTION_PREFIX = "kept_fraction/"
GRADIENT_NORM = "gradient_norm"


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

    - `kept_fraction/<mask layer>`: the share of gradient entries each mask point let
      through (1.0 where masking is off);
    - `gradient_norm`: the global L2 norm of the loss gradient over the trainable
      weights, loss scaling undone (the mean over replicas of each replica's
      gradient under a distribution strategy); steps whose gradient overflowed in
      mixed precision are left out.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Made here, under the caller's strategy scope: created inside a distributed
        # step, their variables would not be mirrored correctly.
        self._kept_trackers = [
            keras.metrics.Mean(name=f"{KEPT_FRACTION_PREFIX}{layer.name}")
            for layer in self.mask_layers
        ]
        self._gradient_norm_tracker = keras.metrics.Mean(name=GRADIENT_NORM)

    @property
    def mask_layers(self):
        return mask_layers(self)

    def set_masks_enabled(self, enabled):
        """Turns every mask point on or off, without retracing."""
        set_masks_enabled(self, enabled)

    @property
    def metrics(self):
        return super().metrics + self._kept_trackers + [self._gradient_norm_tracker]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # Each mask point's probe receives its kept fraction as its "gradient".
        probes = [layer.gradient_probe.value for layer in self.mask_layers]
        with tf.GradientTape() as tape:
            tape.watch(probes)
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        trainable_variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, trainable_variables + probes)
        gradients, kept_fractions = (
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
        for tracker, kept in zip(self._kept_trackers, kept_fractions):
            # A mask point the loss does not reach reports no gradient at all.
            if kept is not None:
                tracker.update_state(kept)
        self._update_gradient_norm(gradients, replicas)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _update_gradient_norm(self, gradients, replicas):
        norm = tf.linalg.global_norm(
            [tf.cast(g, tf.float32) for g in gradients if g is not None]
        )
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # Undo loss scaling, so the figure means the same in mixed precision.
            norm = norm / tf.cast(self.optimizer.dynamic_scale, tf.float32)
        norm = norm * replicas
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
            if not name.startswith(KEPT_FRACTION_PREFIX) and name != GRADIENT_NORM
        }


def fit_multi_worker(
    model,
    strategy,
    dataset,
    *,
    epochs,
    initial_epoch=0,
    batch_size,
    callbacks=(),
    log_dir=None,
    jit_compile=False,
):
    """Trains `model` with `strategy` in a loop that runs `model.train_step`.

    Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585),
    so this loop runs the model's own `train_step` under `strategy.run` over a
    distributed dataset. Every worker runs it with the same arguments.

    Args:
      model: A compiled `GradMaskModel`, built under `strategy.scope()`.
      strategy: The `tf.distribute` strategy.
      dataset: Unbatched `(image, label)` pairs, in the same (seeded) order on every
        worker; each worker takes its shard.
      epochs: Last epoch to run.
      initial_epoch: Epochs already run.
      batch_size: Global batch size (split over all replicas).
      callbacks: Keras callbacks; their epoch hooks are called.
      log_dir: Where to write TensorBoard epoch scalars, or None.
      jit_compile: Compile the step with XLA.

    Returns:
      The list of per-epoch logs.
    """
    num_replicas = strategy.num_replicas_in_sync
    if batch_size % num_replicas:
        raise ValueError(
            f"Invalid value for argument `batch_size`: expected a multiple of the "
            f"{num_replicas} replicas. Received: batch_size={batch_size}"
        )
    num_examples = int(dataset.cardinality())
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(
            f"The dataset has {num_examples} examples, fewer than one global batch "
            f"of {batch_size}."
        )

    def dataset_fn(input_context):
        # Equal, full batches everywhere: uneven shards would leave a worker waiting
        # in a collective that the others never join.
        per_pipeline = steps * batch_size // input_context.num_input_pipelines
        shard = dataset.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        ).take(per_pipeline)
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        return shard.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    distributed = strategy.distribute_datasets_from_function(dataset_fn)
    # Build the optimizer and the metrics in cross-replica context, as `fit` would.
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
        images, labels = next(iter(dataset.batch(2)))
        model.compute_metrics(images, labels, model(images, training=False))
    for metric in model.metrics:
        metric.reset_state()

    @tf.function(jit_compile=jit_compile)
    def replica_step(batch):
        return model.train_step(batch)

    @tf.function
    def distributed_step(iterator):
        strategy.run(replica_step, args=(next(iterator),))

    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None
    all_logs = []
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        for metric in model.metrics:
            metric.reset_state()
        progress = keras.utils.Progbar(steps, verbose=1 if sys.stdout.isatty() else 2)
        iterator = iter(distributed)
        for step in range(steps):
            distributed_step(iterator)
            if step % 10 == 0 or step == steps - 1:
                progress.update(step + 1)
        logs = {name: float(value) for name, value in model.get_metrics_result().items()}
        print(
            f"Epoch {epoch + 1}/{epochs}: "
            + " - ".join(f"{name}: {value:.4f}" for name, value in sorted(logs.items()))
        )
        callback_list.on_epoch_end(epoch, logs)
        if writer is not None:
            with writer.as_default(step=epoch):
                for name, value in logs.items():
                    tf.summary.scalar(f"epoch_{name}", value)
            writer.flush()
        all_logs.append(logs)
    callback_list.on_train_end()
    return all_logs
