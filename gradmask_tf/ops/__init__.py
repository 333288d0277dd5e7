"""The Gradient Mask op: identity forward, lateral inhibition on the gradient.

The rules are written once, in `keras.ops`, and run on the TensorFlow and JAX
backends; `backend.py` holds the rest (the custom gradient, TensorFlow's XLA fast
paths and `NthElement`, the random draws). `gradient_mask` is the public op; the
layer in `layers.py` calls `masked_identity` with its `enabled` switch, a per-step
seed and a probe that reports the mask's statistics (`kept_fraction`, `kept_l1`)
through the backward pass.

One module per job, dependencies flowing one way:
  config.py: `MaskConfig` (its parameters declared in `gradmask_tf.mask_params`) and
    the `topk` budget `num_kept`;
  neighbourhoods.py: neighbourhoods as rows and the k-th largest entry of each;
  lateral.py: the position rules `lateral` and `log`;
  control.py: the matched control and the uniform draws of `random`;
  rules.py: the threshold rules `mean`, `local`, `topk`, and any rule applied;
  statistics.py: the mask statistics;
  backend.py: what the backend gives beyond `keras.ops` (the one module that
    names TensorFlow or JAX);
  gradient.py: the custom gradient (`mask_gradient`, `masked_identity`,
    `gradient_mask`).

References:
  Jiang, Liu, Xiao, Chua. "Gradient Mask: Lateral Inhibition Mechanism Improves
  Performance in Artificial Neural Networks". arXiv:2208.06918, 2022.
  Cao et al. "Lateral Inhibition-Inspired Convolutional Neural Network for Visual
  Attention and Saliency Detection". AAAI 2018 (the `lateral` rule).
"""

from gradmask_tf.mask_params import RULES, SCOPES
from gradmask_tf.ops.config import MaskConfig, num_kept
from gradmask_tf.ops.gradient import gradient_mask, mask_gradient, masked_identity

__all__ = [
    "RULES",
    "SCOPES",
    "MaskConfig",
    "gradient_mask",
    "mask_gradient",
    "masked_identity",
    "num_kept",
]
