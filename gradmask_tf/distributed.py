"""`fit_multi_worker`: training under `MultiWorkerMirroredStrategy`, where `fit` fails.

Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585), so
this loop runs the model's own `train_step` under `strategy.run` over a distributed
dataset.
"""

import sys

import keras
import tensorflow as tf


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

    Every worker runs it with the same arguments.

    Args:
      model: A compiled `GradMaskModel`, built under `strategy.scope()`.
      strategy: The `tf.distribute` strategy.
      dataset: Unbatched `(image, label)` pairs of the epochs still to run, one after
        another and of one size, in the same order on every worker (as
        `gradmask_tf.data.load(..., epochs=range(initial_epoch, epochs))` gives
        them); each worker takes its shard of each epoch.
      epochs: Last epoch to run.
      initial_epoch: Epochs already run.
      batch_size: Global batch size (split over all replicas).
      callbacks: Keras callbacks; their epoch hooks are called.
      log_dir: Where to write TensorBoard epoch scalars, or None.
      jit_compile: Compile the step with XLA.

    Returns:
      The list of per-epoch logs.
    """
    if initial_epoch >= epochs:
        return []
    num_examples, steps = _epoch_size(strategy, dataset, epochs - initial_epoch, batch_size)
    distributed = _distribute(strategy, dataset, batch_size, num_examples, steps)
    _build(model, strategy, dataset)
    step_fn = _step_function(model, strategy, jit_compile)
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None
    all_logs = []
    iterator = iter(distributed)
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        logs = _run_epoch(model, step_fn, iterator, steps)
        print(
            f"Epoch {epoch + 1}/{epochs}: "
            + " - ".join(f"{name}: {value:.4f}" for name, value in sorted(logs.items()))
        )
        callback_list.on_epoch_end(epoch, logs)
        if writer is not None:
            _write_scalars(writer, epoch, logs)
        all_logs.append(logs)
    callback_list.on_train_end()
    return all_logs


def _epoch_size(strategy, dataset, num_epochs, batch_size):
    """`(num_examples, steps)` of each epoch, the arguments checked."""
    num_replicas = strategy.num_replicas_in_sync
    if batch_size % num_replicas:
        raise ValueError(
            f"Invalid value for argument `batch_size`: expected a multiple of the "
            f"{num_replicas} replicas. Received: batch_size={batch_size}"
        )
    total = int(dataset.cardinality())
    if total < 0 or total % num_epochs:
        raise ValueError(
            f"Invalid value for argument `dataset`: expected the {num_epochs} epochs "
            f"still to run, one after another and of one size. Received: {total} "
            "examples (negative: unknown)."
        )
    num_examples = total // num_epochs
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(
            f"The dataset has {num_examples} examples, fewer than one global batch "
            f"of {batch_size}."
        )
    return num_examples, steps


def _distribute(strategy, dataset, batch_size, num_examples, steps):
    """The distributed dataset: each pipeline's shard of each epoch, in full batches."""

    def dataset_fn(input_context):
        # Equal, full batches everywhere: uneven shards would leave a worker waiting
        # in a collective that the others never join. Each pipeline takes every n-th
        # of the first `steps` global batches of each epoch, so no batch spans two.
        num_pipelines = input_context.num_input_pipelines
        pipeline = input_context.input_pipeline_id

        def in_shard(position, example):
            within = position % num_examples
            return (within < steps * batch_size) & (within % num_pipelines == pipeline)

        shard = dataset.enumerate().filter(in_shard).map(lambda position, example: example)
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        return shard.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _build(model, strategy, dataset):
    """Builds the optimizer and the metrics in cross-replica context, as `fit` would."""
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
        images, labels = next(iter(dataset.batch(2)))
        model.compute_metrics(images, labels, model(images, training=False))
    for metric in model.metrics:
        metric.reset_state()


def _step_function(model, strategy, jit_compile):
    """One global step: `model.train_step` on every replica's next batch."""

    # No autograph, as Keras traces its own step (the step has no tensor-dependent
    # Python control flow; converting it and what it calls costs seconds per process).
    @tf.function(jit_compile=jit_compile, autograph=False)
    def replica_step(batch):
        return model.train_step(batch)

    @tf.function(autograph=False)
    def distributed_step(iterator):
        strategy.run(replica_step, args=(next(iterator),))

    return distributed_step


def _run_epoch(model, step_fn, iterator, steps):
    """Runs one epoch of `steps` steps; returns its logs."""
    for metric in model.metrics:
        metric.reset_state()
    progress = keras.utils.Progbar(steps, verbose=1 if sys.stdout.isatty() else 2)
    for step in range(steps):
        step_fn(iterator)
        if step % 10 == 0 or step == steps - 1:
            progress.update(step + 1)
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def _write_scalars(writer, epoch, logs):
    """Writes an epoch's logs as TensorBoard scalars `epoch_NAME`."""
    with writer.as_default(step=epoch):
        for name, value in logs.items():
            tf.summary.scalar(f"epoch_{name}", value)
    writer.flush()
