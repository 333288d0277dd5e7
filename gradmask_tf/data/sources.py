"""Where a dataset is read from, and what it is, without a download while a copy exists.

Datasets are named as in tensorflow-datasets (TFDS). Sources, first one found wins:
1. for `mnist` and `fashion_mnist`, IDX files in `data_dir` (read directly);
2. a dataset already prepared by TFDS in `data_dir` (or TFDS's default directory);
3. for `fashion_mnist`, Debian's package `dataset-fashion-mnist`
   (`DEBIAN_FASHION_MNIST_DIR`), whose gzip files are recompressed so TFDS's checksums
   reject them; they are read directly;
4. a TFDS download, skipped when the environment variable `GRADMASK_OFFLINE` is set to a
   true value (1, true, yes).

This module is the one place that speaks to tensorflow-datasets.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from gradmask_tf.data import idx
from gradmask_tf.errors import invalid

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_OFFLINE_ENVIRONMENT_VARIABLE = "GRADMASK_OFFLINE"


class DatasetUnavailableError(ValueError):
    """No source of the requested dataset could be read or downloaded."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing it.

    Attributes:
        name: The dataset's name, as passed to `load`.
        image_shape: `(height, width, channels)`; an entry is None where the images of
            the dataset vary in that dimension.
        num_classes: Number of label values.
        num_train: Examples in the train split, or None where unknown without a
            download.
        num_test: Examples in the test split, or None where unknown (or absent).
    """

    name: str
    image_shape: tuple
    num_classes: int
    num_train: int | None
    num_test: int | None


def _offline():
    value = os.environ.get(_OFFLINE_ENVIRONMENT_VARIABLE, "")
    return value.strip().lower() in ("1", "true", "yes")


def validate_name(name):
    """Raises `InvalidArgumentError` unless `name` is a non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise invalid(
            "name", "a tensorflow-datasets name such as 'fashion_mnist'", name
        )


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    return tfds


def _how_to_get(name):
    ways = []
    if name in idx.DATASETS:
        ways.append(
            "pass data_dir with the four IDX files (train-images-idx3-ubyte.gz, ...)"
        )
    if name == "fashion_mnist":
        ways.append("`apt-get install dataset-fashion-mnist`")
    ways.append(f"run `tfds build {name}` with network access")
    return "; ".join(ways)


def _unavailable(name, tried):
    return DatasetUnavailableError(
        f"Dataset {name!r} is unavailable. Tried: {'; '.join(tried)}. "
        f"To get it: {_how_to_get(name)}."
    )


def _tfds_builder(tfds, name, data_dir):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as error:
        raise DatasetUnavailableError(
            f"Dataset {name!r} is unavailable: tensorflow-datasets has no dataset of "
            "that name (see https://www.tensorflow.org/datasets/catalog)."
        ) from error


def _tfds_directory(builder, data_dir):
    return data_dir if data_dir is not None else builder.data_dir_root


def _tfds_dataset(builder, split, download):
    if download:
        builder.download_and_prepare()
    # shuffle_files=False keeps the dataset's own order ("the first N test examples").
    return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)


def source_dataset(name, split, data_dir):
    """Reads the first available source: `(image uint8 [H, W, C], label)` pairs.

    Raises:
        DatasetUnavailableError: If no source could be read or downloaded; the message
            says what was tried and how to get the dataset.
        ValueError: If `split` is invalid for IDX files or an IDX file is corrupt.
    """
    tried = []
    if name in idx.DATASETS and data_dir is not None:
        if idx.directory_has(data_dir, split):
            return tf.data.Dataset.from_tensor_slices(idx.arrays(data_dir, split))
        tried.append(f"IDX files in {data_dir}")
    tfds = _import_tfds()
    builder = None
    if tfds is None:
        tried.append(
            "tensorflow-datasets (not installed: `pip install tensorflow-datasets`)"
        )
    else:
        builder = _tfds_builder(tfds, name, data_dir)
        try:
            return _tfds_dataset(builder, split, download=False)
        except AssertionError:  # How TFDS says "not prepared in this directory".
            tried.append(
                f"tensorflow-datasets copy in {_tfds_directory(builder, data_dir)} "
                "(not prepared)"
            )
    if name == "fashion_mnist":
        if idx.directory_has(DEBIAN_FASHION_MNIST_DIR, split):
            return tf.data.Dataset.from_tensor_slices(
                idx.arrays(DEBIAN_FASHION_MNIST_DIR, split)
            )
        tried.append(f"IDX files in {DEBIAN_FASHION_MNIST_DIR}")
    if builder is None:
        raise _unavailable(name, tried)
    if _offline():
        tried.append(
            "tensorflow-datasets download "
            f"(skipped: {_OFFLINE_ENVIRONMENT_VARIABLE} is set)"
        )
        raise _unavailable(name, tried)
    try:
        return _tfds_dataset(builder, split, download=True)
    except Exception as error:  # Network failures come in many types; all mean "no".
        tried.append(f"tensorflow-datasets download ({idx.first_line(error)})")
        raise _unavailable(name, tried) from error


def _idx_info(name, directory):
    split_paths = idx.paths(directory, idx.SPLITS)
    return DatasetInfo(
        name=name,
        image_shape=idx.IMAGE_SHAPE,
        num_classes=idx.NUM_CLASSES,
        num_train=idx.count_examples(split_paths["train"][0]),
        num_test=idx.count_examples(split_paths["test"][0]),
    )


def info(name, *, data_dir=None):
    """Describes a dataset without downloading it.

    Sources are looked up in the order of `load`; where the dataset is not prepared
    locally, TFDS's builder still knows the image shape and classes, but not always
    the split sizes (then None).

    Args:
        name: A tensorflow-datasets name (`"fashion_mnist"`, `"cifar10"`, ...).
        data_dir: Directory holding IDX files (for `mnist` and `fashion_mnist`) or TFDS
            data. Defaults to None (TFDS's default directory).

    Returns:
        A `DatasetInfo`.

    Raises:
        DatasetUnavailableError: If the name is unknown, or tensorflow-datasets is
            needed and not installed.
        ValueError: If an argument is invalid or an IDX file is corrupt.
    """
    validate_name(name)
    if name in idx.DATASETS and idx.paths(data_dir, idx.SPLITS):
        return _idx_info(name, data_dir)
    tfds = _import_tfds()
    if tfds is None:
        raise _unavailable(name, ["tensorflow-datasets (not installed)"])
    builder = _tfds_builder(tfds, name, data_dir)
    if (
        name == "fashion_mnist"
        and not builder.is_prepared()
        and idx.paths(DEBIAN_FASHION_MNIST_DIR, idx.SPLITS)
    ):
        return _idx_info(name, DEBIAN_FASHION_MNIST_DIR)
    image_key, label_key = builder.info.supervised_keys
    splits = builder.info.splits

    def num_examples(split):
        return splits[split].num_examples if split in splits else None

    return DatasetInfo(
        name=name,
        image_shape=tuple(builder.info.features[image_key].shape),
        num_classes=builder.info.features[label_key].num_classes,
        num_train=num_examples("train"),
        num_test=num_examples("test"),
    )


def split_labels(name, split, *, data_dir=None):
    """The labels of a split, in its order, as an int64 NumPy array (no images kept)."""
    validate_name(name)
    labels_only = tf.autograph.experimental.do_not_convert(lambda image, label: label)
    dataset = source_dataset(name, split, data_dir).map(labels_only)
    batches = list(dataset.batch(8192).as_numpy_iterator())
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)
