"""Saliency maps and their foreground focus (METHOD.md section 5, claim 4).

`evaluate_saliency(model, (images, labels))` computes, for each image, a map of
where the model's evidence for the true class lies, by vanilla saliency, SmoothGrad,
Grad-CAM++ and (on request) Score-CAM, and measures the *foreground focus*: the share
of each map's mass on object pixels (pixels > 0; on MNIST and Fashion-MNIST the
background is exactly 0). Its chance level is the mean share of object pixels: a
map that ignores the object scores near it. The measure is only meaningful where the
background is exactly 0; on natural images nearly every pixel counts as object.

The maps come from tf-keras-vis, and every quirk of using it with Keras 3 lives in
this module:

- tf-keras-vis resolves `tf.keras` at call time (`tf.keras.Model(...)` builds the
  Grad-CAM model; `find_layer` and `is_mixed_precision` test `isinstance(...,
  tf.keras.Model)`). TensorFlow binds `tf.keras` once per process, at its first use,
  to Keras 3 or, where `TF_USE_LEGACY_KERAS=1` is set by then (TF-MOT sets it when
  imported), to `tf_keras`, which cannot wrap Keras 3 tensors. Importing tf-keras-vis
  here already binds it (its annotations read `tf.keras`), so a variable set later
  changes nothing; and where it was bound to `tf_keras` before this module was
  imported, `_tf_keras_vis_context` shows tf-keras-vis a `tensorflow` whose `keras`
  is Keras 3, for the duration of our calls only. (Its `K`, bound at import to
  `tensorflow.keras.backend`, is then tf_keras's backend; the functions it uses,
  `abs`, `relu`, `sum`, `softmax`, `batch_dot`, `epsilon`, work on any tensor.)
- Its Grad-CAM layer search only recognizes convolution classes, and would pick the
  pre-activation output of our last convolution. `find_penultimate_layer` picks the
  last 4-D feature map that is not a pooling (the last mask point of the trunk in our
  architectures), and it is passed by name with the search turned off.
- `CategoricalScore` wraps a NumPy array as one index; labels go in as a list of ints.
- Grad-CAM++ weighs with `exp(score)`, NaN once a logit passes 88 (float32 overflow);
  it gets the logit shifted to 0 by its own stopped value (`_shifted`).
- Maps are min-max scaled by default; we ask for raw maps (a shift of the minimum
  would change the focus) and scale each map to sum 1.
- SmoothGrad draws its noise from NumPy's global generator; we seed it per batch and
  restore its state afterwards. The `TF_KERAS_VIS_MAX_STEPS` variable silently caps
  the number of samples; the settings record the number actually used.
- Keras 3 warns that a single-input model received a list (tf-keras-vis always passes
  one), and Score-CAM's `predict` prints a progress bar; both are silenced.

Gradients are exact: every tf-keras-vis call gets `training=False`, so Gradient Mask
layers are identities with exact gradients and dropout is off (Score-CAM only runs
`predict`, which is inference too). The model outputs logits, so no
`model_modifier` (tf-keras-vis's softmax-to-linear swap) is needed, and the model is
never cloned; Score-CAM applies the softmax itself.

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

import contextlib
import textwrap
import types
import warnings

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval import figures
from gradmask_tf import runs
from gradmask_tf.errors import invalid

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

METHODS = ("saliency", "smoothgrad", "gradcam++", "scorecam")
DEFAULT_METHODS = ("saliency", "smoothgrad", "gradcam++")
CAM_METHODS = ("gradcam++", "scorecam")

_POOLING_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)

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
def _tf_keras_vis_context():
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


def _validate_methods(methods):
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise invalid(
            "methods",
            f"a non-empty sequence of names from {', '.join(METHODS)}",
            methods,
        )
    if len(set(methods)) != len(methods):
        raise invalid("methods", "each method at most once", methods)
    return methods


def _validate_images(images, name="images"):
    images = np.asarray(images)
    if images.ndim != 4 or 0 in images.shape:
        raise invalid(
            name, "a non-empty array [N, H, W, C]", f"array of shape {images.shape}"
        )
    return images


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


def _resolve_penultimate_layer(model, penultimate_layer):
    if penultimate_layer is None:
        return find_penultimate_layer(model)
    if not isinstance(penultimate_layer, str):
        raise invalid("penultimate_layer", "a layer name or None", penultimate_layer)
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


def _true_label_logit(labels):
    # A NumPy array would be taken as one index: tf-keras-vis listifies the argument.
    return CategoricalScore([int(label) for label in labels])


def _shifted(score):
    """`score - stop_gradient(score)`: the same gradient, and the value 0.

    Grad-CAM++ weighs with `exp(score)`, which overflows float32 above a logit of 88
    and turns the map into NaN. With the value shifted to 0 every map is divided by
    `exp(logit)`, a per-image factor that the normalization to sum 1 removes.
    """

    def shifted_score(output):
        value = score(output)
        return value - tf.stop_gradient(value)

    return shifted_score


def _to_distribution(maps):
    """Scales each map to sum 1; all-zero maps stay zero, non-finite ones become NaN."""
    maps = np.asarray(maps, np.float32)
    totals = maps.sum(axis=(1, 2), dtype=np.float64)
    finite = np.isfinite(totals)
    scale = np.where(finite & (totals > 0), totals, 1.0)
    maps = (maps / scale[:, None, None]).astype(np.float32)
    maps[~finite] = np.nan
    return maps


def _batch_maps(method, visualizers, images, labels, options):
    score = _true_label_logit(labels)
    if method == "saliency":
        maps = visualizers[method](score, images, training=False, normalize_map=False)
    elif method == "smoothgrad":
        maps = visualizers[method](
            score,
            images,
            smooth_samples=options["smoothgrad_samples"],
            smooth_noise=options["smoothgrad_noise"],
            training=False,
            normalize_map=False,
        )
    elif method == "gradcam++":
        maps = visualizers[method](
            _shifted(score),
            images,
            penultimate_layer=options["penultimate_layer"],
            seek_penultimate_conv_layer=False,
            training=False,
            normalize_cam=False,
        )
    else:
        maps = visualizers[method](
            score,
            images,
            penultimate_layer=options["penultimate_layer"],
            seek_penultimate_conv_layer=False,
            batch_size=options["batch_size"],
            training=False,
            normalize_cam=False,
        )
    maps = np.asarray(maps, np.float32)
    if maps.shape != images.shape[:3]:
        raise ValueError(
            f"tf-keras-vis returned {method} maps of shape {maps.shape} for images of "
            f"shape {images.shape}; expected {images.shape[:3]}."
        )
    # CAMs are ReLU'd and then upsampled linearly, which can leave -0.0 or rounding
    # noise just below zero; gradient maps are absolute values already.
    return np.maximum(maps, 0.0)


def saliency_maps(
    model,
    images,
    labels,
    methods=DEFAULT_METHODS,
    *,
    smoothgrad_samples=20,
    smoothgrad_noise=0.2,
    penultimate_layer=None,
    batch_size=64,
    seed=0,
    progress=False,
):
    """Computes saliency maps of the true class, each scaled to sum 1.

    The score is the true label's logit. Maps are taken with `training=False`, so
    Gradient Mask layers are inactive and gradients exact.

    - `saliency`: `max_c |d logit / d x|` over the channels (Simonyan et al.).
    - `smoothgrad`: the mean of that map over `smoothgrad_samples` copies of the
      image with Gaussian noise of standard deviation `smoothgrad_noise * (max -
      min)` of the image (Smilkov et al.; tf-keras-vis averages absolute gradients).
    - `gradcam++`: Grad-CAM++ on the `penultimate_layer` feature maps, upsampled
      linearly to the image size (Chattopadhay et al.).
    - `scorecam`: Score-CAM on the same feature maps, weighing each by the softmax
      probability of the true class on the image masked by it (Wang et al.);
      one forward pass per channel, so slower.

    Args:
      model: A Keras 3 model with one input and one output of logits.
      images: `[N, H, W, C]` floats in [0, 1].
      labels: `[N]` integer class labels.
      methods: Names from `METHODS`. Defaults to `DEFAULT_METHODS`
        (saliency, smoothgrad, gradcam++).
      smoothgrad_samples: Noisy copies per image for SmoothGrad. Defaults to 20.
      smoothgrad_noise: SmoothGrad's noise level, relative to each image's value
        range. Defaults to 0.2.
      penultimate_layer: Name of the layer whose feature maps the CAM methods weigh.
        Defaults to None (`find_penultimate_layer`).
      batch_size: Images per tf-keras-vis call. Defaults to 64.
      seed: Seed of SmoothGrad's noise (per batch, from the seed and the index of the
        batch's first image); NumPy's global generator is restored afterwards.
        Defaults to 0.
      progress: Show a progress bar per method. Defaults to False.

    Returns:
      `{method: maps}`, each `maps` a float32 array `[N, H, W]`, non-negative, each
      map summing to 1, or all zero where the score does not depend on the image, or
      all NaN where the method produced a non-finite value.

    Raises:
      ValueError: If a method is unknown, an argument is invalid, or the model does
        not have one input and one output.
    """
    methods = _validate_methods(methods)
    images = _validate_images(images)
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise invalid(
            "labels",
            f"an integer array of shape {images.shape[:1]} (one class per image)",
            f"{labels.dtype} array of shape {labels.shape}",
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; saliency needs one input (images) and one "
            "output (logits)."
        )
    num_classes = model.outputs[0].shape[-1]
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise invalid(
            "labels",
            f"class indices in [0, {num_classes})",
            f"values in [{labels.min()}, {labels.max()}]",
        )
    if "smoothgrad" in methods and (
        not isinstance(smoothgrad_samples, (int, np.integer)) or smoothgrad_samples < 1
    ):
        raise invalid("smoothgrad_samples", "an integer >= 1", smoothgrad_samples)
    if "smoothgrad" in methods and not smoothgrad_noise >= 0:
        raise invalid("smoothgrad_noise", "a float >= 0", smoothgrad_noise)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise invalid("batch_size", "an integer >= 1", batch_size)
    options = {
        "smoothgrad_samples": int(smoothgrad_samples),
        "smoothgrad_noise": float(smoothgrad_noise),
        "batch_size": int(batch_size),
        "penultimate_layer": (
            _resolve_penultimate_layer(model, penultimate_layer)
            if any(method in CAM_METHODS for method in methods)
            else None
        ),
    }
    # No model_modifier, so tf-keras-vis neither clones nor changes the model.
    classes = {
        "saliency": Saliency,
        "smoothgrad": Saliency,
        "gradcam++": GradcamPlusPlus,
        "scorecam": Scorecam,
    }
    visualizers = {method: classes[method](model, clone=False) for method in methods}
    images = images.astype(np.float32, copy=False)
    num_images = len(images)
    maps = {}
    for method in methods:
        bar = None
        if progress:
            print(f"Saliency: {method} on {num_images} images")
            bar = keras.utils.Progbar(num_images, unit_name="image")
        batches = []
        for start in range(0, num_images, batch_size):
            stop = min(start + batch_size, num_images)
            with _tf_keras_vis_context(), _numpy_global_seed([seed, start]):
                batches.append(
                    _batch_maps(
                        method, visualizers, images[start:stop], labels[start:stop],
                        options,
                    )
                )
            if bar is not None:
                bar.update(stop)
        maps[method] = _to_distribution(np.concatenate(batches))
    return maps


def _object_pixels(images):
    """Object pixels: any channel > 0 (the background of MNIST-like data is 0)."""
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
    return _object_pixels(images).mean(axis=(1, 2), dtype=np.float64)


def foreground_focus(maps, images):
    """The share of each saliency map's mass on object pixels (METHOD.md section 5).

    Object pixels are those > 0 in any channel; on MNIST and Fashion-MNIST the
    background is exactly 0.

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
    on_object = (maps * _object_pixels(images)).sum(axis=(1, 2))
    valid = np.isfinite(totals) & (totals > 0)
    focus = np.full(len(maps), np.nan)
    focus[valid] = on_object[valid] / totals[valid]
    return focus


def _panels(maps_by_label):
    """`[(run or None, method, maps)]` from a flat or a nested dict."""
    if not maps_by_label:
        raise invalid("maps_by_label", "a non-empty dict", maps_by_label)
    nested = [isinstance(value, dict) for value in maps_by_label.values()]
    if all(nested):
        return [
            (str(run), str(method), maps)
            for run, by_method in maps_by_label.items()
            for method, maps in by_method.items()
        ]
    if any(nested):
        raise invalid(
            "maps_by_label",
            "either {label: maps} or {run: {method: maps}}, not a mix",
            list(maps_by_label),
        )
    panels = []
    for label, maps in maps_by_label.items():
        run, _, method = str(label).rpartition(" / ")
        panels.append((run or None, method, maps))
    return panels


def _draw_outline(ax, pixels, upsampling=8):
    """Outlines the `True` pixels along their edges (contour of an upsampled mask)."""
    height, width = pixels.shape
    mask = np.kron(pixels.astype(np.float32), np.ones((upsampling, upsampling)))
    ax.contour(
        mask,
        levels=[0.5],
        origin="upper",
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),
        colors="#4dd2ff",
        linewidths=0.5,
        alpha=0.9,
    )


def plot_saliency(
    images,
    maps_by_label,
    path,
    title=None,
    max_images=8,
    *,
    row_labels=None,
    colormap="inferno",
    dpi=150,
):
    """Draws saliency maps side by side and writes the figure as a PNG.

    One row per image: the image, then one heatmap per panel. Each heatmap is scaled
    to its own maximum, with the object's outline (pixels > 0) drawn over it and the
    image's foreground focus in its corner. Column titles give the panel's mean focus
    over all the images passed (not only those drawn); the caption, its chance level.

    To compare runs on the same images, pass `{run: {method: maps}}` (for example
    `{"baseline": saliency_maps(base, ...), "masked": saliency_maps(masked, ...)}`);
    a flat `{label: maps}` works too, with labels like `"masked / smoothgrad"`.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      maps_by_label: `{label: maps}` or `{run: {method: maps}}`, each `maps` a
        non-negative array `[N, H, W]` for these images. Panels follow dict order.
      path: The PNG to write (atomically: a temporary file, then a rename).
      title: The figure's title. Defaults to None.
      max_images: Rows to draw, the first images. Defaults to 8.
      row_labels: A label per image (class names, say), shown left of each row.
        Defaults to None.
      colormap: A Matplotlib colormap name. Defaults to `"inferno"`.
      dpi: Resolution. Defaults to 150.

    Raises:
      ValueError: If the maps do not match the images or an argument is invalid.
    """
    images = _validate_images(images)
    panels = _panels(maps_by_label)
    if not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise invalid("max_images", "an integer >= 1", max_images)
    if row_labels is not None and len(row_labels) != len(images):
        raise invalid("row_labels", f"{len(images)} labels, one per image", row_labels)
    focus = []
    for run, method, maps in panels:
        maps = np.asarray(maps)
        if maps.shape != images.shape[:3]:
            name = method if run is None else f"{run} / {method}"
            raise invalid(
                "maps_by_label",
                f"maps of shape {images.shape[:3]} for the images",
                f"{name}: array of shape {maps.shape}",
            )
        focus.append(foreground_focus(maps, images))

    num_rows = min(int(max_images), len(images))
    num_columns = 1 + len(panels)
    cell = 1.3
    figure = Figure(
        figsize=(cell * num_columns + 0.4, cell * num_rows + 1.6), layout="constrained"
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, num_columns, squeeze=False)
    objects = _object_pixels(images)
    heatmap = None
    for row in range(num_rows):
        image = images[row]
        ax = axes[row, 0]
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(np.clip(image, 0.0, 1.0))
        if row_labels is not None:
            ax.set_ylabel(str(row_labels[row]), fontsize=8)
        for column, (_, _, maps) in enumerate(panels, start=1):
            ax = axes[row, column]
            saliency = np.asarray(maps[row], np.float64)
            peak = np.nanmax(saliency) if np.isfinite(saliency).any() else 0.0
            heatmap = ax.imshow(
                saliency / peak if peak > 0 else np.zeros_like(saliency),
                cmap=colormap,
                vmin=0.0,
                vmax=1.0,
            )
            if objects[row].any() and not objects[row].all():
                _draw_outline(ax, objects[row])
            value = focus[column - 1][row]
            ax.text(
                0.97,
                0.03,
                "n/a" if np.isnan(value) else f"{value:.2f}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
                color="white",
                bbox=dict(
                    boxstyle="round,pad=0.15", facecolor="black", alpha=0.5, lw=0
                ),
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].set_title("image", fontsize=8)
    for column, (run, method, _) in enumerate(panels, start=1):
        values = focus[column - 1]
        mean = np.nanmean(values) if np.isfinite(values).any() else np.nan
        heading = method if run is None else f"{run}\n{method}"
        axes[0, column].set_title(f"{heading}\nfocus {mean:.2f}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    chance = object_share(images).mean()
    colorbar = figure.colorbar(
        heatmap,
        ax=axes[-1, 1:].tolist(),
        orientation="horizontal",
        fraction=0.5,
        aspect=40,
        shrink=0.8,
    )
    colorbar.set_label("saliency / map maximum", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    caption = (
        f"Focus: share of the map on object pixels (outlined), per image and mean over "
        f"{len(images)} images; chance (object share) {chance:.2f}."
    )
    width_in_characters = int(figure.get_figwidth() * 15)
    figure.supxlabel(textwrap.fill(caption, width_in_characters), fontsize=7)
    figures.save(figure, path, dpi=dpi)


def save_maps(path, images, labels, maps):
    """Writes images, labels and saliency maps to an `.npz`, for `plot_comparison`.

    Args:
      path: The `.npz` to write (atomically: a temporary file, then a rename).
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


def plot_comparison(maps_by_run, path, title=None, max_images=8):
    """Draws several runs' maps of the same images side by side (`plot_saliency`).

    Args:
      maps_by_run: `{run label: saved}`, each `saved` a mapping with `images`,
        `labels` and one `[N, H, W]` array per method: what `save_maps` writes
        (`evaluate_saliency(..., maps_path=...)`), read with `np.load`. Runs must
        share their first images (the first N test examples); the figure and its
        mean focus use the images all runs have.
      path: The PNG to write.
      title: The figure's title. Defaults to None.
      max_images: Rows to draw. Defaults to 8.

    Raises:
      ValueError: If the runs saw different images or hold no maps.
    """
    if not maps_by_run:
        raise invalid("maps_by_run", "a non-empty dict {run label: saved maps}", {})
    runs = {label: dict(saved) for label, saved in maps_by_run.items()}
    for label, saved in runs.items():
        if "images" not in saved or not any(method in saved for method in METHODS):
            raise invalid(
                "maps_by_run",
                f"images and maps of at least one method for each run ({label!r} has "
                f"{', '.join(saved) or 'nothing'})",
                label,
            )
    num_images = min(len(saved["images"]) for saved in runs.values())
    reference_label, reference = next(iter(runs.items()))
    images = np.asarray(reference["images"][:num_images])
    for label, saved in runs.items():
        if not np.array_equal(np.asarray(saved["images"][:num_images]), images):
            raise ValueError(
                f"Runs {reference_label!r} and {label!r} have maps of different "
                "images; compare runs evaluated on the same test examples."
            )
    labels = reference.get("labels")
    plot_saliency(
        images,
        {
            label: {
                method: np.asarray(saved[method][:num_images])
                for method in METHODS
                if method in saved
            }
            for label, saved in runs.items()
        },
        path,
        title=title,
        max_images=max_images,
        row_labels=(
            None
            if labels is None
            else [f"label {int(value)}" for value in labels[:num_images]]
        ),
    )


def evaluate_saliency(
    model,
    data,
    *,
    methods=DEFAULT_METHODS,
    smoothgrad_samples=20,
    smoothgrad_noise=0.2,
    penultimate_layer=None,
    num_images=None,
    batch_size=64,
    seed=0,
    progress=True,
    figure_path=None,
    maps_path=None,
    title=None,
):
    """Measures how much of the model's saliency falls on the object.

    For each method, the foreground focus of every image's map of the true class
    (`foreground_focus`), and its mean and standard deviation over the images, beside
    the chance level (the mean share of object pixels). A map that is all zero (the
    score does not depend on the image) has no focus: it is left out of the mean and
    counted in `num_excluded`.

    Args:
      model: A Keras 3 model with one input (images in [0, 1]) and one output of
        logits.
      data: `(images, labels)`: NumPy arrays `[N, H, W, C]` in [0, 1] and `[N]`,
        typically the first N test examples.
      methods: Names from `METHODS`: `"saliency"`, `"smoothgrad"`, `"gradcam++"`,
        `"scorecam"`. Defaults to `DEFAULT_METHODS` (all but Score-CAM).
      smoothgrad_samples: Noisy copies per image for SmoothGrad. Defaults to 20.
      smoothgrad_noise: SmoothGrad's noise level, relative to each image's value
        range. Defaults to 0.2.
      penultimate_layer: Name of the layer whose feature maps the CAM methods weigh.
        Defaults to None (`find_penultimate_layer`: the last 4-D feature map that is
        not a pooling).
      num_images: Use only the first this many images. Defaults to None (all).
      batch_size: Images per tf-keras-vis call. Defaults to 64.
      seed: Seed of SmoothGrad's noise. Defaults to 0.
      progress: Show a progress bar per method. Defaults to True.
      figure_path: Where to write a PNG of the first 8 images and their maps
        (`plot_saliency`). Defaults to None (no figure).
      maps_path: Where to write the images, labels and maps as an `.npz`
        (`save_maps`), which `plot_comparison` draws beside other runs'. Defaults
        to None (not written).
      title: The figure's title. Defaults to None.

    Returns:
      A JSON-serializable dict: `foreground_focus` and `foreground_focus_std`
      (`{method: float or None}`, None where every map was excluded),
      `num_excluded` (`{method: int}`), `chance`, `num_examples`, and `settings`
      (methods, SmoothGrad samples actually used and noise, penultimate layer, score,
      mask state, seed, batch size, library versions).

    Raises:
      ValueError: If a method is unknown or an argument is invalid.
    """
    methods = _validate_methods(methods)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise invalid("data", "a pair (images, labels) of NumPy arrays", type(data))
    images = _validate_images(data[0], "data[0] (images)")
    labels = np.asarray(data[1])
    if num_images is not None:
        if not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise invalid("num_images", "an integer >= 1 or None", num_images)
        images, labels = images[:num_images], labels[:num_images]
    in_unit_range = images.min() >= 0 and images.max() <= 1
    if not (np.issubdtype(images.dtype, np.floating) and in_unit_range):
        raise invalid(
            "data[0] (images)",
            "floats in [0, 1]",
            f"{images.dtype} values in [{images.min()}, {images.max()}]",
        )
    uses_cam = any(method in CAM_METHODS for method in methods)
    layer_name = (
        _resolve_penultimate_layer(model, penultimate_layer) if uses_cam else None
    )
    maps = saliency_maps(
        model,
        images,
        labels,
        methods,
        smoothgrad_samples=smoothgrad_samples,
        smoothgrad_noise=smoothgrad_noise,
        penultimate_layer=layer_name,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    focus, focus_std, num_excluded = {}, {}, {}
    for method in methods:
        values = foreground_focus(maps[method], images)
        valid = values[np.isfinite(values)]
        focus[method] = float(valid.mean()) if valid.size else None
        focus_std[method] = float(valid.std()) if valid.size else None
        num_excluded[method] = int(len(values) - valid.size)
    if maps_path is not None:
        save_maps(maps_path, images, labels, maps)
    if figure_path is not None:
        plot_saliency(
            images,
            maps,
            figure_path,
            title=title,
            row_labels=[f"label {int(label)}" for label in labels],
        )
    return {
        "foreground_focus": focus,
        "foreground_focus_std": focus_std,
        "num_excluded": num_excluded,
        "chance": float(object_share(images).mean()),
        "num_examples": int(len(images)),
        "settings": {
            "methods": list(methods),
            "smoothgrad_samples": (
                int(tf_keras_vis.utils.get_num_of_steps_allowed(smoothgrad_samples))
                if "smoothgrad" in methods
                else None
            ),
            "smoothgrad_noise": (
                float(smoothgrad_noise) if "smoothgrad" in methods else None
            ),
            "penultimate_layer": layer_name,
            "score": "true-label logit",
            "masks": "inactive (exact gradients)",
            "seed": int(seed),
            "batch_size": int(batch_size),
            "library_versions": {
                "tf_keras_vis": tf_keras_vis.__version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
        },
    }
