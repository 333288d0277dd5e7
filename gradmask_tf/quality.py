"""Gradient quality: the gradient signal-to-noise ratio (GSNR), METHOD.md section 4.

The paper proposes a criterion for gradient quality whose formula is not public; this
module measures the established one. GSNR is a secondary metric: it describes the
gradients the optimizer receives and decides no claim. For parameter j and per-example
gradients `g_j(x)`, `GSNR_j = E[g_j]^2 / Var[g_j]`.

The estimator. A fixed probe of n examples is split into m micro-batches of
b = n // m examples (the first m * b are used). With micro-batch gradients `G_j^(i)`:

    mu_j = mean_i G_j^(i),  s2_j = var_i G_j^(i)  (ddof 1),
    GSNR_j = (mu_j^2 - s2_j / m) / (b * s2_j).

`E[mu_j^2] = E[g_j]^2 + Var[g_j] / (m b)` and `E[s2_j] = Var[g_j] / b`, so the
numerator estimates the signal without bias; the plain `mu_j^2 / (b s2_j)` reads about
`1 / (m b)` on pure noise. The ratio keeps a small bias: for Gaussian micro-batch
gradients (means of b examples), `E[1 / s2_j] = (m - 1) / ((m - 3) E[s2_j])`, so

    E[GSNR_j] = (m - 1) / (m - 3) * GSNR_j + 2 / ((m - 3) m b),

at the default probe (m = 32, b = 32) 7% high and 6.7e-5 above zero on pure noise,
against the plain estimator's 1.0e-3. The estimator depends on m and b through this
bias and its noise, so figures compare only between probes of the same size: the
defaults (`NUM_PROBE_EXAMPLES` in `NUM_MICRO_BATCHES`) are the fixed size.

Parameters whose gradient does not vary over the micro-batches have no GSNR and are
left out: those with a zero gradient on every micro-batch (dead units, variables the
loss does not reach; their share is `share_without_gradient`) and, rarer, those with
the same non-zero gradient on each (an infinite GSNR) or a non-finite one
(`share_without_noise`).

Per layer (the layer holding the variable; in a nested model `model/layer`) the median and
the mean over its parameters are reported; for the model, the mean over all its
parameters (`gsnr`, what `GSNRCallback` logs) and the mean of the layer medians. The
median of a layer whose parameters are mostly noise reads below zero, since the
estimator's median on pure noise is about `-0.53 / (m b)` (m = 32).

The standard error of the model figures is a delete-one jackknife over micro-batches:
each figure is recomputed m times, each time on the m - 1 other micro-batches, and
`SE = sqrt((m - 1) / m * sum_i (F_(i) - mean F_(.))^2)`. Micro-batches are the
independent units of the probe; parameters are not (they share examples), so a
spread over parameters would understate the error. The jackknife needs m >= 3.

The gradients are those the optimizer receives: masks active (`training=True`). Every
random draw is fixed within one probe: the non-trainable variables, among them the
state of every Keras `SeedGenerator` (the `random` rule's and the matched control's
masks, dropout), are restored before each micro-batch, so micro-batches differ only in
their examples, and after the probe, so training continues as it would without it.

References:
  Liu et al. "Understanding Why Neural Networks Generalize Well Through GSNR of
  Parameters". ICLR 2020.
  Jiang et al. "Gradient Mask: Lateral Inhibition Mechanism Improves Performance in
  Artificial Neural Networks". arXiv:2208.06918, 2022.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from gradmask_tf.errors import invalid
from gradmask_tf.training import mask_layers

# The fixed probe size (METHOD.md section 4: at least 1024 examples in at least 32
# micro-batches); figures compare only between probes of the same size.
NUM_PROBE_EXAMPLES = 1024
NUM_MICRO_BATCHES = 32


def _validate(num_examples, num_micro_batches):
    """Refuses fewer than 2 micro-batches (no variance) or micro-batches of 1 example."""
    if (
        not isinstance(num_micro_batches, numbers.Integral)
        or isinstance(num_micro_batches, bool)
        or num_micro_batches < 2
        or num_examples // num_micro_batches < 2
    ):
        raise invalid(
            "num_micro_batches",
            "an integer >= 2 that leaves at least 2 examples per micro-batch "
            f"(at most {num_examples // 2} for this probe of {num_examples} examples)",
            num_micro_batches,
        )


def _layer_names(model, prefix=""):
    """`{id(variable): name of the layer holding it}`, nested models as `model/layer`."""
    names = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = _layer_names(layer, f"{prefix}{layer.name}/")
        else:
            found = {id(variable): prefix + layer.name for variable in layer.trainable_variables}
        names = {**found, **names}  # a shared variable belongs to its first layer
    return names


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
        state_variables = model.non_trainable_variables

        @tf.function(autograph=False)  # as Keras traces its step
        def step(x, y, state):
            # Each micro-batch from the same state, restored here (one call, not one
            # eager assign per variable): then the probes, which switch the mask
            # statistics on (GradMaskModel may have left them off between measured
            # steps).
            for variable, value in zip(state_variables, state):
                variable.assign(value)
            for probe in probes:
                probe.assign(tf.ones([2]))
            with tf.GradientTape() as tape:
                tape.watch(probes)
                logits = tf.cast(model(x, training=True), tf.float32)
                value = loss(y, logits)
            return tape.gradient(value, variables + probes)

        return step

    def __call__(self, images, labels, *, num_micro_batches=NUM_MICRO_BATCHES):
        """Micro-batch gradients on `(images, labels)`, every random draw fixed.

        Args:
          images: Probe images, `[N, H, W, C]`.
          labels: Integer labels `[N]`.
          num_micro_batches: m; the first `m * (N // m)` examples are used.
            Defaults to `NUM_MICRO_BATCHES`.

        Returns:
          `(gradients, kept)`: a list (one per trainable variable) of arrays
          `[m, *variable.shape]` (zeros where the loss does not reach the variable),
          and a dict mapping each mask layer's name to its kept fraction on the batch
          (mean over micro-batches).

        Raises:
          ValueError: If `num_micro_batches` is below 2 or leaves micro-batches of
            fewer than 2 examples.
        """
        images = np.asarray(images, np.float32)
        labels = np.asarray(labels)
        _validate(len(images), num_micro_batches)
        if self._step is None:
            self._step = self._build_step()
        model = self.model
        variables = model.trainable_variables
        size = len(images) // num_micro_batches
        # Seed generator states (the masks' and dropout's draws) and BatchNormalization
        # statistics: restored before each micro-batch, so the micro-batches differ only
        # in their examples, and after the probe, which must measure, not change.
        state_variables = model.non_trainable_variables
        state = [variable.numpy() for variable in state_variables]
        state_tensors = [tf.constant(value) for value in state]

        gradients = [[] for _ in variables]
        kept = {layer.name: [] for layer in self.masks}
        try:
            for index in range(num_micro_batches):
                chunk = slice(index * size, (index + 1) * size)
                results = self._step(
                    tf.constant(images[chunk]), tf.constant(labels[chunk]), state_tensors
                )
                for store, variable, gradient in zip(gradients, variables, results):
                    zero = gradient is None  # a variable the loss does not reach
                    store.append(np.zeros(variable.shape, np.float32) if zero else gradient.numpy())
                for layer, value in zip(self.masks, results[len(variables) :]):
                    if value is not None:
                        kept[layer.name].append(float(value[0]))  # [kept_fraction, kept_l1]
        finally:
            for variable, value in zip(state_variables, state):
                variable.assign(value)
        return (
            [np.stack(store) for store in gradients],
            {name: float(np.mean(values)) for name, values in kept.items() if values},
        )


# Parameters per pass of `gsnr_from_gradients`: their float64 copies of m micro-batches
# stay in the CPU's cache (2 MB at m = 32), where one pass over every parameter at
# once went to memory four times (2.5-3.5x as long; the figures are the same bits).
_PARAMETERS_PER_PASS = 8192


def gsnr_from_gradients(gradients, micro_batch_size):
    """Per-parameter GSNR from micro-batch gradients `[m, ...]`, in float64.

    NaN where the gradient does not vary over the micro-batches (no GSNR).
    """
    gradients = np.asarray(gradients)
    num_micro_batches = len(gradients)
    flat = gradients.reshape(num_micro_batches, -1)
    values = np.empty(flat.shape[1], np.float64)
    for start in range(0, flat.shape[1], _PARAMETERS_PER_PASS):
        part = slice(start, start + _PARAMETERS_PER_PASS)
        chunk = np.asarray(flat[:, part], np.float64)
        mean = chunk.mean(axis=0)
        variance = chunk.var(axis=0, ddof=1)
        varies = variance > 0
        variance = np.where(varies, variance, 1.0)
        value = (mean**2 - variance / num_micro_batches) / (micro_batch_size * variance)
        values[part] = np.where(varies, value, np.nan)
    return values.reshape(gradients.shape[1:])


def _model_figures(per_layer):
    """`(mean over parameters, mean of layer medians)` from per-layer GSNR arrays."""
    per_layer = [values[~np.isnan(values)] for values in per_layer]
    everything = np.concatenate(per_layer)
    medians = [np.median(values) for values in per_layer if values.size]
    return (
        np.mean(everything) if everything.size else np.nan,
        np.mean(medians) if medians else np.nan,
    )


def _jackknife(gradients, micro_batch_size):
    """Delete-one jackknife standard errors of `_model_figures` over micro-batches."""
    num_micro_batches = len(gradients[0])
    if num_micro_batches < 3:
        return np.nan, np.nan
    replicates = np.array([
        _model_figures([
            gsnr_from_gradients(np.delete(stacked, index, axis=0), micro_batch_size)
            for stacked in gradients
        ])
        for index in range(num_micro_batches)
    ])
    deviations = replicates - replicates.mean(axis=0)
    return np.sqrt((num_micro_batches - 1) / num_micro_batches * (deviations**2).sum(axis=0))


def gsnr_figures(gradients, micro_batch_size, *, standard_errors=True):
    """The GSNR per layer and for the model from micro-batch gradients.

    Args:
      gradients: `{layer name: array [m, ...]}`, the micro-batch gradients of each
        layer's parameters (flattened per micro-batch).
      micro_batch_size: b, the examples per micro-batch.
      standard_errors: Whether to compute the jackknife standard errors (m more
        evaluations of the figures). Defaults to True.

    Returns:
      A dict: `gsnr` (mean over the parameters with a GSNR) and
      `gsnr_mean_of_layer_medians`, each with its `*_standard_error` (NaN where
      not computed or m < 3); `share_without_gradient`, `share_without_noise` and
      `num_parameters` (the model's); `per_layer` (each layer's median),
      `per_layer_mean` and `per_layer_share_without_gradient`; `micro_batches` (m),
      `micro_batch_size` (b) and `num_examples` (m * b). NaN where no parameter has
      a GSNR.
    """
    names = list(gradients)
    # As given (float32 from a probe): `gsnr_from_gradients` widens a chunk at a time.
    stacked = [
        np.asarray(gradients[name]).reshape(len(gradients[name]), -1) for name in names
    ]
    num_micro_batches = len(stacked[0])
    values = [gsnr_from_gradients(layer, micro_batch_size) for layer in stacked]
    without_gradient = [np.all(layer == 0, axis=0) for layer in stacked]
    num_parameters = sum(layer.size for layer in values)
    num_without_gradient = sum(int(flags.sum()) for flags in without_gradient)
    num_without_noise = sum(int(np.isnan(v).sum()) for v in values) - num_without_gradient
    mean, mean_of_medians = _model_figures(values)
    errors = _jackknife(stacked, micro_batch_size) if standard_errors else (np.nan, np.nan)
    kept = [layer[~np.isnan(layer)] for layer in values]
    return {
        "gsnr": float(mean),
        "gsnr_standard_error": float(errors[0]),
        "gsnr_mean_of_layer_medians": float(mean_of_medians),
        "gsnr_mean_of_layer_medians_standard_error": float(errors[1]),
        "share_without_gradient": num_without_gradient / num_parameters,
        "share_without_noise": num_without_noise / num_parameters,
        "num_parameters": num_parameters,
        "per_layer": {
            name: float(np.median(layer)) if layer.size else np.nan
            for name, layer in zip(names, kept)
        },
        "per_layer_mean": {
            name: float(np.mean(layer)) if layer.size else np.nan
            for name, layer in zip(names, kept)
        },
        "per_layer_share_without_gradient": {
            name: float(flags.mean()) for name, flags in zip(names, without_gradient)
        },
        "micro_batches": num_micro_batches,
        "micro_batch_size": micro_batch_size,
        "num_examples": num_micro_batches * micro_batch_size,
    }


def gsnr(
    model,
    images,
    labels,
    *,
    num_micro_batches=NUM_MICRO_BATCHES,
    loss=None,
    probe=None,
    standard_errors=True,
):
    """GSNR of a model on a probe batch, per layer and for the model, masks active.

    Args:
      model: A Keras model with logits outputs (a `GradMaskModel` or any other).
      images: Probe images `[N, H, W, C]`, float in [0, 1]; `NUM_PROBE_EXAMPLES`
        of them for figures that compare.
      labels: Integer labels `[N]`.
      num_micro_batches: Number m of micro-batches (>= 2, leaving >= 2 examples
        each). Defaults to `NUM_MICRO_BATCHES`.
      loss: A Keras loss. Defaults to sparse categorical cross-entropy on logits.
      probe: A `GradientProbe` of `model` to reuse (its trace). Defaults to a new one.
      standard_errors: Whether to compute the jackknife standard errors. Defaults
        to True.

    Returns:
      The dict of `gsnr_figures`, with `kept_fraction` (per mask point, on this
      batch).

    Raises:
      ValueError: If `num_micro_batches` is below 2 or leaves micro-batches of
        fewer than 2 examples.
    """
    probe = probe or GradientProbe(model, loss)
    gradients, kept = probe(images, labels, num_micro_batches=num_micro_batches)
    names = _layer_names(model)
    by_layer = {}
    for variable, stacked in zip(model.trainable_variables, gradients):
        name = names.get(id(variable), variable.path.rsplit("/", 1)[0])
        by_layer.setdefault(name, []).append(stacked.reshape(len(stacked), -1))
    result = gsnr_figures(
        {name: np.concatenate(parts, axis=1) for name, parts in by_layer.items()},
        len(images) // num_micro_batches,
        standard_errors=standard_errors,
    )
    result["kept_fraction"] = kept
    return result


class GSNRCallback(keras.callbacks.Callback):
    """Logs the GSNR on a fixed probe batch every `every_n_steps` training steps.

    The figure logged is the model's mean over parameters (`gsnr` of `gsnr()`: the
    one Liu et al. average, near zero where parameters carry only noise, where a
    layer median reads below zero); the measurements keep the rest, without
    standard errors (a jackknife would cost m more passes each time). The latest
    value is added to each epoch's logs as `gsnr` (so `history.csv` gets a column)
    and every measurement goes to TensorBoard as `gsnr` when `log_dir` is set. A
    secondary metric: it describes training, it decides no claim.

    Steps are the optimizer's iterations, which the checkpoint holds, so a resumed
    run measures at the steps an uninterrupted one would (a step that mixed precision
    skips for a non-finite gradient changes no weight and is not counted).

    Args:
      images: Probe images (a fixed batch from the training split):
        `NUM_PROBE_EXAMPLES` of them for figures that compare.
      labels: Their integer labels.
      every_n_steps: Measure every this many training steps (and at each epoch end).
      num_micro_batches: Micro-batches of the probe. Defaults to
        `NUM_MICRO_BATCHES`.
      log_dir: TensorBoard directory, or None.
      loss: A Keras loss; defaults to sparse categorical cross-entropy on logits.
    """

    def __init__(
        self, images, labels, every_n_steps, num_micro_batches=NUM_MICRO_BATCHES, log_dir=None,
        loss=None,
    ):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(
                "Invalid value for argument `every_n_steps`: expected an integer >= 1. "
                f"Received: every_n_steps={every_n_steps!r}"
            )
        _validate(len(images), num_micro_batches)
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
            standard_errors=False,
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
