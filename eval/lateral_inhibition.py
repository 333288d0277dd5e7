"""The lateral-inhibition saliency of the authors' probable public code (METHOD.md §5.4).

For each image and the logit of its true label, at every ReLU output with rank 4
(`relu_layers`): the channel L2 norm of the logit's gradient with respect to that
output, `[h, w]`; convolved with their kernel exactly (`lateral_inhibition_kernel`:
the LoG of a 5x5 impulse, not shifted to sum zero) with reflect padding (the edge not
repeated, as NumPy's `reflect`, `tf.pad`'s `REFLECT` and PyTorch's `reflect`, and as
the `log` rule reads it, METHOD.md section 2; SciPy calls this mode `mirror`);
negated, rectified, and resized to the image (`tf.image.resize`, bilinear); summed
over the layers and min-max normalised per image. At that size and sigma the kernel is
nearly flat and negative, so the negated filter is a blur with positive weights.

Gradients are taken with `training=False`: exact, Gradient Mask layers inactive.
`eval.saliency` offers it as its `lateral_inhibition` method beside tf-keras-vis's.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from eval import checks

# The kernel: `scipy.ndimage.gaussian_laplace` of a centred impulse of this size,
# with this sigma.
KERNEL_SIZE = 5
SIGMA = 11.0


def lateral_inhibition_maps(model, images, labels, *, batch_size=64):
    """The lateral-inhibition saliency maps of the true labels' logits.

    Args:
      model: A Keras 3 functional model with one input (images in [0, 1]) and one
        output of logits.
      images: `[N, H, W, C]` floats in [0, 1].
      labels: `[N]` integer class labels.
      batch_size: Images per gradient pass. Defaults to 64.

    Returns:
      A float32 array `[N, H, W]` in [0, 1], each map's minimum 0 and maximum 1, or
      all zero where the map is constant (the score does not depend on the image),
      or all NaN where a value is not finite.

    Raises:
      ValueError: If an argument is invalid, the model does not have one input and
        one output, or it has no ReLU layer with a 4-D output.
    """
    checks.single_input_output(model)
    images, labels = checks.labelled_images((images, labels), model)
    batch_size = checks.integer("batch_size", batch_size)
    compute = batch_maps(model)
    return np.concatenate([
        compute(images[start : start + batch_size], labels[start : start + batch_size])
        for start in range(0, len(images), batch_size)
    ])


def relu_layers(model):
    """Names the layers whose output is a ReLU of rank 4 `[N, H, W, C]`, in order.

    A `keras.layers.ReLU`, an `Activation("relu")`, or any layer built with
    `activation="relu"` (a Conv2D, a Dense). Gradient Mask layers are identities at
    inference and do not count, wherever the mask points are; layers inside a
    nested model, and layers used more than once, are not seen.

    Raises:
      ValueError: If the model has no such layer.
    """
    names = [
        layer.name for layer in model.layers
        if checks.output_rank(layer) == 4 and (
            isinstance(layer, keras.layers.ReLU)
            or getattr(layer, "activation", None) is keras.activations.relu
        )
    ]
    if not names:
        raise ValueError(
            f"Model {model.name!r} has no ReLU layer with a 4-D output [N, H, W, C], "
            "which the lateral_inhibition saliency needs."
        )
    return names


@functools.lru_cache(maxsize=None)
def _kernel():
    from scipy import ndimage  # tf-keras-vis needs SciPy already.

    impulse = np.zeros((KERNEL_SIZE, KERNEL_SIZE))
    impulse[KERNEL_SIZE // 2, KERNEL_SIZE // 2] = 1.0
    kernel = ndimage.gaussian_laplace(impulse, sigma=SIGMA)
    kernel.setflags(write=False)
    return kernel


def lateral_inhibition_kernel():
    """Their kernel, float64 `[5, 5]`: `scipy.ndimage.gaussian_laplace` of a centred
    5x5 impulse with sigma 11 (SciPy's defaults: `reflect` mode within the 5x5
    array, truncation at 4 sigma), not shifted. Computed once with SciPy."""
    return _kernel().copy()


def batch_maps(model):
    """`compute(images, labels)`: one batch of lateral-inhibition maps in [0, 1].

    The model's checks are the caller's (`lateral_inhibition_maps` makes them).

    Raises:
      ValueError: If the model has no ReLU layer with a 4-D output.
    """
    layer_names = relu_layers(model)
    # One sub-model exposing the ReLU outputs beside the logits, one tape over them.
    probe = keras.Model(
        model.input, [model.get_layer(name).output for name in layer_names] + model.outputs
    )
    kernel = _kernel()

    def compute(images, labels):
        x = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape() as tape:
            *activations, logits = probe(x, training=False)
            score = tf.gather(logits, tf.constant(labels, tf.int64), batch_dims=1)
        gradients = tape.gradient(
            score, activations, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        total = np.zeros(images.shape[:3], np.float64)
        for gradient in gradients:
            gradient = gradient.numpy().astype(np.float64)
            magnitude = np.sqrt(np.sum(np.square(gradient), axis=-1))
            response = np.maximum(-_convolve_reflect(magnitude, kernel), 0.0)
            resized = tf.image.resize(response[..., None], images.shape[1:3], method="bilinear")
            total += resized.numpy()[..., 0]
        return _min_max(total)

    return compute


def _convolve_reflect(maps, kernel):
    """Convolves each map `[N, h, w]` with `kernel`, padding by NumPy's `reflect`."""
    half = kernel.shape[0] // 2
    height, width = maps.shape[1:]
    padded = np.pad(maps, ((0, 0), (half, half), (half, half)), mode="reflect")
    flipped = kernel[::-1, ::-1]  # A convolution, not a correlation.
    out = np.zeros_like(maps)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            out += flipped[i, j] * padded[:, i : i + height, j : j + width]
    return out


def _min_max(maps):
    """Each map scaled to [0, 1]; constant maps zero, non-finite ones NaN."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    finite = np.isfinite(span)
    scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)
    scaled = np.where(finite, scaled, np.nan)
    return scaled.astype(np.float32)
