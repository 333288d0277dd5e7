"""`insert_masks`: Gradient Mask for a Keras model that already exists."""

import inspect

import keras

from gradmask_tf import compat
from gradmask_tf.layers import GradientMask, point_seeds
from gradmask_tf.ops import MaskConfig
from gradmask_tf.training import GradMaskModel

# Non-linearity layers of the feature trunk.
_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Activation,
)


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear or (
        getattr(activation, "__name__", "") == "linear"
    )


def is_trunk_nonlinearity(layer):
    """The default selection: a non-linearity layer, or a layer with a built-in one.

    `ReLU`, `LeakyReLU`, `PReLU`, `ELU` and `Activation` layers (but not
    `Activation("linear")`), and layers such as `Conv2D` or `Dense` whose
    `activation` is not linear.
    """
    if isinstance(layer, _ACTIVATION_LAYERS):
        return not (isinstance(layer, keras.layers.Activation) and _is_linear(layer.activation))
    if isinstance(layer, keras.Model):
        return False
    return hasattr(layer, "activation") and not _is_linear(layer.activation)


def _selector(after):
    if after is None:
        return is_trunk_nonlinearity
    if inspect.isclass(after) or (
        isinstance(after, tuple) and all(inspect.isclass(c) for c in after)
    ):
        return lambda layer: isinstance(layer, after)
    if callable(after):
        return after
    raise ValueError(
        "Invalid value for argument `after`: expected a layer class, a tuple of layer "
        f"classes or a predicate on the layer. Received: after={after!r}"
    )


def _as_functional(model):
    """A Sequential model as the equivalent functional graph (same layer objects)."""
    if not model.inputs:
        raise ValueError(
            "insert_masks needs a built Sequential model: give it an `Input` (or call "
            "`model.build(input_shape)`) first."
        )
    inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
    outputs = inputs
    for layer in model.layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


def insert_masks(model, rule="mean", *, after=None, **mask_options):
    """Returns a `GradMaskModel`: `model`'s graph with a `GradientMask` after layers.

    The new model calls the very same layer objects, so it SHARES the original's
    weights (training one trains the other): its forward outputs equal the
    original's. Nested models, several inputs and outputs and residual branches keep
    their structure (nested functional models are rebuilt around the same layers).
    The classifier output (whatever layer produces a model output: logits or softmax)
    never gets a mask.

    Example:

    ```python
    base = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    model = gradmask_tf.insert_masks(base, "mean", alpha=1.0)
    model.compile(...); model.fit(...)
    ```

    Args:
      model: A functional or Sequential Keras model (built).
      rule: The `GradientMask` rule. Defaults to `"mean"`.
      after: Which layers get a mask after them: a layer class, a tuple of classes,
        or a predicate `after(layer) -> bool`. Defaults to every non-linearity of the
        trunk (`is_trunk_nonlinearity`). Outputs of other ranks than 2 and 4 (which
        the op does not define) are left without a mask.
      **mask_options: Other `GradientMask` arguments (`alpha`, `scope`, `seed`, ...).
        Each mask point gets its own seed derived from `seed` (`point_seeds`).

    Returns:
      A `GradMaskModel` (uncompiled) named `<model>_masked`.

    Raises:
      ValueError: for a subclassed model (it has no graph to rewrite), or invalid
        mask options.
    """
    if isinstance(model, keras.Sequential):
        model = _as_functional(model)
    elif not compat.is_functional(model):
        raise ValueError(
            f"insert_masks rewrites a functional or Sequential model's graph; "
            f"{type(model).__name__} is a subclassed keras.Model whose call() is Python "
            "code. Add gradmask_tf.GradientMask layers inside its call() (called with "
            "the `training` argument), or build the model with the functional API."
        )
    seed = mask_options.pop("seed", None)
    MaskConfig(rule, seed=seed, **mask_options)  # validates before any rewriting
    select = _selector(after)
    output_layers = _output_layer_names(model)
    seeds = point_seeds(seed)

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer.name in output_layers or not select(layer):
            return outputs
        if not isinstance(outputs, keras.KerasTensor) or len(outputs.shape) not in (2, 4):
            return outputs
        return GradientMask(rule, seed=next(seeds), name=f"{layer.name}_mask", **mask_options)(
            outputs
        )

    rebuilt = keras.models.clone_model(
        model,
        clone_function=lambda layer: layer,  # the same layers: shared weights
        call_function=call_function,
        recursive=True,
    )
    return GradMaskModel(rebuilt.inputs, rebuilt.outputs, name=f"{model.name}_masked")


def _output_layer_names(model):
    """Names of the layers that produce the model's outputs, inside nested models too."""
    names = set()
    for name in model.output_names:
        names.add(name)
        layer = model.get_layer(name)
        if isinstance(layer, keras.Model) and compat.is_functional(layer):
            names |= _output_layer_names(layer)
    return names
