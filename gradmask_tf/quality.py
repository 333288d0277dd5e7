"""Gradient quality: the gradient signal-to-noise ratio (GSNR), METHOD.md section 4.

The paper proposes a criterion for gradient quality whose formula is not public; this
module measures the established one. For parameter j and per-example gradients
`g_j(x)`, `GSNR_j = E[g_j]^2 / Var[g_j]`. On a fixed probe batch split into m
micro-batches of b examples, with micro-batch gradients `G_j^(i)`:

    mu_j = mean_i G_j^(i),  s2_j = var_i G_j^(i)  (unbiased, m - 1),
    GSNR_j ~= mu_j^2 / (b * s2_j + eps)

(the variance of a mean of b examples is Var[g_j] / b). It is reported as the mean over
the parameters of each layer and of the whole model, computed with the masks active
(`training=True`), since that is the gradient the optimizer receives.

References:
  Liu et al. "Understanding Why Neural Networks Generalize Well Through GSNR of
  Parameters". ICLR 2020.
  Jiang et al. "Gradient Mask: Lateral Inhibition Mechanism Improves Performance in
  Artificial Neural Networks". arXiv:2208.06918, 2022.
"""

import keras
import numpy as np
import tensorflow as tf

from gradmask_tf.training import mask_layers

EPSILON = 1e-12


def _validate(num_examples, num_micro_batches):
    if not isinstance(num_micro_batches, int) or num_micro_batches < 2:
        raise ValueError(
            "Invalid value for argument `num_micro_batches`: expected an integer >= 2 "
            f"(a variance needs two). Received: num_micro_batches={num_micro_batches!r}"
        )
    if num_examples < num_micro_batches:
        raise ValueError(
            f"The probe batch has {num_examples} examples, fewer than "
            f"num_micro_batches={num_micro_batches}."
        )


def _layer_of(variable):
    """The name of the layer that owns `variable` (its path's first part)."""
    path = getattr(variable, "path", variable.name)
    return path.split("/")[0]


class GradientProbe:
    """Computes micro-batch gradients of a model with its masks active.

    The traced step is kept, so a probe called every N training steps traces once.

    Args:
      model: A Keras model with logits outputs.
      loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    """

    def __init__(self, model, loss=None):
        self.model = model
        self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.masks = mask_layers(model)
        self._step = None

    def _build_step(self):
        model, loss = self.model, self.loss
        variables = model.trainable_variables
        probes = [layer.gradient_probe.value for layer in self.masks]

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                tape.watch(probes)
                logits = tf.cast(model(x, training=True), tf.float32)
                value = loss(y, logits)
            return tape.gradient(value, variables + probes)

        return step

    def __call__(self, images, labels, *, num_micro_batches=8):
        """Micro-batch gradients on `(images, labels)`.

        Args:
          images: Probe images, `[N, H, W, C]`.
          labels: Integer labels `[N]`.
          num_micro_batches: m; the first `m * (N // m)` examples are used.

        Returns:
          `(gradients, kept)`: a list (one per trainable variable) of arrays
          `[m, *variable.shape]` (empty where the loss does not reach the variable),
          and a dict mapping each mask layer's name to its kept fraction on the batch
          (mean over micro-batches).
        """
        images = np.asarray(images, np.float32)
        labels = np.asarray(labels)
        _validate(len(images), num_micro_batches)
        if self._step is None:
            self._step = self._build_step()
        model = self.model
        num_variables = len(model.trainable_variables)
        size = len(images) // num_micro_batches
        # BatchNormalization in training mode updates its moving statistics: the
        # probe must measure the model, not change it.
        state = [variable.numpy() for variable in model.non_trainable_variables]
        gradients = [[] for _ in range(num_variables)]
        kept = {layer.name: [] for layer in self.masks}
        try:
            for index in range(num_micro_batches):
                chunk = slice(index * size, (index + 1) * size)
                results = self._step(
                    tf.constant(images[chunk]), tf.constant(labels[chunk])
                )
                for store, gradient in zip(gradients, results[:num_variables]):
                    store.append(np.zeros(0) if gradient is None else gradient.numpy())
                for layer, value in zip(self.masks, results[num_variables:]):
                    if value is not None:
                        kept[layer.name].append(float(value[0]))  # [kept_fraction, kept_l1]
        finally:
            for variable, value in zip(model.non_trainable_variables, state):
                variable.assign(value)
        return (
            [np.stack(store) for store in gradients],
            {name: float(np.mean(values)) for name, values in kept.items() if values},
        )


def gsnr_from_gradients(gradients, micro_batch_size, epsilon=EPSILON):
    """Per-parameter GSNR from micro-batch gradients `[m, ...]` (float64)."""
    gradients = np.asarray(gradients, np.float64)
    mean = gradients.mean(axis=0)
    variance = gradients.var(axis=0, ddof=1)
    return mean**2 / (micro_batch_size * variance + epsilon)


def gsnr(model, images, labels, *, num_micro_batches=8, loss=None, probe=None):
    """GSNR of a model on a probe batch, per layer and overall, masks active.

    Args:
      model: A Keras model with logits outputs (a `GradMaskModel` or any other).
      images: Probe images `[N, H, W, C]`, float in [0, 1].
      labels: Integer labels `[N]`.
      num_micro_batches: Number m of micro-batches (>= 2). Defaults to 8.
      loss: A Keras loss. Defaults to sparse categorical cross-entropy on logits.
      probe: A `GradientProbe` of `model` to reuse (its trace). Defaults to a new one.

    Returns:
      A dict: `gsnr` (mean over all parameters), `per_layer` (mean over each layer's
      parameters), `kept_fraction` (per mask point, on this batch), `micro_batches`
      (m) and `micro_batch_size` (b).
    """
    probe = probe or GradientProbe(model, loss)
    gradients, kept = probe(images, labels, num_micro_batches=num_micro_batches)
    size = len(images) // num_micro_batches
    per_layer_values = {}
    for variable, stacked in zip(model.trainable_variables, gradients):
        if stacked.size == 0:
            continue  # a variable the loss does not reach
        values = gsnr_from_gradients(stacked, size).ravel()
        per_layer_values.setdefault(_layer_of(variable), []).append(values)
    per_layer = {
        name: float(np.mean(np.concatenate(values)))
        for name, values in per_layer_values.items()
    }
    everything = np.concatenate([np.concatenate(v) for v in per_layer_values.values()])
    return {
        "gsnr": float(np.mean(everything)),
        "per_layer": per_layer,
        "kept_fraction": kept,
        "micro_batches": num_micro_batches,
        "micro_batch_size": size,
    }


class GSNRCallback(keras.callbacks.Callback):
    """Logs the GSNR on a fixed probe batch every `every_n_steps` training steps.

    The latest value is added to each epoch's logs as `gsnr` (so `history.csv` gets a
    column) and every measurement goes to TensorBoard as `gsnr` when `log_dir` is set.

    Steps are the optimizer's iterations, which the checkpoint holds, so a resumed
    run measures at the steps an uninterrupted one would (a step that mixed precision
    skips for a non-finite gradient changes no weight and is not counted).

    Args:
      images: Probe images (a fixed batch from the training split).
      labels: Their integer labels.
      every_n_steps: Measure every this many training steps (and at each epoch end).
      num_micro_batches: Micro-batches of the probe. Defaults to 8.
      log_dir: TensorBoard directory, or None.
      loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    """

    def __init__(
        self, images, labels, every_n_steps, num_micro_batches=8, log_dir=None, loss=None
    ):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(
                "Invalid value for argument `every_n_steps`: expected an integer >= 1. "
                f"Received: every_n_steps={every_n_steps!r}"
            )
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels)
        self.every_n_steps = every_n_steps
        self.num_micro_batches = num_micro_batches
        self.log_dir = log_dir
        self.loss = loss
        self.measurements = []
        self._probe = None
        self._writer = None
        self._step = 0
        self._current = False  # whether the last measurement saw the current weights

    def _measure(self):
        if self._probe is None:
            self._probe = GradientProbe(self.model, self.loss)
        result = gsnr(
            self.model,
            self.images,
            self.labels,
            num_micro_batches=self.num_micro_batches,
            probe=self._probe,
        )
        self.measurements.append({"step": self._step, **result})
        self._current = True
        if self.log_dir is not None:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(self.log_dir))
            with self._writer.as_default(step=self._step):
                tf.summary.scalar("gsnr", result["gsnr"])
            self._writer.flush()
        return result

    def on_epoch_begin(self, epoch, logs=None):
        self._current = False

    def _optimizer_step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = self._optimizer_step()
        if step == self._step:
            return  # a skipped step: the weights did not change
        self._step = step
        self._current = False
        if self._step % self.every_n_steps == 0:
            self._measure()

    def on_epoch_end(self, epoch, logs=None):
        # Loops that call no batch hooks (the multi-worker one) measure here only.
        self._step = self._optimizer_step()
        result = self.measurements[-1] if self._current else self._measure()
        if logs is not None:
            logs["gsnr"] = result["gsnr"]
