"""Saliency maps and their foreground focus (METHOD.md section 5, claim 4).

For each image, a map of where the model's evidence for the true class lies, by
vanilla saliency, SmoothGrad, Grad-CAM++ and (on request) Score-CAM, all from
tf-keras-vis (`eval.vis_compat`), and the lateral-inhibition saliency of the
authors' probable public code (`lateral_inhibition_maps`, METHOD.md section 5.4),
each scaled to sum 1; and the *foreground focus*:
the share of each map's mass on object pixels (pixels > 0; on MNIST and Fashion-MNIST
the background is exactly 0). Its chance level is the mean share of object pixels: a
map that ignores the object scores near it. The measure is only meaningful where the
background is exactly 0; on natural images nearly every pixel counts as object.

Gradients are exact: the maps are taken with `training=False`, where Gradient Mask
layers are identities (Score-CAM only runs inference).

References:
  Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks: Visualising
  Image Classification Models and Saliency Maps", ICLR Workshop 2014.
  Smilkov, Thorat, Kim, Viegas, Wattenberg, "SmoothGrad: removing noise by adding
  noise", arXiv:1706.03825, 2017.
  Chattopadhay, Sarkar, Howlader, Balasubramanian, "Grad-CAM++: Generalized
  Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018.
  Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
  Neural Networks", CVPR Workshops 2020.
  Kubota, "tf-keras-vis", https://github.com/keisen/tf-keras-vis.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

from eval import checks, vis_compat
from gradmask_tf import runs
from gradmask_tf.errors import invalid
from gradmask_tf.versions import library_versions

METHODS = ("saliency", "smoothgrad", "gradcam++", "scorecam", "lateral_inhibition")
# Score-CAM is left out for its cost (one forward pass per channel). The
# lateral-inhibition saliency is in: it is the method the paper's figures most likely
# used, and costs one gradient pass per batch.
DEFAULT_METHODS = ("saliency", "smoothgrad", "gradcam++", "lateral_inhibition")
CAM_METHODS = ("gradcam++", "scorecam")

# The lateral-inhibition saliency's kernel: `scipy.ndimage.gaussian_laplace` of a
# centred impulse of this size, with this sigma (METHOD.md section 5.4).
LATERAL_INHIBITION_KERNEL_SIZE = 5
LATERAL_INHIBITION_SIGMA = 11.0

_POOLING_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def evaluate_saliency(
    model, data, *, methods=DEFAULT_METHODS, smoothgrad_samples=20, smoothgrad_noise=0.2,
    penultimate_layer=None, num_images=None, batch_size=64, seed=0,
):
    """How much of the model's saliency falls on the object, and the maps.

    For each method, the foreground focus of every image's map of the true class
    (`foreground_focus`), and its mean and standard deviation over the images, beside
    the chance level. A map that is all zero (the score does not depend on the image)
    has no focus: it is left out of the mean and counted in `num_excluded`.

    Args:
      model: A Keras 3 model with one input (images in [0, 1]) and one output of
        logits.
      data: `(images, labels)`: NumPy arrays `[N, H, W, C]` in [0, 1] and `[N]`,
        typically the first N test examples.
      methods, smoothgrad_samples, smoothgrad_noise, penultimate_layer, batch_size,
        seed: As for `saliency_maps`.
      num_images: Use only the first this many images. Defaults to None (all).

    Returns:
      `(result, maps)`. `result` is a JSON-able dict: `foreground_focus` and
      `foreground_focus_std` (`{method: float or None}`, None where every map was
      excluded), `num_excluded` (`{method: int}`), `chance`, `num_examples` (the
      first images used), and `settings` (methods, SmoothGrad samples actually used
      and noise, penultimate layer, score, mask state, seed, batch size, library
      versions). `maps` is `saliency_maps`'s `{method: [num_examples, H, W]}`.

    Raises:
      ValueError: If a method is unknown or an argument is invalid.
    """
    images, labels = checks.labelled_images(data, model)
    if num_images is not None:
        num_images = checks.integer("num_images", num_images)
        images, labels = images[:num_images], labels[:num_images]
    methods = checks.names("methods", methods, METHODS)
    layer = _resolve_penultimate_layer(model, penultimate_layer, methods)
    relus = relu_layers(model) if "lateral_inhibition" in methods else None
    maps = saliency_maps(
        model, images, labels, methods, smoothgrad_samples=smoothgrad_samples,
        smoothgrad_noise=smoothgrad_noise, penultimate_layer=layer, batch_size=batch_size,
        seed=seed,
    )
    smoothgrad = "smoothgrad" in methods
    result = {
        **_focus(maps, images),
        "chance": float(object_share(images).mean()),
        "num_examples": len(images),
        "settings": {
            "methods": list(methods),
            "smoothgrad_samples": (
                vis_compat.smoothgrad_samples_used(smoothgrad_samples) if smoothgrad else None
            ),
            "smoothgrad_noise": float(smoothgrad_noise) if smoothgrad else None,
            "penultimate_layer": layer,
            "lateral_inhibition_layers": relus,
            "score": "true-label logit",
            "masks": "inactive (exact gradients)",
            "seed": int(seed),
            "batch_size": int(batch_size),
            "library_versions": library_versions(vis_compat.PACKAGE),
        },
    }
    return result, maps


def _focus(maps, images):
    """Mean and std of each method's focus over the images, and the maps left out."""
    focus = {method: foreground_focus(method_maps, images) for method, method_maps in maps.items()}
    valid = {method: values[np.isfinite(values)] for method, values in focus.items()}
    return {
        "foreground_focus": {m: float(v.mean()) if v.size else None for m, v in valid.items()},
        "foreground_focus_std": {m: float(v.std()) if v.size else None for m, v in valid.items()},
        "num_excluded": {m: int(len(focus[m]) - v.size) for m, v in valid.items()},
    }


def saliency_maps(
    model, images, labels, methods=DEFAULT_METHODS, *, smoothgrad_samples=20,
    smoothgrad_noise=0.2, penultimate_layer=None, batch_size=64, seed=0,
):
    """Saliency maps of the true class's logit, each scaled to sum 1.

    - `saliency`: `max_c |d logit / d x|` over the channels (Simonyan et al.).
    - `smoothgrad`: the mean of that map over `smoothgrad_samples` copies of the
      image with Gaussian noise of standard deviation `smoothgrad_noise * (max -
      min)` of the image (Smilkov et al.; tf-keras-vis averages absolute gradients).
    - `gradcam++`: Grad-CAM++ on the `penultimate_layer` feature maps, upsampled
      linearly to the image size (Chattopadhay et al.).
    - `scorecam`: Score-CAM on the same feature maps, weighing each by the softmax
      probability of the true class on the image masked by it (Wang et al.); one
      forward pass per channel, so slower.
    - `lateral_inhibition`: the lateral-inhibition saliency of the authors' probable
      public code (`lateral_inhibition_maps`; here scaled to sum 1 like the others
      rather than min-max, which leaves its foreground focus unchanged).

    Args:
      model: A Keras 3 model with one input and one output of logits.
      images: `[N, H, W, C]` floats in [0, 1].
      labels: `[N]` integer class labels.
      methods: Names from `METHODS`. Defaults to `DEFAULT_METHODS` (all but
        Score-CAM).
      smoothgrad_samples: Noisy copies per image for SmoothGrad. Defaults to 20.
      smoothgrad_noise: SmoothGrad's noise level, relative to each image's value
        range. Defaults to 0.2.
      penultimate_layer: Name of the layer whose feature maps the CAM methods weigh.
        Defaults to None (`find_penultimate_layer`).
      batch_size: Images per tf-keras-vis call (and lateral-inhibition gradient
        pass). Defaults to 64.
      seed: Seed of SmoothGrad's noise, per batch, with the index of the batch's
        first image; NumPy's global generator is restored afterwards. Defaults to 0.

    Returns:
      `{method: maps}`, each `maps` a float32 array `[N, H, W]`, non-negative, each
      map summing to 1, or all zero where the score does not depend on the image, or
      all NaN where the method produced a non-finite value.

    Raises:
      ValueError: If a method is unknown, an argument is invalid, or the model does
        not have one input and one output (or, for `lateral_inhibition`, no ReLU
        layer with a 4-D output).
    """
    methods = checks.names("methods", methods, METHODS)
    _check_single_input_output(model)
    images, labels = checks.labelled_images((images, labels), model)
    batch_size = checks.integer("batch_size", batch_size)
    if "smoothgrad" in methods:
        smoothgrad_samples = checks.integer("smoothgrad_samples", smoothgrad_samples)
        smoothgrad_noise = checks.positive_float("smoothgrad_noise", smoothgrad_noise,
                                                 allow_zero=True)
    layer = _resolve_penultimate_layer(model, penultimate_layer, methods)
    lateral = (
        _lateral_inhibition(model, relu_layers(model))
        if "lateral_inhibition" in methods else None
    )
    # `method(images, labels, start)`: one batch of raw maps; `start` keys the noise.
    compute = {
        "saliency": lambda x, y, start: vis_compat.vanilla(model, x, y),
        "smoothgrad": lambda x, y, start: vis_compat.smoothgrad(
            model, x, y, samples=smoothgrad_samples, noise=smoothgrad_noise, seed=[seed, start]
        ),
        "gradcam++": lambda x, y, start: vis_compat.gradcam_plus_plus(model, x, y, layer=layer),
        "scorecam": lambda x, y, start: vis_compat.scorecam(
            model, x, y, layer=layer, batch_size=batch_size
        ),
        "lateral_inhibition": lambda x, y, start: lateral(x, y),
    }
    return {method: _maps(method, compute[method], images, labels, batch_size)
            for method in methods}


def _check_single_input_output(model):
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise invalid("model", "one input (images) and one output (logits)",
                      f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")


def lateral_inhibition_maps(model, images, labels, *, batch_size=64):
    """The lateral-inhibition saliency of the authors' probable public code.

    METHOD.md section 5.4. For each image and the logit of its true label, at every
    ReLU output with rank 4 (`relu_layers`): the channel L2 norm of the logit's
    gradient with respect to that output, `[h, w]`; convolved with their kernel
    exactly (`lateral_inhibition_kernel`: the LoG of a 5x5 impulse, not shifted to
    sum zero) with reflect padding (the edge not repeated, as NumPy's `reflect`,
    `tf.pad`'s `REFLECT` and PyTorch's `reflect`, and as the `log` rule reads it,
    METHOD.md section 2; SciPy calls this mode `mirror`); negated, rectified, and
    resized to the image (`tf.image.resize`, bilinear); summed over the layers and
    min-max normalised per image. At that size and sigma the kernel is nearly flat
    and negative, so the negated filter is a blur with positive weights.

    Gradients are taken with `training=False`: exact, Gradient Mask layers inactive.

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
    _check_single_input_output(model)
    images, labels = checks.labelled_images((images, labels), model)
    batch_size = checks.integer("batch_size", batch_size)
    compute = _lateral_inhibition(model, relu_layers(model))
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
        if _output_rank(layer) == 4 and (
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

    size = LATERAL_INHIBITION_KERNEL_SIZE
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    kernel = ndimage.gaussian_laplace(impulse, sigma=LATERAL_INHIBITION_SIGMA)
    kernel.setflags(write=False)
    return kernel


def lateral_inhibition_kernel():
    """Their kernel, float64 `[5, 5]`: `scipy.ndimage.gaussian_laplace` of a centred
    5x5 impulse with sigma 11 (SciPy's defaults: `reflect` mode within the 5x5
    array, truncation at 4 sigma), not shifted. Computed once with SciPy."""
    return _kernel().copy()


def _lateral_inhibition(model, layer_names):
    """`compute(images, labels)`: one batch of lateral-inhibition maps, [0, 1]."""
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


def _maps(method, compute, images, labels, batch_size):
    """`compute`'s maps of all images, batch by batch, each scaled to sum 1."""
    batches = []
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        maps = compute(images[batch], labels[batch], start)
        batches.append(_checked(method, maps, images[batch]))
    return _to_distribution(np.concatenate(batches))


def _checked(method, maps, images):
    """A batch of maps of the images' shape, with no value below zero."""
    maps = np.asarray(maps, np.float32)
    if maps.shape != images.shape[:3]:
        raise ValueError(
            f"tf-keras-vis returned {method} maps of shape {maps.shape} for images of "
            f"shape {images.shape}; expected {images.shape[:3]}."
        )
    # CAMs are ReLU'd and then upsampled linearly, which can leave -0.0 or rounding
    # noise just below zero; gradient maps are absolute values already.
    return np.maximum(maps, 0.0)


def _to_distribution(maps):
    """Scales each map to sum 1; all-zero maps stay zero, non-finite ones become NaN."""
    totals = maps.sum(axis=(1, 2), dtype=np.float64)
    finite = np.isfinite(totals)
    scale = np.where(finite & (totals > 0), totals, 1.0)
    maps = (maps / scale[:, None, None]).astype(np.float32)
    maps[~finite] = np.nan
    return maps


def _output_rank(layer):
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # A layer used more than once.
        return None


def find_penultimate_layer(model):
    """Names the layer whose feature maps Grad-CAM++ and Score-CAM weigh.

    It is the last layer with a 4-D output `[N, H, W, C]` that is not a pooling
    layer: in the reference architectures, the last mask point of the convolutional
    trunk (`mask2` in the cnn), whose output is that of the last block's ReLU. A
    pooling layer is skipped because it only coarsens the map before it.
    (tf-keras-vis's own search only recognizes convolution layers, and would take
    the output of the last convolution before its ReLU.)

    Args:
      model: A Keras 3 functional model.

    Returns:
      The layer's name.

    Raises:
      ValueError: If no layer has a 4-D output.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, (keras.layers.InputLayer, *_POOLING_LAYERS)):
            continue
        if _output_rank(layer) == 4:
            return layer.name
    raise ValueError(
        f"Model {model.name!r} has no layer with a 4-D output [N, H, W, C], which "
        "Grad-CAM++ and Score-CAM need; use the `saliency` or `smoothgrad` methods, "
        "or name the layer with `penultimate_layer`."
    )


def _resolve_penultimate_layer(model, penultimate_layer, methods):
    """The CAM methods' layer (None when no CAM method runs), checked."""
    if not any(method in CAM_METHODS for method in methods):
        return None
    if penultimate_layer is None:
        return find_penultimate_layer(model)
    names = [layer.name for layer in model.layers]
    if penultimate_layer not in names:
        raise invalid(
            "penultimate_layer",
            f"the name of a layer of model {model.name!r} ({', '.join(names)})",
            penultimate_layer,
        )
    rank = _output_rank(model.get_layer(penultimate_layer))
    if rank != 4:
        raise invalid(
            "penultimate_layer",
            f"a layer with a 4-D output [N, H, W, C] (its output has rank {rank})",
            penultimate_layer,
        )
    return penultimate_layer


def object_pixels(images):
    """Object pixels, `[N, H, W]`: any channel > 0 (MNIST-like backgrounds are 0)."""
    images = np.asarray(images)
    if images.ndim == 3:
        return images > 0
    return np.any(images > 0, axis=-1)


def object_share(images):
    """The share of object pixels (> 0 in any channel) of each image.

    Its mean over the images is the chance level of the foreground focus: the focus
    of a map spread evenly over the image.

    Args:
      images: `[N, H, W, C]` (or `[N, H, W]`) in [0, 1].

    Returns:
      A float64 array `[N]`.
    """
    return object_pixels(images).mean(axis=(1, 2), dtype=np.float64)


def foreground_focus(maps, images):
    """The share of each saliency map's mass on object pixels (METHOD.md section 5).

    Args:
      maps: Non-negative saliency maps `[N, H, W]` (any scale).
      images: The images `[N, H, W, C]` (or `[N, H, W]`) the maps explain.

    Returns:
      A float64 array `[N]` in [0, 1]; NaN for a map that is all zero (the score
      does not depend on the image there, so the share is undefined) or not finite.

    Raises:
      ValueError: If the shapes do not match or a map has a negative value.
    """
    maps = np.asarray(maps, np.float64)
    images = np.asarray(images)
    if maps.ndim != 3 or images.shape[:3] != maps.shape:
        raise invalid(
            "maps",
            f"an array [N, H, W] matching the images {images.shape}",
            f"array of shape {maps.shape}",
        )
    if np.any(maps < 0):
        raise invalid("maps", "non-negative values", f"minimum {np.nanmin(maps)}")
    totals = maps.sum(axis=(1, 2))
    on_object = (maps * object_pixels(images)).sum(axis=(1, 2))
    valid = np.isfinite(totals) & (totals > 0)
    focus = np.full(len(maps), np.nan)
    focus[valid] = on_object[valid] / totals[valid]
    return focus


def save_maps(path, images, labels, maps):
    """Writes images, labels and maps to an `.npz` (atomically), the comparison's input.

    The file holds `images`, `labels` and one `[N, H, W]` array per method, which
    `eval.figures.plot_saliency_comparison` draws beside other runs'.

    Args:
      path: The `.npz` to write.
      images: `[N, H, W, C]` in [0, 1].
      labels: `[N]` class labels.
      maps: `{method: maps [N, H, W]}`, as `saliency_maps` returns.
    """
    arrays = {"images": np.asarray(images, np.float32), "labels": np.asarray(labels)}
    for method, method_maps in maps.items():
        if method not in METHODS:
            raise invalid("maps", f"method names from {', '.join(METHODS)}", method)
        arrays[method] = np.asarray(method_maps, np.float32)
    runs.atomic_write(path, lambda file: np.savez(file, **arrays), binary=True)
