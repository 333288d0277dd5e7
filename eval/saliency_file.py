"""The saliency maps file, `RUN/eval/saliency_maps.npz`: the caller's writer.

`python -m eval` writes it beside `saliency.json`; `eval.compare` reads it with
`np.load` and draws several runs' maps of the same images side by side
(`eval.figures.plot_saliency_comparison`).
"""

import numpy as np

from eval.names import SALIENCY_METHODS
from gradmask_tf.errors import invalid
from gradmask_tf.files import atomic_write

FILE_NAME = "saliency_maps.npz"


def save_maps(path, images, labels, maps):
    """Writes images, labels and maps to an `.npz` (atomically).

    The file holds `images` (float32), `labels` and one float32 `[N, H, W]` array per
    method.

    Args:
      path: The `.npz` to write.
      images: `[N, H, W, C]` in [0, 1].
      labels: `[N]` class labels.
      maps: `{method: maps [N, H, W]}`, as `eval.saliency.saliency_maps` returns.

    Raises:
      ValueError: If a key of `maps` is not a saliency method.
    """
    arrays = {"images": np.asarray(images, np.float32), "labels": np.asarray(labels)}
    for method, method_maps in maps.items():
        if method not in SALIENCY_METHODS:
            raise invalid("maps", f"method names from {', '.join(SALIENCY_METHODS)}", method)
        arrays[method] = np.asarray(method_maps, np.float32)
    atomic_write(path, lambda file: np.savez(file, **arrays), binary=True)
