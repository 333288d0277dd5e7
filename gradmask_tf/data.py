"""Image classification data as `tf.data` pipelines of pixels in [0, 1].

`load` returns `(image, label)` pairs: float32 images `[H, W, C]` in [0, 1] (the
model's input domain; normalization lives inside the model, so attacks and saliency work
in pixel space) and int32 labels. Datasets are named as in tensorflow-datasets (TFDS).

Sources, first one found wins, so that nothing is downloaded while a local copy exists:
1. for `mnist` and `fashion_mnist`, IDX files in `data_dir` (read directly);
2. a dataset already prepared by TFDS in `data_dir` (or TFDS's default directory);
3. for `fashion_mnist`, Debian's package `dataset-fashion-mnist`
   (`DEBIAN_FASHION_MNIST_DIR`), whose gzip files are recompressed so TFDS's checksums
   reject them; they are read directly;
4. a TFDS download, skipped when the environment variable `GRADMASK_OFFLINE` is set to a
   true value (1, true, yes).
"""

import dataclasses
import gzip
import os
import re
import struct

import numpy as np
import tensorflow as tf

from gradmask_tf.errors import invalid

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Datasets published as the four IDX files of LeCun's MNIST layout.
_IDX_DATASETS = ("mnist", "fashion_mnist")
_IDX_SPLITS = ("train", "test")
_IDX_FILE_PREFIX = {"train": "train", "test": "t10k"}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_IDX_IMAGE_SHAPE = (28, 28, 1)
_IDX_NUM_CLASSES = 10

_OFFLINE_ENVIRONMENT_VARIABLE = "GRADMASK_OFFLINE"

# Padding of the CIFAR-style random crop, in pixels on each side.
_CROP_PADDING = 4
_AUGMENT_IMAGE_SHAPE = (32, 32, 3)

# What an epoch's draws are for: each purpose has its own streams.
_SHUFFLE_DRAWS = 1
_AUGMENT_DRAWS = 2

# One term of a split spec: `name`, `name[start:stop]`, bounds as ints or percents.
_SPLIT_TERM = re.compile(
    r"^(?P<name>\w+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$"
)


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


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _offline():
    value = os.environ.get(_OFFLINE_ENVIRONMENT_VARIABLE, "")
    return value.strip().lower() in ("1", "true", "yes")


# IDX files ----------------------------------------------------------------------------


def _idx_file_names(split):
    prefix = _IDX_FILE_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_idx_file(directory, file_name):
    for candidate in (file_name + ".gz", file_name):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _idx_paths(directory, splits):
    """`{split: (images_path, labels_path)}`, or None unless every file is present."""
    if directory is None or not os.path.isdir(directory):
        return None
    paths = {}
    for split in splits:
        found = tuple(
            _find_idx_file(directory, name) for name in _idx_file_names(split)
        )
        if None in found:
            return None
        paths[split] = found
    return paths


def _open_idx(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_idx_bytes(path, num_bytes=-1):
    try:
        with _open_idx(path) as file:
            return file.read(num_bytes)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile and zlib.error are OSError.
        raise ValueError(
            f"Could not read IDX file {path}: {_first_line(error)}. The file is "
            "corrupt or not gzip-compressed; replace it with a fresh copy."
        ) from error


def _parse_idx_header(path, data, magic):
    """Checks the header of an IDX file and returns its dimensions."""
    rank = 3 if magic == _IDX_IMAGES_MAGIC else 1
    header_size = 4 * (1 + rank)
    kind = "images" if rank == 3 else "labels"
    if len(data) < header_size:
        raise ValueError(
            f"IDX {kind} file {path} is truncated: {len(data)} bytes, shorter than its "
            f"{header_size}-byte header. Replace it with a fresh copy."
        )
    found_magic, *dimensions = struct.unpack(f">{1 + rank}I", data[:header_size])
    if found_magic != magic:
        raise ValueError(
            f"File {path} is not an IDX {kind} file: magic number {found_magic}, "
            f"expected {magic}. The file is corrupt or of another kind; replace it "
            "with a fresh copy."
        )
    return header_size, dimensions


def _read_idx_images(path):
    data = _read_idx_bytes(path)
    header_size, (count, rows, columns) = _parse_idx_header(
        path, data, _IDX_IMAGES_MAGIC
    )
    expected = header_size + count * rows * columns
    if len(data) != expected:
        raise ValueError(
            f"IDX images file {path} is corrupt: its header announces {count} images "
            f"of {rows}x{columns} ({expected} bytes) but it holds {len(data)} bytes. "
            "Replace it with a fresh copy."
        )
    images = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    return images.reshape(count, rows, columns, 1)


def _read_idx_labels(path):
    data = _read_idx_bytes(path)
    header_size, (count,) = _parse_idx_header(path, data, _IDX_LABELS_MAGIC)
    if len(data) != header_size + count:
        raise ValueError(
            f"IDX labels file {path} is corrupt: its header announces {count} labels "
            f"({header_size + count} bytes) but it holds {len(data)} bytes. Replace it "
            "with a fresh copy."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).astype(np.int32)


def _read_idx_split(images_path, labels_path):
    images = _read_idx_images(images_path)
    labels = _read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise ValueError(
            f"IDX files {images_path} and {labels_path} do not match: "
            f"{len(images)} images but {len(labels)} labels."
        )
    return images, labels


def _count_idx_examples(images_path):
    data = _read_idx_bytes(images_path, num_bytes=16)
    _, (count, _, _) = _parse_idx_header(images_path, data, _IDX_IMAGES_MAGIC)
    return count


def _parse_idx_split(split):
    """Turns a TFDS-style split spec into `[(split, start, stop, percent), ...]`."""
    expected = (
        "'train', 'test', 'all', or slices of them joined by '+' such as "
        "'train[:90%]' or 'test[:1000]+train[-500:]'"
    )
    terms = []
    for term in re.split(r"\s*\+\s*", split.strip()):
        match = _SPLIT_TERM.match(term)
        if not match or match["name"] not in _IDX_SPLITS + ("all",):
            raise invalid("split", expected, split)
        if match["name"] == "all":
            if match["start"] is not None or match["stop"] is not None:
                raise invalid("split", expected, split)
            terms.extend((name, None, None) for name in _IDX_SPLITS)
        else:
            terms.append((match["name"], match["start"], match["stop"]))
    return terms


def _resolve_bound(bound, count, split):
    if bound is None:
        return None
    if bound.endswith("%"):
        percent = int(bound[:-1])
        if abs(percent) > 100:
            raise invalid("split", "percent slice bounds in [-100%, 100%]", split)
        # Rounded to the closest example, as TFDS does.
        return int(round(percent * count / 100.0))
    value = int(bound)
    if abs(value) > count:
        raise invalid("split", f"slice bounds within the {count} examples", split)
    return value


def _idx_directory_has(directory, split):
    """Whether `directory` holds the IDX files that `split` reads."""
    try:
        names = {name for name, _, _ in _parse_idx_split(split)}
    except ValueError:
        names = _IDX_SPLITS  # With all four files present, `_idx_arrays` reports it.
    return _idx_paths(directory, sorted(names)) is not None


def _idx_arrays(directory, split):
    terms = _parse_idx_split(split)
    paths = _idx_paths(directory, sorted({name for name, _, _ in terms}))
    arrays = {name: _read_idx_split(*pair) for name, pair in paths.items()}
    images, labels = [], []
    for name, start, stop in terms:
        split_images, split_labels = arrays[name]
        count = len(split_labels)
        selection = slice(
            _resolve_bound(start, count, split), _resolve_bound(stop, count, split)
        )
        images.append(split_images[selection])
        labels.append(split_labels[selection])
    return np.concatenate(images), np.concatenate(labels)


# Sources ------------------------------------------------------------------------------


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    return tfds


def _how_to_get(name):
    ways = []
    if name in _IDX_DATASETS:
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


def _source_dataset(name, split, data_dir):
    """Reads the first available source: `(image uint8 [H, W, C], label)` pairs."""
    tried = []
    if name in _IDX_DATASETS and data_dir is not None:
        if _idx_directory_has(data_dir, split):
            return tf.data.Dataset.from_tensor_slices(_idx_arrays(data_dir, split))
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
        if _idx_directory_has(DEBIAN_FASHION_MNIST_DIR, split):
            return tf.data.Dataset.from_tensor_slices(
                _idx_arrays(DEBIAN_FASHION_MNIST_DIR, split)
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
        tried.append(f"tensorflow-datasets download ({_first_line(error)})")
        raise _unavailable(name, tried) from error


def _validate_name(name):
    if not isinstance(name, str) or not name.strip():
        raise invalid(
            "name", "a tensorflow-datasets name such as 'fashion_mnist'", name
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
    _validate_name(name)

    def idx_info(directory):
        paths = _idx_paths(directory, _IDX_SPLITS)
        return DatasetInfo(
            name=name,
            image_shape=_IDX_IMAGE_SHAPE,
            num_classes=_IDX_NUM_CLASSES,
            num_train=_count_idx_examples(paths["train"][0]),
            num_test=_count_idx_examples(paths["test"][0]),
        )

    if name in _IDX_DATASETS and _idx_paths(data_dir, _IDX_SPLITS):
        return idx_info(data_dir)
    tfds = _import_tfds()
    if tfds is None:
        raise _unavailable(name, ["tensorflow-datasets (not installed)"])
    builder = _tfds_builder(tfds, name, data_dir)
    if (
        name == "fashion_mnist"
        and not builder.is_prepared()
        and _idx_paths(DEBIAN_FASHION_MNIST_DIR, _IDX_SPLITS)
    ):
        return idx_info(DEBIAN_FASHION_MNIST_DIR)
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


# Pipeline -----------------------------------------------------------------------------


def _scale(image, label):
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)


def _epoch_seed(seed, purpose, epoch):
    """A stateless `[2]` seed for one purpose's draws in one epoch: a function of the three.

    The run's seed, not TensorFlow's global one, so the draws are the same whatever
    came before in the process (a resumed run draws what an uninterrupted one did).
    """
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, purpose], tf.int64), tf.cast(epoch, tf.int64)
    )


def _augment(image, element_seed):
    """Random crop of the image padded by 4 pixels, then a random horizontal flip."""
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(element_seed, num=2)
    )
    padding = [[_CROP_PADDING, _CROP_PADDING], [_CROP_PADDING, _CROP_PADDING], [0, 0]]
    image = tf.image.stateless_random_crop(
        tf.pad(image, padding), size=image.shape, seed=crop_seed
    )
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _in_memory(dataset, name):
    """All `(image, label)` examples of `dataset` as two tensors, for random access."""
    images, labels = [], []
    try:
        for image_batch, label_batch in dataset.batch(4096).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(
            f"Dataset {name!r} cannot be shuffled: its images differ in shape "
            f"({_first_line(error)}); `shuffle` holds the examples in one array."
        ) from error
    if not images:
        return None
    return tf.constant(np.concatenate(images)), tf.constant(np.concatenate(labels))


def _select(dataset, name, max_examples, indices, labels):
    """The examples of `dataset` at `indices`, with `labels` where given."""
    if max_examples:
        raise invalid("max_examples", "None or 0 with indices", max_examples)
    indices = np.asarray(indices, dtype=np.int64)
    examples = _in_memory(dataset, name)
    count = 0 if examples is None else int(examples[1].shape[0])
    if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= count)):
        raise invalid("indices", f"a 1-D array of indices below {count}", indices)
    if labels is not None and np.shape(labels) != indices.shape:
        raise invalid("labels", f"an array of {len(indices)} labels", labels)
    images, split_labels = examples
    selected_labels = (
        tf.gather(split_labels, indices)
        if labels is None
        else tf.constant(np.asarray(labels), dtype=split_labels.dtype)
    )
    return tf.data.Dataset.from_tensor_slices((tf.gather(images, indices), selected_labels))


def _validate_load_arguments(name, split, max_examples, batch_size, seed, epochs, flags):
    _validate_name(name)
    if not isinstance(split, str) or not split.strip():
        raise invalid(
            "split", "a split name such as 'train', 'test' or 'train[:90%]'", split
        )
    if max_examples is not None and (
        not _is_integer(max_examples) or max_examples < 0
    ):
        raise invalid(
            "max_examples", "None or an integer >= 0 (0 means all)", max_examples
        )
    if batch_size is not None and (not _is_integer(batch_size) or batch_size < 1):
        raise invalid("batch_size", "None or an integer >= 1", batch_size)
    if not _is_integer(seed):
        raise invalid("seed", "an integer", seed)
    if epochs is not None and (
        not isinstance(epochs, range) or epochs.step != 1 or epochs.start < 0
    ):
        raise invalid(
            "epochs", "None or a range of epoch numbers >= 0 such as range(2, 10)", epochs
        )
    for flag_name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise invalid(flag_name, "True or False", value)


def load(
    name,
    split,
    *,
    data_dir=None,
    max_examples=None,
    batch_size=None,
    shuffle=False,
    seed=0,
    augment=False,
    drop_remainder=False,
    epochs=None,
    indices=None,
    labels=None,
):
    """Loads an image classification dataset as `(image, label)` pairs in [0, 1].

    The pipeline is: read, keep the first `max_examples`, then for each epoch: order
    (shuffled only when `shuffle`), scale to [0, 1], augment (only when `augment`),
    batch; and prefetch. Without `shuffle` the dataset keeps its original order, so "the
    first N test examples" are the same everywhere. The examples are held in memory as
    the decoded uint8 images, a quarter of the memory of float32 ones; scaling is one
    multiply per pixel.

    Every draw is keyed by the run's `seed` and the epoch: epoch e's order is a
    stateless permutation keyed by (`seed`, e), and each example's crop and flip are
    keyed by (`seed`, e, its index in the split). With `epochs`, epoch e is therefore
    the same in any process, whatever ran before it: a run resumed at epoch e sees
    what an uninterrupted one would have.

    Args:
        name: A tensorflow-datasets name of an image classification dataset
            (`"fashion_mnist"`, `"mnist"`, `"cifar10"`, `"cifar100"`, ...). See the
            module docstring for where it is read from.
        split: `"train"`, `"test"`, or any TFDS split spec (`"train[:90%]"`,
            `"test[:1000]"`, `"train+test"`); IDX files have only train and test.
        data_dir: Directory holding IDX files (for `mnist` and `fashion_mnist`) or TFDS
            data. Defaults to None (TFDS's default directory).
        max_examples: Keep only the first this many examples; None or 0 keeps all.
            Defaults to None.
        batch_size: Batch into `[B, H, W, C]` images and `[B]` labels, each epoch on
            its own; None yields single examples. Defaults to None.
        shuffle: Shuffle the examples, in an order keyed by `seed` and the epoch (the
            images must be of one shape). Defaults to False.
        seed: Seed of the shuffle and of the augmentation. Defaults to 0.
        augment: Random crop of the image padded by 4 pixels and random horizontal
            flip, keyed by `seed`, the epoch and the example; defined for 32x32 colour
            images (CIFAR). Defaults to False.
        drop_remainder: Drop the last batch of each epoch when smaller than
            `batch_size`. Defaults to False.
        epochs: A `range` of epoch numbers, such as `range(initial_epoch, epochs)` for
            training that resumes: the dataset holds those epochs one after another,
            epoch e drawn by (`seed`, e). None: one epoch, drawn anew at each iteration
            of the dataset (reproducible in one process from `seed`, not across a
            restart). Defaults to None.
        indices: Serve only these examples of the split, in this order (before any
            shuffle), for example a `Regime`'s; exclusive with `max_examples`. The
            shuffle and augmentation then key on the position in `indices`. Defaults
            to None (all).
        labels: With `indices`, their labels (noisy ones); None keeps the split's.

    Returns:
        A `tf.data.Dataset` of `(image, label)`: float32 `[H, W, C]` in [0, 1] and int32
        scalars, or `[B, H, W, C]` and `[B]` when `batch_size` is given.

    Raises:
        DatasetUnavailableError: If no source of the dataset could be read or
            downloaded; the message says what was tried and how to get it.
        ValueError: If an argument is invalid, an IDX file is corrupt, `augment` is
            asked for images other than 32x32 colour, or `shuffle` for images of
            different shapes.
    """
    _validate_load_arguments(
        name,
        split,
        max_examples,
        batch_size,
        seed,
        epochs,
        {"shuffle": shuffle, "augment": augment, "drop_remainder": drop_remainder},
    )
    dataset = _source_dataset(name, split, data_dir)
    image_spec = dataset.element_spec[0]
    if image_spec.dtype != tf.uint8 or image_spec.shape.rank != 3:
        raise ValueError(
            f"Dataset {name!r} does not hold uint8 images [H, W, C] (its images are "
            f"{image_spec.dtype.name} {image_spec.shape}); `load` reads image "
            "classification datasets only."
        )
    if augment and tuple(image_spec.shape) != _AUGMENT_IMAGE_SHAPE:
        raise invalid(
            "augment",
            f"False for {name!r}, whose images are {tuple(image_spec.shape)}: the "
            "padded crop and flip are defined for 32x32 colour images",
            augment,
        )
    if max_examples:
        dataset = dataset.take(max_examples)
    if indices is not None:
        dataset = _select(dataset, name, max_examples, indices, labels)
    elif labels is not None:
        raise invalid("labels", "None without indices", "an array")
    return _epochs(
        dataset,
        name,
        epochs,
        shuffle=shuffle,
        seed=seed,
        augment=augment,
        batch_size=batch_size,
        drop_remainder=drop_remainder,
    ).prefetch(tf.data.AUTOTUNE)


def _epochs(dataset, name, epochs, *, shuffle, seed, augment, batch_size, drop_remainder):
    """The examples of `dataset`, epoch after epoch, each drawn by (`seed`, epoch)."""
    examples = _in_memory(dataset, name) if shuffle else None
    if examples is None:  # Not shuffled (or empty): read in order, once.
        dataset = dataset.cache()
        num_examples = int(dataset.cardinality())  # < 0 where unknown
    else:
        num_examples = int(examples[1].shape[0])

    def indexed(epoch):
        """Epoch `epoch`'s `(index in the split, image, label)`, in its order."""
        if examples is None:
            return dataset.enumerate().map(lambda index, example: (index, *example))
        order = tf.range(num_examples, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.index_shuffle(
                order, _epoch_seed(seed, _SHUFFLE_DRAWS, epoch), max(num_examples - 1, 0)
            )
        images, labels = examples
        return tf.data.Dataset.from_tensor_slices(order).map(
            lambda index: (index, tf.gather(images, index), tf.gather(labels, index))
        )

    def one_epoch(epoch):
        augment_seed = _epoch_seed(seed, _AUGMENT_DRAWS, epoch)

        def example(index, image, label):
            image, label = _scale(image, label)
            if augment:
                element_seed = tf.random.experimental.stateless_fold_in(augment_seed, index)
                image = _augment(image, element_seed)
            return image, label

        epoch_data = indexed(epoch).map(example, num_parallel_calls=tf.data.AUTOTUNE)
        if batch_size is not None:
            epoch_data = epoch_data.batch(batch_size, drop_remainder=drop_remainder)
        return epoch_data

    if epochs is None:
        # One epoch per iteration, a new epoch number drawn for each.
        numbers = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        numbers = tf.data.Dataset.range(epochs.start, epochs.stop)
    result = numbers.flat_map(one_epoch)
    if num_examples < 0:
        return result
    per_epoch = num_examples
    if batch_size is not None:
        per_epoch = num_examples // batch_size
        if not drop_remainder and num_examples % batch_size:
            per_epoch += 1
    num_epochs = 1 if epochs is None else len(epochs)
    return result.apply(tf.data.experimental.assert_cardinality(per_epoch * num_epochs))


def as_numpy(dataset):
    """Collects a dataset of `(image, label)` pairs (batched or not) into two arrays.

    Args:
        dataset: A dataset from `load`.

    Returns:
        `(images, labels)`: float32 `[N, H, W, C]` and int32 `[N]` NumPy arrays.
    """
    if dataset.element_spec[0].shape.rank == 3:
        dataset = dataset.batch(1024)
    images, labels = [], []
    for image_batch, label_batch in dataset.as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise ValueError("The dataset is empty.")
    return np.concatenate(images), np.concatenate(labels)


# Regimes: subset, validation hold-out, label noise (METHOD.md section 6) -------------

# Each data step draws from its own stream, a function of the run's seed only: every arm
# of one seed (whatever its mask rule) sees the same subset, split and noise.
_SUBSET_DRAWS = 11
_VALIDATION_DRAWS = 12
_NOISE_DRAWS = 13


@dataclasses.dataclass(frozen=True)
class Regime:
    """The data steps' outcome; every index refers to the original training split.

    Attributes:
        train_indices: The training part, ascending.
        train_labels: Its labels, noisy where flipped.
        validation_indices: The validation part, ascending (empty without one).
        validation_labels: Its labels, noisy where flipped.
        train_true_labels: The original labels of the training part.
        validation_true_labels: The original labels of the validation part.
    """

    train_indices: np.ndarray
    train_labels: np.ndarray
    validation_indices: np.ndarray
    validation_labels: np.ndarray
    train_true_labels: np.ndarray
    validation_true_labels: np.ndarray

    @property
    def train_flipped(self):
        """Boolean mask over the training part: the examples whose label was flipped."""
        return self.train_labels != self.train_true_labels

    def noise_records(self):
        """One dict per flipped example: index, true and noisy label, part."""
        records = []
        for part, indices, labels, true in (
            ("train", self.train_indices, self.train_labels, self.train_true_labels),
            ("validation", self.validation_indices, self.validation_labels,
             self.validation_true_labels),
        ):
            for index, label, true_label in zip(indices, labels, true):
                if label != true_label:
                    records.append(
                        {"index": int(index), "true_label": int(true_label),
                         "noisy_label": int(label), "part": part}
                    )
        return records


def _stream(seed, purpose):
    return np.random.default_rng([int(seed), purpose])


def _stratified_count(counts, fraction, rng):
    """Per class, how many to hold out: round(fraction * total) in all, shared by
    largest remainder (ties drawn), so each class gives its share."""
    quotas = fraction * counts.astype(np.float64)
    taken = np.floor(quotas).astype(np.int64)
    remaining = int(round(fraction * counts.sum())) - int(taken.sum())
    if remaining > 0:
        remainders = quotas - taken
        tie_break = rng.random(len(counts))
        order = np.lexsort((tie_break, -remainders))
        taken[order[:remaining]] += 1
    return taken


def _flip(labels, rate, num_classes, rng):
    """Exactly round(rate * n) labels, drawn without replacement, each replaced by a
    uniformly drawn different label."""
    labels = labels.copy()
    count = int(round(rate * len(labels)))
    if count:
        chosen = rng.choice(len(labels), size=count, replace=False)
        shift = rng.integers(1, num_classes, size=count)
        labels[chosen] = (labels[chosen] + shift) % num_classes
    return labels


def regime(
    labels,
    *,
    num_classes,
    seed,
    max_examples=0,
    examples_per_class=0,
    validation_fraction=0.0,
    label_noise=0.0,
):
    """The data steps of METHOD.md section 6, in order, from the labels of a split.

    (1) the subset: `max_examples` drawn uniformly without replacement, or
    `examples_per_class` drawn per class (balanced); (2) the validation hold-out: `validation_fraction` of the subset,
    stratified by class (round(fraction * n) in all); (3) the label noise: exactly
    round(label_noise * n) examples of each part get a uniformly drawn different label.
    Each step draws from its own stream keyed by `seed` alone. Plain NumPy.

    Args:
        labels: Integer labels of the whole original training split.
        num_classes: Number of label values.
        seed: The run's seed.
        max_examples: Draw N (0, or N at least the split's size: all). Exclusive with
            `examples_per_class`.
        examples_per_class: Draw N of each class (0: off).
        validation_fraction: Share of the subset held out, in [0, 1).
        label_noise: Share of each part relabelled, in [0, 1).

    Returns:
        A `Regime`.

    Raises:
        ValueError: If an option is out of range, a class has fewer than
            `examples_per_class` examples, or a part would be empty.
    """
    labels = np.asarray(labels).astype(np.int64)
    if max_examples and examples_per_class:
        raise ValueError("max_examples and examples_per_class are exclusive")
    if not 0 <= validation_fraction < 1:
        raise invalid("validation_fraction", "a number in [0, 1)", validation_fraction)
    if not 0 <= label_noise < 1:
        raise invalid("label_noise", "a number in [0, 1)", label_noise)
    # (1) The subset.
    if examples_per_class:
        subset_rng = _stream(seed, _SUBSET_DRAWS)
        chosen = []
        for label in range(num_classes):
            members = np.flatnonzero(labels == label)
            if len(members) < examples_per_class:
                raise ValueError(
                    f"examples_per_class={examples_per_class}: class {label} has only "
                    f"{len(members)} training examples"
                )
            chosen.append(subset_rng.choice(members, size=examples_per_class, replace=False))
        subset = np.sort(np.concatenate(chosen))
    elif max_examples and max_examples < len(labels):
        subset_rng = _stream(seed, _SUBSET_DRAWS)
        subset = np.sort(subset_rng.choice(len(labels), size=max_examples, replace=False))
    else:
        subset = np.arange(len(labels))
    # (2) The validation hold-out, stratified.
    held_out = np.zeros(len(subset), bool)
    if validation_fraction:
        validation_rng = _stream(seed, _VALIDATION_DRAWS)
        subset_labels = labels[subset]
        classes = np.unique(subset_labels)
        counts = np.array([np.sum(subset_labels == c) for c in classes])
        for label, count in zip(classes, _stratified_count(counts, validation_fraction, validation_rng)):
            members = np.flatnonzero(subset_labels == label)
            held_out[validation_rng.choice(members, size=count, replace=False)] = True
        if not held_out.any():
            raise ValueError(
                f"validation_fraction={validation_fraction} of {len(subset)} examples "
                "holds out none"
            )
    train_indices, validation_indices = subset[~held_out], subset[held_out]
    if len(train_indices) == 0:
        raise ValueError("no training examples are left")
    # (3) The label noise, in each part.
    noise_rng = _stream(seed, _NOISE_DRAWS)
    train_true, validation_true = labels[train_indices], labels[validation_indices]
    train_labels = _flip(train_true, label_noise, num_classes, noise_rng)
    validation_labels = _flip(validation_true, label_noise, num_classes, noise_rng)
    return Regime(
        train_indices=train_indices,
        train_labels=train_labels,
        validation_indices=validation_indices,
        validation_labels=validation_labels,
        train_true_labels=train_true,
        validation_true_labels=validation_true,
    )


def split_labels(name, split, *, data_dir=None):
    """The labels of a split, in its order, as an int64 NumPy array (no images kept)."""
    _validate_name(name)
    dataset = _source_dataset(name, split, data_dir).map(lambda image, label: label)
    batches = list(dataset.batch(8192).as_numpy_iterator())
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)


def noise_metrics(predictions, true_labels, noisy_labels):
    """`(memorisation, clean_accuracy)` of predicted classes on a noisy training part.

    memorisation: the share of the flipped examples whose noisy label is predicted;
    clean_accuracy: the accuracy on the correctly labelled examples. Each is None where
    its set is empty.
    """
    predictions = np.asarray(predictions)
    true_labels, noisy_labels = np.asarray(true_labels), np.asarray(noisy_labels)
    flipped = noisy_labels != true_labels
    memorisation = float(np.mean(predictions[flipped] == noisy_labels[flipped])) if flipped.any() else None
    clean = ~flipped
    clean_accuracy = float(np.mean(predictions[clean] == true_labels[clean])) if clean.any() else None
    return memorisation, clean_accuracy
