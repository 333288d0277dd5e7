"""`GradMaskModel`'s training step on JAX: stateless, as Keras's JAX trainer has it.

The step of `keras.Model` on JAX (the loss and its gradient from
`compute_loss_and_updates`, `optimizer.stateless_apply`, the metrics updated in a
`StatelessScope`), with the mask points' probes as a second argument of the gradient:
their gradients are each point's `[kept_fraction, kept_l1]`.
"""

import jax
import jax.numpy as jnp
import keras


def _index(variables, variable):
    """The position of `variable` in a list of Keras variables (by identity)."""
    return next(i for i, candidate in enumerate(variables) if candidate is variable)


def _measure(model, optimizer_variables, metrics_variables):
    """1.0 on a measured step (every N-th and each epoch's first), else 0.0."""
    if model.mask_metrics_every == 1 or not model._mask_trackers:
        return jnp.float32(1.0)
    iterations = optimizer_variables[
        _index(model.optimizer.variables, model.optimizer.iterations)
    ]
    count = metrics_variables[
        _index(model.metrics_variables, model._mask_trackers[0][0].count)
    ]
    measured = jnp.logical_or(iterations % model.mask_metrics_every == 0, count == 0)
    return measured.astype("float32")


def _loss_and_gradients(model, state, data, switch):
    """`jax.value_and_grad` of the loss over the weights and the mask points' probes."""
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    # Each probe is switched on or off for the step, as TensorFlow's step assigns it.
    slots = [
        _index(model.non_trainable_variables, layer.gradient_probe)
        for layer in model.mask_layers
    ]
    probes = [jnp.full([2], switch) for _ in slots]

    def loss_function(trainable, probes):
        values = list(non_trainable)
        for slot, probe in zip(slots, probes):
            values[slot] = probe
        return model.compute_loss_and_updates(
            trainable, values, metrics_variables, x, y, sample_weight,
            training=True, optimizer_variables=optimizer_variables,
        )

    gradient_function = jax.value_and_grad(loss_function, argnums=(0, 1), has_aux=True)
    return gradient_function(trainable, probes)


def train_step(model, state, data):
    """One stateless training step of `model` (a `GradMaskModel`): `(logs, state)`."""
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    switch = _measure(model, optimizer_variables, metrics_variables)
    (_, aux), (gradients, mask_statistics) = _loss_and_gradients(model, state, data, switch)
    unscaled_loss, y_pred, non_trainable, metrics_variables = aux
    # The factor the loss was scaled by, read before `apply` may grow or shrink it.
    with keras.StatelessScope(
        state_mapping=list(zip(model.optimizer.variables, optimizer_variables))
    ):
        loss_scale = model.optimizer.scale_loss(jnp.float32(1.0))
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, gradients, trainable
    )
    with keras.StatelessScope(
        state_mapping=list(zip(model.metrics_variables, metrics_variables))
    ) as scope:
        batch_size = next(i for i in jax.tree_util.tree_leaves(x) if i is not None).shape[0]
        for metric in model.metrics:
            if metric.name == "loss":
                metric.update_state(unscaled_loss, sample_weight=batch_size)
        for trackers, statistics in zip(model._mask_trackers, mask_statistics):
            for index, tracker in enumerate(trackers):
                tracker.update_state(statistics[index], sample_weight=switch)
        _update_gradient_norm(model, gradients, loss_scale)
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    metrics_variables = [
        _current(scope, variable) for variable in model.metrics_variables
    ]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _current(scope, variable):
    value = scope.get_current_value(variable)
    return variable.value if value is None else value


def _update_gradient_norm(model, gradients, loss_scale):
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype("float32"))) for g in gradients))
    # Undo loss scaling, so the figure means the same in mixed precision.
    norm = norm / jnp.asarray(loss_scale, "float32")
    finite = jnp.isfinite(norm)
    model._gradient_norm_tracker.update_state(
        jnp.where(finite, norm, 0.0), sample_weight=finite.astype("float32")
    )
