"""gradmask_tf: Gradient Mask (lateral inhibition of gradients) for Keras 3.

References:
  Jiang, Liu, Xiao, Chua. "Gradient Mask: Lateral Inhibition Mechanism Improves
  Performance in Artificial Neural Networks". arXiv:2208.06918, 2022.
"""

from gradmask_tf import data
from gradmask_tf.insert import insert_masks, is_trunk_nonlinearity
from gradmask_tf.layers import GradientMask
from gradmask_tf.models import ARCHITECTURES, build_model
from gradmask_tf.ops import RULES, SCOPES, MaskConfig, gradient_mask, mask_gradient
from gradmask_tf.training import GradMaskModel, mask_layers, set_masks_enabled

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "GradMaskModel",
    "GradientMask",
    "MaskConfig",
    "RULES",
    "SCOPES",
    "build_model",
    "data",
    "gradient_mask",
    "insert_masks",
    "is_trunk_nonlinearity",
    "mask_gradient",
    "mask_layers",
    "set_masks_enabled",
]
