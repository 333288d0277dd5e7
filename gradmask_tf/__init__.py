"""gradmask_tf: Gradient Mask (lateral inhibition of gradients) for Keras 3.

The public names load on first use (PEP 562), so the TensorFlow- and Keras-free modules
(`gradmask_tf.config`, `gradmask_tf.mask_params`, `gradmask_tf.files`) import without
them. Where Keras is already imported, the layer and the model class are registered at
once, so a `.keras` file holding them loads right after `import keras; import
gradmask_tf` (otherwise touch a public name first, e.g. `gradmask_tf.GradientMask`).

References:
  Jiang, Liu, Xiao, Chua. "Gradient Mask: Lateral Inhibition Mechanism Improves
  Performance in Artificial Neural Networks". arXiv:2208.06918, 2022.
"""

import importlib
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ARCHITECTURES": "gradmask_tf.config",
    "GradMaskModel": "gradmask_tf.training",
    "GradientMask": "gradmask_tf.layers",
    "MaskConfig": "gradmask_tf.ops",
    "RULES": "gradmask_tf.mask_params",
    "RunConfig": "gradmask_tf.config",
    "SCOPES": "gradmask_tf.mask_params",
    "build_model": "gradmask_tf.models",
    "gradient_mask": "gradmask_tf.ops",
    "insert_masks": "gradmask_tf.insert",
    "is_trunk_nonlinearity": "gradmask_tf.insert",
    "mask_gradient": "gradmask_tf.ops",
    "mask_layers": "gradmask_tf.training",
    "run": "gradmask_tf.trainer",
    "set_masks_enabled": "gradmask_tf.training",
}
_SUBMODULES = ("data",)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"gradmask_tf.{name}")
    else:
        raise AttributeError(f"module 'gradmask_tf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])


if "keras" in sys.modules:  # Keras is loaded already: register the saved names now.
    importlib.import_module("gradmask_tf.layers")
    importlib.import_module("gradmask_tf.training")
