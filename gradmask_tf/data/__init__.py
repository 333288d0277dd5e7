"""Image classification data as `tf.data` pipelines of pixels in [0, 1].

`load` returns `(image, label)` pairs: float32 images `[H, W, C]` in [0, 1] and int32
labels. Datasets are named as in tensorflow-datasets (TFDS). One module per job:

- `idx`: the IDX file reader (LeCun's MNIST layout);
- `sources`: where a dataset is read from (IDX files, TFDS, Debian's Fashion-MNIST),
  `info` and `split_labels`;
- `pipeline`: the seeded `tf.data` pipeline, `load` and `as_numpy`;
- `regimes`: the seeded data steps (subset, validation hold-out, label noise) and
  `noise_metrics`.
"""

from gradmask_tf.data.pipeline import as_numpy, load
from gradmask_tf.data.regimes import Regime, noise_metrics, regime
from gradmask_tf.data.sources import (
    DEBIAN_FASHION_MNIST_DIR,
    DatasetInfo,
    DatasetUnavailableError,
    info,
    split_labels,
)

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetInfo",
    "DatasetUnavailableError",
    "Regime",
    "as_numpy",
    "info",
    "load",
    "noise_metrics",
    "regime",
    "split_labels",
]
