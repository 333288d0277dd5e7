"""The `tf.data` pipeline: epochs of `(image, label)` pairs in [0, 1], seeded.

`load` returns float32 images `[H, W, C]` in [0, 1] (the model's input domain;
normalization lives inside the model, so attacks and saliency work in pixel space) and
int32 labels, read from the first available source (`gradmask_tf.data.sources`).
"""

import numpy as np
import tensorflow as tf

from gradmask_tf.data import sources
from gradmask_tf.data.idx import first_line
from gradmask_tf.errors import invalid

# Padding of the CIFAR-style random crop, in pixels on each side.
_CROP_PADDING = 4
_AUGMENT_IMAGE_SHAPE = (32, 32, 3)

# What an epoch's draws are for: each purpose has its own streams.
_SHUFFLE_DRAWS = 1
_AUGMENT_DRAWS = 2


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _plain(function):
    """`function` for `Dataset.map`, traced as written: without autograph, which would
    convert it and what it calls in every process (its branches are on Python values)."""
    return tf.autograph.experimental.do_not_convert(function)


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
            f"({first_line(error)}); `shuffle` holds the examples in one array."
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
    sources.validate_name(name)
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
            (`"fashion_mnist"`, `"mnist"`, `"cifar10"`, `"cifar100"`, ...). See
            `gradmask_tf.data.sources` for where it is read from.
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
    dataset = sources.source_dataset(name, split, data_dir)
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
            return dataset.enumerate().map(_plain(lambda index, example: (index, *example)))
        order = tf.range(num_examples, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.index_shuffle(
                order, _epoch_seed(seed, _SHUFFLE_DRAWS, epoch), max(num_examples - 1, 0)
            )
        images, labels = examples
        return tf.data.Dataset.from_tensor_slices(order).map(
            _plain(lambda index: (index, tf.gather(images, index), tf.gather(labels, index)))
        )

    def one_epoch(epoch):
        augment_seed = _epoch_seed(seed, _AUGMENT_DRAWS, epoch)

        def example(index, image, label):
            image, label = _scale(image, label)
            if augment:
                element_seed = tf.random.experimental.stateless_fold_in(augment_seed, index)
                image = _augment(image, element_seed)
            return image, label

        epoch_data = indexed(epoch).map(_plain(example), num_parallel_calls=tf.data.AUTOTUNE)
        if batch_size is not None:
            epoch_data = epoch_data.batch(batch_size, drop_remainder=drop_remainder)
        return epoch_data

    if epochs is None:
        # One epoch per iteration, a new epoch number drawn for each.
        numbers = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        numbers = tf.data.Dataset.range(epochs.start, epochs.stop)
    result = numbers.flat_map(_plain(one_epoch))
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
