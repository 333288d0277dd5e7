"""tf-keras-vis with Keras 3: the project's one adapter to it.

Each function returns one batch of raw maps `[N, H, W]` of the true label's logit,
with `training=False` (Gradient Mask layers are identities there, dropout is off),
without a `model_modifier` (the model outputs logits already, so it is never cloned
or changed). The quirks handled here:

- tf-keras-vis resolves `tf.keras` at call time (`tf.keras.Model(...)` builds the
  Grad-CAM model; `find_layer` and `is_mixed_precision` test `isinstance(...,
  tf.keras.Model)`). TensorFlow binds `tf.keras` once per process, at its first use,
  to Keras 3 or, where `TF_USE_LEGACY_KERAS=1` is set by then (TF-MOT sets it when
  imported), to `tf_keras`, which cannot wrap Keras 3 tensors. Importing tf-keras-vis
  here already binds it (its annotations read `tf.keras`), so a variable set later
  changes nothing; and where it was bound to `tf_keras` before this module was
  imported, `_context` shows tf-keras-vis a `tensorflow` whose `keras` is Keras 3,
  for the duration of our calls only. (Its `K`, bound at import to
  `tensorflow.keras.backend`, is then tf_keras's backend; the functions it uses,
  `abs`, `relu`, `sum`, `softmax`, `batch_dot`, `epsilon`, work on any tensor.)
- Its Grad-CAM layer search only recognizes convolution classes; the layer is passed
  by name with the search turned off.
- `CategoricalScore` wraps a NumPy array as one index; labels go in as a list of ints.
- Grad-CAM++ weighs with `exp(score)`, NaN once a logit passes 88 (float32 overflow);
  it gets the logit shifted to 0 by its own stopped value (`_shifted`).
- Maps are min-max scaled by default; raw maps are asked for.
- SmoothGrad draws its noise from NumPy's global generator: it is seeded for the call
  and restored afterwards. `TF_KERAS_VIS_MAX_STEPS` silently caps the number of
  samples (`smoothgrad_samples_used` says how many run).
- Keras 3 warns that a single-input model received a list (tf-keras-vis always passes
  one), and Score-CAM's `predict` prints a progress bar; both are silenced.
"""

import contextlib
import types
import warnings

import keras
import numpy as np
import tensorflow as tf

with warnings.catch_warnings():
    # tf-keras-vis 0.8.7 imports `zoom` from a deprecated SciPy namespace.
    warnings.simplefilter("ignore", DeprecationWarning)
    import tf_keras_vis
    import tf_keras_vis.utils
    import tf_keras_vis.utils.model_modifiers
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

# The distribution behind this adapter, for `gradmask_tf.versions.library_versions`.
PACKAGE = "tf-keras-vis"

# Modules of tf-keras-vis that read `tf.keras` when called (not only when imported).
_TF_KERAS_VIS_MODULES = (
    tf_keras_vis,
    tf_keras_vis.utils,
    tf_keras_vis.utils.model_modifiers,
)


class _TensorFlowWithKeras3(types.ModuleType):
    """`tensorflow` as tf-keras-vis must see it: `tf.keras` is Keras 3."""

    keras = keras

    def __getattr__(self, name):
        return getattr(tf, name)


_TENSORFLOW_FOR_TF_KERAS_VIS = _TensorFlowWithKeras3("tensorflow")


@contextlib.contextmanager
def _context():
    """Runs tf-keras-vis against Keras 3, quietly, whatever `tf.keras` is bound to."""
    saved_modules = [(module, module.tf) for module in _TF_KERAS_VIS_MODULES]
    interactive_logging = keras.config.is_interactive_logging_enabled()
    try:
        for module, _ in saved_modules:
            module.tf = _TENSORFLOW_FOR_TF_KERAS_VIS
        # Score-CAM calls `predict`, which would print a bar per batch.
        keras.config.disable_interactive_logging()
        with warnings.catch_warnings():
            # tf-keras-vis passes a one-element list to every model.
            warnings.filterwarnings(
                "ignore", message="The structure of `inputs`", category=UserWarning
            )
            yield
    finally:
        for module, saved in saved_modules:
            module.tf = saved
        if interactive_logging:
            keras.config.enable_interactive_logging()


@contextlib.contextmanager
def _numpy_global_seed(seed):
    """Seeds NumPy's global generator (SmoothGrad's noise source), then restores it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _true_label_logit(labels):
    # A NumPy array would be taken as one index: tf-keras-vis listifies the argument.
    return CategoricalScore([int(label) for label in labels])


def _shifted(score):
    """`score - stop_gradient(score)`: the same gradient, and the value 0.

    With the value shifted to 0, Grad-CAM++'s `exp(score)` cannot overflow; every map
    is divided by `exp(logit)`, a per-image factor that a normalization removes.
    """

    def shifted_score(output):
        value = score(output)
        return value - tf.stop_gradient(value)

    return shifted_score


def vanilla(model, images, labels):
    """`max_c |d logit / d x|` over the channels (Simonyan et al.)."""
    with _context():
        return Saliency(model, clone=False)(
            _true_label_logit(labels), images, training=False, normalize_map=False
        )


def smoothgrad(model, images, labels, *, samples, noise, seed):
    """The vanilla map averaged over `samples` noisy copies (Smilkov et al.).

    The noise's standard deviation is `noise * (max - min)` of each image; `seed`
    seeds NumPy's global generator for this call only.
    """
    with _context(), _numpy_global_seed(seed):
        return Saliency(model, clone=False)(
            _true_label_logit(labels), images, smooth_samples=samples, smooth_noise=noise,
            training=False, normalize_map=False,
        )


def gradcam_plus_plus(model, images, labels, *, layer):
    """Grad-CAM++ on `layer`'s feature maps, upsampled to the image (Chattopadhay et al.)."""
    with _context():
        return GradcamPlusPlus(model, clone=False)(
            _shifted(_true_label_logit(labels)), images, penultimate_layer=layer,
            seek_penultimate_conv_layer=False, training=False, normalize_cam=False,
        )


def scorecam(model, images, labels, *, layer, batch_size):
    """Score-CAM on `layer`'s feature maps (Wang et al.): one forward pass per channel."""
    with _context():
        return Scorecam(model, clone=False)(
            _true_label_logit(labels), images, penultimate_layer=layer,
            seek_penultimate_conv_layer=False, batch_size=batch_size, training=False,
            normalize_cam=False,
        )


def smoothgrad_samples_used(samples):
    """How many SmoothGrad samples run (`TF_KERAS_VIS_MAX_STEPS` may cap them)."""
    return int(tf_keras_vis.utils.get_num_of_steps_allowed(samples))
