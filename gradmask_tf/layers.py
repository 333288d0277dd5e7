"""`GradientMask`: the Keras 3 layer around the op in `gradmask_tf.ops`.

Its arguments are the op's parameters, declared in `gradmask_tf.mask_params`; the
signature stays explicit (as Keras layers have it), and tests/test_mask_params.py
holds it, and `get_config`, to those declarations.
"""

import itertools

import keras
import numpy as np

from gradmask_tf import mask_params, ops
from gradmask_tf.ops.backend import generator_seed


def point_seeds(seed):
    """Seeds of successive mask points, each derived from (`seed`, its index), or None.

    A model's `random` masks and matched controls must draw independently, and no
    point of one run may draw the stream of a point of another run (the layer keys
    its draws by its seed and the training step). Point i's seed is a 63-bit hash of
    (`seed`, i) (`numpy.random.SeedSequence`, i as the spawn key), so two points of
    any runs share a stream with probability about 2^-63 per pair; the same `seed`
    gives the same seeds.
    """
    if seed is None:
        return itertools.repeat(None)
    # Seeds are int64 in TensorFlow; mod 2^64 keeps a negative one distinct.
    entropy = seed % 2**64
    return (
        int(
            np.random.SeedSequence(entropy, spawn_key=(index,)).generate_state(1, np.uint64)[0]
            >> np.uint64(1)
        )
        for index in itertools.count()
    )


@keras.saving.register_keras_serializable(package="gradmask_tf")
class GradientMask(keras.layers.Layer):
    """Masks weak activation gradients during training (lateral inhibition).

    An exact identity in the forward pass. When called with `training=True`, its
    backward pass applies `gradmask_tf.gradient_mask` with the rule and options
    given here; otherwise (`training=False` or unset) gradients pass exactly, so
    adversarial attacks and saliency methods see the true model.

    Place one after each block's non-linearity and each hidden dense layer, never on
    the logits.

    Example:

    ```python
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = gradmask_tf.GradientMask("mean")(x)
    ```

    Attributes:
      enabled: A non-trainable bool variable. `layer.enabled.assign(False)` turns
        masking off (warm-up, ablation) without retracing the training step.
      gradient_probe: A non-trainable float32 `[2]` variable whose gradient, in a
        training step, is this mask point's `[kept_fraction, kept_l1]`: the share
        of the finite non-zero gradient entries that the mask passes and the share
        of their L1 mass it selects (`[1, 1]` while disabled; see
        `gradmask_tf.mask_gradient`). Its value is the switch: while it is zero
        the statistics are not computed (and its gradient is zero), which is how
        `GradMaskModel` measures only every `mask_metrics_every` steps. Starts at
        ones: measured.

    Args:
      rule: `"none"`, `"mean"`, `"local"`, `"topk"`, `"lateral"`, `"log"` or
        `"random"`. Defaults to `"mean"`.
      scope, alpha, kernel_size, keep_fraction, soft, rescale, control, zone_size,
      inhibition_base, inhibition_strength, sigma: As in
      `gradmask_tf.gradient_mask`.
      seed: Seed of the draws of the `random` rule and of the matched control
        (`control=True`). They are keyed by the seed and the training step, so a
        run is reproducible. Defaults to None (a random seed).
      **kwargs: Base layer arguments (`name`, `dtype`, ...).

    References:
      Jiang et al., "Gradient Mask: Lateral Inhibition Mechanism Improves
      Performance in Artificial Neural Networks", arXiv:2208.06918, 2022.
    """

    def __init__(
        self,
        rule="mean",
        *,
        scope="spatial",
        alpha=1.0,
        kernel_size=3,
        keep_fraction=0.5,
        soft=False,
        rescale=False,
        control=False,
        zone_size=7,
        inhibition_base=0.1,
        inhibition_strength=0.9,
        sigma=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mask_config = ops.MaskConfig(
            rule=rule, scope=scope, alpha=alpha, kernel_size=kernel_size,
            keep_fraction=keep_fraction, soft=soft, rescale=rescale, control=control,
            zone_size=zone_size, inhibition_base=inhibition_base,
            inhibition_strength=inhibition_strength, sigma=sigma, seed=seed,
        )
        self.rule = rule
        self.scope = scope
        self.alpha = alpha
        self.kernel_size = kernel_size
        self.keep_fraction = keep_fraction
        self.soft = soft
        self.rescale = rescale
        self.control = control
        self.zone_size = zone_size
        self.inhibition_base = inhibition_base
        self.inhibition_strength = inhibition_strength
        self.sigma = sigma
        self.seed = seed
        self.supports_masking = True
        self.enabled = self.add_weight(
            shape=(), dtype="bool", initializer="ones", trainable=False, name="enabled"
        )
        self.gradient_probe = self.add_weight(
            shape=(2,),
            dtype="float32",
            initializer="ones",
            trainable=False,
            # Switched inside the (replicated) training step: one value for all.
            aggregation="only_first_replica",
            name="gradient_probe",
        )
        # Only the `random` rule and the control draw; the generator advances once
        # per training call, which keys the draw by seed and training step.
        self.seed_generator = (
            keras.random.SeedGenerator(generator_seed(seed))
            if rule == "random" or control
            else None
        )
        self.built = True

    def call(self, inputs, training=None):
        if not training:
            return inputs
        seed = self.seed_generator.next() if self.seed_generator is not None else None
        return ops.masked_identity(
            inputs,
            self.mask_config,
            enabled=self.enabled.value,
            seed=seed,
            probe=self.gradient_probe.value,
        )

    def load_own_variables(self, store):
        """Restores the layer's state from a `.keras` file of any layout saved so far.

        `enabled` is the state; the probe is set by every training step, and it was a
        scalar before it became the `[kept_fraction, kept_l1]` pair (53ee5e4), so it is
        restored only where the file's shape is today's (tests/test_saved_models.py).
        """
        self.enabled.assign(store["0"])
        if "1" in store.keys() and tuple(store["1"].shape) == tuple(self.gradient_probe.shape):
            self.gradient_probe.assign(store["1"])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {
            parameter.name: getattr(self, parameter.name)
            for parameter in mask_params.PARAMETERS
        }
        return {**base_config, **config}
