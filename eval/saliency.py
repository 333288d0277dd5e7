"""Saliency maps and their foreground focus (METHOD.md section 5, claim 4).

For each image, a map of where the model's evidence for the true class lies, by
vanilla saliency, SmoothGrad, Grad-CAM++ and (on request) Score-CAM, all from
tf-keras-vis (`eval.vis_compat`), and the lateral-inhibition saliency of the
authors' probable public code (`eval.lateral_inhibition`, METHOD.md section 5.4),
each scaled to sum 1; and each map's foreground focus, the share of its mass on the
object, beside its chance level (`eval.focus`).

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

import keras
import numpy as np

from eval import checks, focus, lateral_inhibition, vis_compat
from eval.names import SALIENCY_METHODS as METHODS
from gradmask_tf.errors import invalid
from gradmask_tf.versions import library_versions

# Score-CAM is left out for its cost (one forward pass per channel). The
# lateral-inhibition saliency is in: it is the method the paper's figures most likely
# used, and costs one gradient pass per batch.
DEFAULT_METHODS = ("saliency", "smoothgrad", "gradcam++", "lateral_inhibition")
CAM_METHODS = ("gradcam++", "scorecam")

_POOLING_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def evaluate_saliency(
    model, data, *, methods=DEFAULT_METHODS, smoothgrad_samples=20, smoothgrad_noise=0.2,
    penultimate_layer=None, num_images=None, batch_size=64, seed=0,
):
    """How much of the model's saliency falls on the object, and the maps.

    For each method, the foreground focus of every image's map of the true class
    (`eval.focus.foreground_focus`), and its mean and standard deviation over the
    images, beside the chance level. A map that is all zero (the score does not
    depend on the image) has no focus: it is left out of the mean and counted in
    `num_excluded`.

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
    relus = lateral_inhibition.relu_layers(model) if "lateral_inhibition" in methods else None
    maps = saliency_maps(
        model, images, labels, methods, smoothgrad_samples=smoothgrad_samples,
        smoothgrad_noise=smoothgrad_noise, penultimate_layer=layer, batch_size=batch_size,
        seed=seed,
    )
    smoothgrad = "smoothgrad" in methods
    result = {
        **focus.summary(maps, images),
        "chance": float(focus.object_share(images).mean()),
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
      public code (`eval.lateral_inhibition`; here scaled to sum 1 like the others
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
    checks.single_input_output(model)
    images, labels = checks.labelled_images((images, labels), model)
    batch_size = checks.integer("batch_size", batch_size)
    if "smoothgrad" in methods:
        smoothgrad_samples = checks.integer("smoothgrad_samples", smoothgrad_samples)
        smoothgrad_noise = checks.positive_float("smoothgrad_noise", smoothgrad_noise,
                                                 allow_zero=True)
    layer = _resolve_penultimate_layer(model, penultimate_layer, methods)
    lateral = lateral_inhibition.batch_maps(model) if "lateral_inhibition" in methods else None
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
        if checks.output_rank(layer) == 4:
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
    rank = checks.output_rank(model.get_layer(penultimate_layer))
    if rank != 4:
        raise invalid(
            "penultimate_layer",
            f"a layer with a 4-D output [N, H, W, C] (its output has rank {rank})",
            penultimate_layer,
        )
    return penultimate_layer
