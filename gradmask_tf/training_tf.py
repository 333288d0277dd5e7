"""`GradMaskModel`'s training step on TensorFlow (and under a `tf.distribute` strategy).

The canonical step with a `tf.GradientTape`; every addition for Gradient Mask says why.
"""

import keras
import tensorflow as tf


def train_step(model, data):
    """One training step of `model` (a `GradMaskModel`); returns the logs."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    measure = _switch_mask_metrics(model)
    # Each mask point's probe receives [kept_fraction, kept_l1] as its "gradient".
    probes = [layer.gradient_probe.value for layer in model.mask_layers]
    with tf.GradientTape() as tape:
        tape.watch(probes)
        y_pred = model(x, training=True)
        loss = model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        scaled_loss = model.optimizer.scale_loss(loss)
    # The factor the loss was scaled by, read before `apply` may grow or shrink it.
    loss_scale = model.optimizer.scale_loss(tf.constant(1.0))
    trainable_variables = model.trainable_variables
    gradients = tape.gradient(scaled_loss, trainable_variables + probes)
    gradients, mask_statistics = (
        gradients[: len(trainable_variables)],
        gradients[len(trainable_variables) :],
    )
    model.optimizer.apply(gradients, trainable_variables)

    # Keras losses are divided by the number of replicas; the logged loss is not.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
    for metric in model.metrics:
        if metric.name == "loss":
            metric.update_state(loss * replicas, sample_weight=batch_size)
    for trackers, statistics in zip(model._mask_trackers, mask_statistics):
        # A mask point the loss does not reach reports no gradient at all.
        if statistics is not None:
            for index, tracker in enumerate(trackers):
                tracker.update_state(statistics[index], sample_weight=measure)
    _update_gradient_norm(model, gradients, loss_scale, replicas)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def build_from_spec(model, iterator):
    """Builds `model`'s optimizer and compiled metrics and loss from the spec of the
    data of Keras's epoch `iterator`, as Keras does under a strategy from a batch;
    False (nothing built) where the iterator has no such spec."""
    spec = getattr(getattr(iterator, "_distributed_dataset", None), "element_spec", None)
    if spec is None or not all(isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(spec)):
        return False
    model._symbolic_build(data_batch=tf.nest.map_structure(
        lambda s: keras.KerasTensor(tuple(s.shape), s.dtype.name), spec))
    return True


def _switch_mask_metrics(model):
    """Turns the probes on for a measured step; returns 1.0 if measured, else 0.0."""
    if model.mask_metrics_every == 1 or not model._mask_trackers:
        return tf.constant(1.0)
    # Every N-th step, and the epoch's first (the trackers were just reset), so
    # every epoch has a figure.
    measure = tf.logical_or(
        model.optimizer.iterations % model.mask_metrics_every == 0,
        tf.equal(model._mask_trackers[0][0].count.value, 0.0),
    )
    switch = tf.cast(measure, tf.float32)
    for layer in model.mask_layers:
        layer.gradient_probe.assign(tf.fill([2], switch))
    return switch


def _update_gradient_norm(model, gradients, loss_scale, replicas):
    norm = tf.linalg.global_norm(
        [tf.cast(g, tf.float32) for g in gradients if g is not None]
    )
    # Undo loss scaling, so the figure means the same in mixed precision.
    norm = norm / tf.cast(loss_scale, tf.float32) * replicas
    finite = tf.math.is_finite(norm)
    model._gradient_norm_tracker.update_state(
        tf.where(finite, norm, 0.0), sample_weight=tf.cast(finite, tf.float32)
    )
