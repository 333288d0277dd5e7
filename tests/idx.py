"""A test fixture: arrays written as the IDX files of LeCun's MNIST layout.

`gradmask_tf.data.load("mnist" or "fashion_mnist", split, data_dir=directory)` reads
what `write_idx` writes, so tests get a tiny dataset without a download.
"""

import gzip
import os
import struct

import numpy as np

_FILE_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def write_idx(directory, images, labels, split, compress=True):
    """Writes uint8 `images` `[N, rows, columns(, 1)]` and `labels` `[N]` as one split.

    Returns the paths `(images_path, labels_path)`: `train-images-idx3-ubyte.gz`,
    `t10k-labels-idx1-ubyte.gz`, ... (without `.gz` where `compress` is False).
    """
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels, np.uint8)
    if images.ndim == 4:
        images = images[..., 0]
    count, rows, columns = images.shape
    prefix = _FILE_PREFIX[split]
    files = {
        f"{prefix}-images-idx3-ubyte": struct.pack(">4I", _IMAGES_MAGIC, count, rows, columns)
        + images.tobytes(),
        f"{prefix}-labels-idx1-ubyte": struct.pack(">2I", _LABELS_MAGIC, count)
        + labels.tobytes(),
    }
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, content in files.items():
        path = os.path.join(directory, name + (".gz" if compress else ""))
        with open(path, "wb") as file:
            # mtime=0: the same arrays give byte-identical files.
            file.write(gzip.compress(content, mtime=0) if compress else content)
        paths.append(path)
    return tuple(paths)
