"""Input checks shared by the evaluators: each returns the value it accepted, cleaned.

Every failure is `gradmask_tf.errors.invalid(name, expected, value)`, raised at the
entry of a public function, before any work starts.
"""

import math
import numbers

import numpy as np

from gradmask_tf.errors import invalid


def pair(data, name="data"):
    """`(images, labels)` from a 2-tuple or 2-list."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise invalid(name, "a pair (images, labels) of arrays", type(data).__name__)
    return data


def images(values, name="images"):
    """A non-empty float32 array `[N, H, W, C]` with values in [0, 1]."""
    values = np.asarray(values)
    if values.ndim != 4 or 0 in values.shape or not np.issubdtype(values.dtype, np.number):
        raise invalid(
            name,
            "a non-empty numeric array [N, H, W, C]",
            f"{values.dtype} array of shape {values.shape}",
        )
    low, high = float(values.min()), float(values.max())
    if not (low >= 0.0 and high <= 1.0):  # NaN fails too.
        raise invalid(
            name,
            "values in [0, 1] (divide by 255 if they are 8-bit pixels)",
            f"values in [{low:g}, {high:g}]",
        )
    return values.astype(np.float32, copy=False)


def labels(values, num_images, num_classes=None, name="labels"):
    """An int64 array `[num_images]` of class indices in `[0, num_classes)`."""
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise invalid(
            name,
            "an integer array [N] of class indices (not one-hot)",
            f"{values.dtype} array of shape {values.shape}",
        )
    if len(values) != num_images:
        raise invalid(
            name, "one label per image", f"{len(values)} labels for {num_images} images"
        )
    low, high = int(values.min()), int(values.max())
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise invalid(
            name,
            f"class indices in [0, {num_classes - 1}] for a model with {num_classes} logits",
            f"labels in [{low}, {high}]",
        )
    return values.astype(np.int64, copy=False)


def labelled_images(data, model=None):
    """`(images, labels)` checked by `pair`, `images` and `labels`.

    With a `model`, images must also fit its input shape where it declares one, and
    labels be indices of its logits (counted on one image, so any Keras model works).
    """
    image_values, label_values = pair(data)
    image_values = images(image_values)
    num_classes = None
    if model is not None:
        expected = getattr(model, "input_shape", None)
        if isinstance(expected, tuple) and not _fits(image_values.shape, expected):
            shape = ", ".join("?" if size is None else str(size) for size in expected[1:])
            raise invalid("images", f"an array of shape [N, {shape}], the model's input",
                          f"array of shape {image_values.shape}")
        num_classes = int(model(image_values[:1], training=False).shape[-1])
    return image_values, labels(label_values, len(image_values), num_classes)


def _fits(shape, expected):
    """Whether an array's shape fits a Keras shape whose sizes may be None."""
    return len(shape) == len(expected) and all(
        size is None or size == actual for size, actual in zip(expected[1:], shape[1:])
    )


def names(name, values, allowed):
    """A tuple of names from `allowed`, in order, each once; one string is one name."""
    if isinstance(values, str):
        values = (values,)
    values = tuple(dict.fromkeys(values))
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise invalid(name, f"one or more of {', '.join(allowed)}", unknown[0] if unknown else [])
    return values


def integer(name, value, minimum=1):
    """An int `>= minimum` (bools refused)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise invalid(name, f"an integer >= {minimum}", value)
    return int(value)


def positive_float(name, value, *, allow_zero=False):
    """A finite float `> 0` (or `>= 0` with `allow_zero`)."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise invalid(name, f"a finite number {'>=' if allow_zero else '>'} 0", value)
    return float(value)


def key(number):
    """The result key of a number (an eps, a sparsity): numbers with one key are one."""
    return format(number, "g")


def floats(name, values, *, low, high=math.inf, high_included=False):
    """Distinct finite floats in `[low, high)` (or `[low, high]`), in order; at least one.

    Numbers with the same `key` ("0.1" and 0.10) count once.
    """
    if isinstance(values, numbers.Real):
        values = (values,)
    values = tuple(values)
    if high == math.inf:
        interval = f"finite numbers >= {low:g}"
    else:
        interval = f"numbers in [{low:g}, {high:g}{']' if high_included else ')'}"
    for value in values:
        if (
            not isinstance(value, numbers.Real)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low <= value <= high
            or (value == high and not high_included)
        ):
            raise invalid(name, interval, value)
    if not values:
        raise invalid(name, f"a non-empty sequence of {interval}", [])
    return tuple({key(value): float(value) for value in values}.values())


def single_input_output(model):
    """The model, if it has one input (images) and one output (logits)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise invalid("model", "one input (images) and one output (logits)",
                      f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
    return model


def output_rank(layer):
    """The rank of a layer's output; None for a layer used more than once."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None
