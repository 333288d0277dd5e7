"""The saliency figures: images beside their maps, for one run or several compared.

Each heatmap carries the object's outline and its foreground focus (`eval.focus`),
computed here from the maps, so saved maps draw without the saliency evaluator.
"""

import textwrap

import numpy as np

from eval.figures.look import new_figure, styled
from eval.focus import foreground_focus, object_pixels, object_share
from eval.names import SALIENCY_METHODS
from gradmask_tf.errors import invalid

_COLORMAP = "inferno"
_OUTLINE = "#4dd2ff"


@styled
def plot_saliency(images, maps_by_label, *, title=None, max_images=8, row_labels=None):
    """Saliency maps side by side: one row per image, one column per panel.

    Each heatmap is scaled to its own maximum, with the object's outline (pixels > 0)
    over it and the image's foreground focus in its corner. Column titles give the
    panel's mean focus over all the images passed (not only those drawn); the
    caption, its chance level.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      maps_by_label: `{label: maps}` or, to compare runs on the same images,
        `{run: {method: maps}}`; each `maps` a non-negative array `[N, H, W]`.
        Panels follow dict order.
      title: Defaults to None (no title).
      max_images: Rows to draw, the first images. Defaults to 8.
      row_labels: A label per image, left of each row. Defaults to None.

    Returns:
      The `Figure`.

    Raises:
      ValueError: If the maps do not match the images or an argument is invalid.
    """
    images = np.asarray(images)
    panels = _panels(maps_by_label, images.shape[:3])
    if not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise invalid("max_images", "an integer >= 1", max_images)
    if row_labels is not None and len(row_labels) != len(images):
        raise invalid("row_labels", f"{len(images)} labels, one per image", row_labels)
    focus = [foreground_focus(maps, images) for _, maps in panels]
    num_rows = min(int(max_images), len(images))
    figure = new_figure(1.3 * (1 + len(panels)) + 0.4, 1.3 * num_rows + 1.6)
    axes = figure.subplots(num_rows, 1 + len(panels), squeeze=False)
    objects = object_pixels(images)
    for row in range(num_rows):
        _draw_image(axes[row, 0], images[row])
        if row_labels is not None:
            axes[row, 0].set_ylabel(str(row_labels[row]), fontsize=8)
        for column, (_, maps) in enumerate(panels, start=1):
            heatmap = _draw_heatmap(
                axes[row, column], maps[row], objects[row], focus[column - 1][row]
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].set_title("image", fontsize=8)
    for column, ((heading, _), values) in enumerate(zip(panels, focus), start=1):
        mean = np.nanmean(values) if np.isfinite(values).any() else np.nan
        axes[0, column].set_title(f"{heading}\nfocus {mean:.2f}", fontsize=8)
    if title:
        figure.suptitle(title)
    colorbar = figure.colorbar(heatmap, ax=axes[-1, 1:].tolist(), orientation="horizontal",
                               fraction=0.5, aspect=40, shrink=0.8)
    colorbar.set_label("saliency / map maximum", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    caption = (
        "Focus: share of the map on object pixels (outlined), per image and mean over "
        f"{len(images)} images; chance (object share) {object_share(images).mean():.2f}."
    )
    figure.supxlabel(textwrap.fill(caption, int(figure.get_figwidth() * 15)), fontsize=7)
    return figure


def _panels(maps_by_label, shape):
    """`[(heading, maps)]` from `{label: maps}` or `{run: {method: maps}}`."""
    if not maps_by_label:
        raise invalid("maps_by_label", "a non-empty dict", maps_by_label)
    nested = [isinstance(value, dict) for value in maps_by_label.values()]
    if any(nested) and not all(nested):
        raise invalid("maps_by_label", "either {label: maps} or {run: {method: maps}}, not a mix",
                      list(maps_by_label))
    if all(nested):
        panels = [(f"{run}\n{method}", maps) for run, by_method in maps_by_label.items()
                  for method, maps in by_method.items()]
    else:
        panels = [(str(label).replace(" / ", "\n"), maps) for label, maps in maps_by_label.items()]
    for heading, maps in panels:
        if np.shape(maps) != shape:
            raise invalid("maps_by_label", f"maps of shape {shape} for the images",
                          f"{heading}: array of shape {np.shape(maps)}")
    return [(heading, np.asarray(maps)) for heading, maps in panels]


def _draw_image(ax, image):
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(np.clip(image, 0.0, 1.0))


def _draw_heatmap(ax, saliency, objects, focus):
    """The map scaled to its maximum, the object's outline and the focus value."""
    saliency = np.asarray(saliency, np.float64)
    peak = np.nanmax(saliency) if np.isfinite(saliency).any() else 0.0
    heatmap = ax.imshow(saliency / peak if peak > 0 else np.zeros_like(saliency),
                        cmap=_COLORMAP, vmin=0.0, vmax=1.0)
    if objects.any() and not objects.all():
        # The contour of an 8x upsampled mask follows the pixels' edges.
        height, width = objects.shape
        ax.contour(np.kron(objects.astype(np.float32), np.ones((8, 8))), levels=[0.5],
                   origin="upper", extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                   colors=_OUTLINE, linewidths=0.5, alpha=0.9)
    ax.text(0.97, 0.03, "n/a" if np.isnan(focus) else f"{focus:.2f}", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=7, color="white",
            bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.5, lw=0))
    return heatmap


def plot_saliency_comparison(saved_by_run, *, title=None, max_images=8):
    """Several runs' saved maps of the same images side by side (`plot_saliency`).

    Args:
      saved_by_run: `{run label: saved}`, each `saved` a mapping with `images`,
        `labels` and one `[N, H, W]` array per method: a `saliency_maps.npz` read
        with `np.load` (see `eval.saliency_file.save_maps`). Runs must share their first
        images; the figure uses the images all runs have.
      title: Defaults to None.
      max_images: Rows to draw. Defaults to 8.

    Returns:
      The `Figure`.

    Raises:
      ValueError: If the runs saw different images or hold no maps.
    """
    if not saved_by_run:
        raise invalid("saved_by_run", "a non-empty dict {run label: saved maps}", {})
    runs = {label: dict(saved) for label, saved in saved_by_run.items()}
    for label, saved in runs.items():
        if "images" not in saved or not any(method in saved for method in SALIENCY_METHODS):
            raise invalid("saved_by_run", "images and the maps of at least one method per run",
                          f"{label}: {', '.join(saved) or 'nothing'}")
    num_images = min(len(saved["images"]) for saved in runs.values())
    (first_label, first), *_ = runs.items()
    images = np.asarray(first["images"][:num_images])
    for label, saved in runs.items():
        if not np.array_equal(np.asarray(saved["images"][:num_images]), images):
            raise ValueError(
                f"Runs {first_label!r} and {label!r} have maps of different images; compare "
                "runs evaluated on the same test examples."
            )
    maps = {
        label: {
            method: np.asarray(saved[method][:num_images])
            for method in SALIENCY_METHODS if method in saved
        }
        for label, saved in runs.items()
    }
    labels = first.get("labels")
    row_labels = None if labels is None else [f"label {int(v)}" for v in labels[:num_images]]
    return plot_saliency(images, maps, title=title, max_images=max_images, row_labels=row_labels)
