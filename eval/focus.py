"""Foreground focus: the share of a saliency map's mass on the object (METHOD.md §5).

Object pixels are those above 0 in any channel: on MNIST and Fashion-MNIST the
background is exactly 0. The chance level is the mean share of object pixels, the
focus of a map spread evenly over the image, so a map that ignores the object scores
near it. The measure is only meaningful where the background is exactly 0; on natural
images nearly every pixel counts as object.

NumPy only: the figures draw it from saved maps without loading an evaluator.
"""

import numpy as np

from gradmask_tf.errors import invalid


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
    """The share of each saliency map's mass on object pixels.

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


def summary(maps, images):
    """Each method's mean and std of the focus over the images, and the maps left out.

    Args:
      maps: `{method: maps [N, H, W]}`.
      images: The images `[N, H, W, C]` the maps explain.

    Returns:
      `{"foreground_focus": {method: mean}, "foreground_focus_std": {method: std},
      "num_excluded": {method: count}}`: the mean and std over the maps with a focus
      (None where none has one), and the count of those without.
    """
    focus = {method: foreground_focus(method_maps, images) for method, method_maps in maps.items()}
    valid = {method: values[np.isfinite(values)] for method, values in focus.items()}
    return {
        "foreground_focus": {m: float(v.mean()) if v.size else None for m, v in valid.items()},
        "foreground_focus_std": {m: float(v.std()) if v.size else None for m, v in valid.items()},
        "num_excluded": {m: int(len(focus[m]) - v.size) for m, v in valid.items()},
    }
