"""Tests of `gradmask_tf.data`: IDX files, TFDS (mocked), the pipeline, and errors."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import data
from tests.idx import write_idx

NUM_TRAIN = 20
NUM_TEST = 12


def _arrays(dataset):
    """All examples of a dataset as numpy `(images, labels)`."""
    images, labels = [], []
    for image, label in dataset.as_numpy_iterator():
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def _batches(dataset):
    """All batches of a batched dataset, concatenated, and the batch sizes."""
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels), [len(y) for y in labels]


def _indices(images, source_images):
    """Position in `source_images` (uint8) of each loaded float image."""
    position = {image.tobytes(): index for index, image in enumerate(source_images)}
    keys = np.round(images * 255.0).astype(np.uint8)
    return [position[key.tobytes()] for key in keys]


@pytest.fixture
def idx_dir(tmp_path):
    """A tiny MNIST-layout dataset: distinct random images, labels 0..9."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(count,), dtype=np.uint8)
        write_idx(tmp_path, images, labels, split)
        arrays[split] = (images[..., None], labels)
    return tmp_path, arrays


def test_idx_round_trip_keeps_values_and_order(idx_dir):
    directory, arrays = idx_dir
    dataset = data.load("fashion_mnist", "test", data_dir=str(directory))
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape == (28, 28, 1) and image_spec.dtype == tf.float32
    assert label_spec.shape == () and label_spec.dtype == tf.int32

    images, labels = _arrays(dataset)
    expected_images, expected_labels = arrays["test"]
    assert images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_allclose(images, expected_images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, expected_labels)


def test_idx_reads_uncompressed_files_and_train_split(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(7,), dtype=np.uint8)
    paths = write_idx(tmp_path, images, labels, "train", compress=False)
    assert [os.path.basename(path) for path in paths] == [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]

    loaded_images, loaded_labels = _arrays(
        data.load("mnist", "train", data_dir=str(tmp_path))
    )
    np.testing.assert_allclose(loaded_images, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(loaded_labels, labels)


@pytest.mark.parametrize(
    "max_examples, expected", [(5, 5), (0, NUM_TEST), (None, NUM_TEST)]
)
def test_max_examples_keeps_the_first_examples(idx_dir, max_examples, expected):
    directory, arrays = idx_dir
    images, labels = _arrays(
        data.load("mnist", "test", data_dir=str(directory), max_examples=max_examples)
    )
    np.testing.assert_array_equal(labels, arrays["test"][1][:expected])
    np.testing.assert_allclose(images, arrays["test"][0][:expected] / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    "drop_remainder, expected_sizes", [(False, [5, 5, 2]), (True, [5, 5])]
)
def test_batching(idx_dir, drop_remainder, expected_sizes):
    directory, arrays = idx_dir
    dataset = data.load(
        "mnist",
        "test",
        data_dir=str(directory),
        batch_size=5,
        drop_remainder=drop_remainder,
    )
    images, labels, sizes = _batches(dataset)
    assert sizes == expected_sizes
    assert images.shape == (sum(expected_sizes), 28, 28, 1)
    np.testing.assert_array_equal(labels, arrays["test"][1][: sum(expected_sizes)])


def test_shuffle_is_seeded_and_reshuffles_each_epoch(idx_dir):
    directory, arrays = idx_dir
    source_images = arrays["train"][0]

    def order(seed):
        dataset = data.load(
            "mnist", "train", data_dir=str(directory), shuffle=True, seed=seed
        )
        return _indices(_arrays(dataset)[0], source_images)

    first = order(seed=1)
    assert first == order(seed=1)
    assert first != order(seed=2)
    assert sorted(first) == list(range(NUM_TRAIN))
    assert first != list(range(NUM_TRAIN))

    dataset = data.load("mnist", "train", data_dir=str(directory), shuffle=True, seed=1)
    epoch_1 = _indices(_arrays(dataset)[0], source_images)
    epoch_2 = _indices(_arrays(dataset)[0], source_images)
    assert epoch_1 == first
    assert epoch_2 != epoch_1 and sorted(epoch_2) == list(range(NUM_TRAIN))

    # Labels travel with their images.
    images, labels = _arrays(dataset)
    np.testing.assert_array_equal(
        labels, arrays["train"][1][_indices(images, source_images)]
    )


def test_tfds_split_specs_on_idx_files(idx_dir):
    directory, arrays = idx_dir
    images, labels = _arrays(
        data.load("mnist", "train[:25%]+test[-2:]", data_dir=str(directory))
    )
    np.testing.assert_array_equal(
        labels, np.concatenate([arrays["train"][1][:5], arrays["test"][1][-2:]])
    )
    assert len(images) == 7


@pytest.mark.parametrize("split", ["validation", "train[:x]", "train[:200%]"])
def test_invalid_split_on_idx_files(idx_dir, split):
    directory, _ = idx_dir
    with pytest.raises(ValueError, match="Invalid value for argument `split`"):
        data.load("mnist", split, data_dir=str(directory))


def test_corrupt_idx_files_raise_clear_errors(idx_dir):
    directory, _ = idx_dir
    images_path = os.path.join(directory, "t10k-images-idx3-ubyte.gz")
    with gzip.open(images_path, "rb") as file:
        content = file.read()

    with gzip.open(images_path, "wb") as file:
        file.write(b"\x00\x00\x08\x01" + content[4:])
    with pytest.raises(ValueError, match=r"magic number 2049, expected 2051"):
        data.load("mnist", "test", data_dir=str(directory))

    with gzip.open(images_path, "wb") as file:
        file.write(content[:-10])
    with pytest.raises(ValueError, match=r"corrupt: its header announces 12 images"):
        data.load("mnist", "test", data_dir=str(directory))

    with open(images_path, "wb") as file:
        file.write(b"not gzip at all")
    with pytest.raises(ValueError, match=r"Could not read IDX file .*t10k-images"):
        data.load("mnist", "test", data_dir=str(directory))


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"max_examples": -1}, "max_examples"),
        ({"batch_size": 0}, "batch_size"),
        ({"shuffle": 1}, "shuffle"),
        ({"seed": 1.5}, "seed"),
        ({"epochs": 3}, "epochs"),
        ({"epochs": range(0, 6, 2)}, "epochs"),
        ({"augment": True}, "augment"),  # 28x28 grayscale.
    ],
)
def test_invalid_arguments(idx_dir, arguments, name):
    directory, _ = idx_dir
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        data.load("mnist", "test", data_dir=str(directory), **arguments)


def test_info_of_idx_files(idx_dir):
    directory, _ = idx_dir
    assert data.info("mnist", data_dir=str(directory)) == data.DatasetInfo(
        name="mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
    )


# TFDS, mocked: `MockPolicy.USE_CODE` makes random examples from the dataset's features,
# with no data or metadata files, so it runs offline.


@pytest.fixture
def mock_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    policy = tfds.testing.MockPolicy.USE_CODE
    with tfds.testing.mock_data(num_examples=6, policy=policy):
        yield tfds


def _epoch_orders(dataset, source_images, num_epochs):
    """The order of each epoch of a dataset that holds `num_epochs` of them."""
    indices = _indices(_arrays(dataset)[0], source_images)
    size = len(indices) // num_epochs
    return [indices[epoch * size : (epoch + 1) * size] for epoch in range(num_epochs)]


def test_epoch_order_is_keyed_by_seed_and_epoch_only(idx_dir):
    directory, arrays = idx_dir
    source_images = arrays["train"][0]

    def orders(seed, epochs):
        dataset = data.load(
            "mnist", "train", data_dir=str(directory), shuffle=True, seed=seed, epochs=epochs
        )
        assert int(dataset.cardinality()) == NUM_TRAIN * len(epochs)
        return _epoch_orders(dataset, source_images, len(epochs))

    first = orders(seed=1, epochs=range(0, 3))
    assert all(sorted(order) == list(range(NUM_TRAIN)) for order in first)
    assert len({tuple(order) for order in first}) == 3, "each epoch has its own order"
    assert first[0] != list(range(NUM_TRAIN))
    # A run resumed at epoch 1, in a process whose global seed and history differ.
    tf.random.set_seed(1234)
    resumed = orders(seed=1, epochs=range(1, 3))
    assert resumed == first[1:]
    assert orders(seed=1, epochs=range(2, 3)) == first[2:]
    assert orders(seed=2, epochs=range(0, 3))[0] != first[0]


def test_epochs_are_batched_each_on_its_own_and_read_again_alike(idx_dir):
    directory, arrays = idx_dir
    dataset = data.load(
        "mnist", "train", data_dir=str(directory), shuffle=True, seed=1, batch_size=8,
        epochs=range(4, 6),
    )
    assert int(dataset.cardinality()) == 6
    images, labels, sizes = _batches(dataset)
    assert sizes == [8, 8, 4, 8, 8, 4], "no batch spans two epochs"
    again, _, _ = _batches(dataset)
    np.testing.assert_array_equal(images, again)  # No state carried between iterations.
    np.testing.assert_array_equal(
        labels, arrays["train"][1][_indices(images, arrays["train"][0])]
    )
    dropped = data.load(
        "mnist", "train", data_dir=str(directory), shuffle=True, seed=1, batch_size=8,
        drop_remainder=True, epochs=range(4, 6),
    )
    assert int(dropped.cardinality()) == 4 and _batches(dropped)[2] == [8] * 4


@pytest.mark.parametrize(
    "name, image_shape, num_classes",
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)],
)
def test_tfds_datasets_are_scaled_and_typed(mock_tfds, name, image_shape, num_classes):
    dataset = data.load(name, "test", batch_size=4)
    assert dataset.element_spec[0].dtype == tf.float32
    assert dataset.element_spec[1].dtype == tf.int32
    images, labels, sizes = _batches(dataset)
    assert sizes == [4, 2]
    assert images.shape == (6, *image_shape)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.max() > 0.5  # Scaled once, not twice.
    assert np.all((labels >= 0) & (labels < num_classes))

    described = data.info(name)
    assert (described.image_shape, described.num_classes) == (image_shape, num_classes)


def test_tfds_augment_keeps_shapes_and_range(mock_tfds):
    plain, _ = _arrays(data.load("cifar10", "train"))

    dataset = data.load("cifar10", "train", augment=True, seed=3, batch_size=6)
    images, labels, _ = _batches(dataset)
    assert images.shape == plain.shape and images.dtype == np.float32
    assert labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert not np.array_equal(images, plain)

    again, _, _ = _batches(
        data.load("cifar10", "train", augment=True, seed=3, batch_size=6)
    )
    np.testing.assert_array_equal(images, again)
    next_epoch, _, _ = _batches(dataset)
    assert not np.array_equal(images, next_epoch)


def test_tfds_augment_is_keyed_by_seed_epoch_and_example(mock_tfds):
    def epochs(epoch_range, shuffle=True):
        dataset = data.load(
            "cifar10", "train", augment=True, shuffle=shuffle, seed=3, epochs=epoch_range
        )
        images, labels = _arrays(dataset)
        return np.split(images, len(epoch_range)), np.split(labels, len(epoch_range))

    (epoch_0, epoch_1), _ = epochs(range(0, 2))
    (resumed,), _ = epochs(range(1, 2))
    np.testing.assert_array_equal(resumed, epoch_1)
    assert not np.array_equal(epoch_0, epoch_1)
    # The draws follow the example, not its place in the epoch's order.
    (in_order,), _ = epochs(range(1, 2), shuffle=False)
    assert sorted(image.tobytes() for image in in_order) == sorted(
        image.tobytes() for image in epoch_1
    )


# Unavailable datasets: deterministic and network-free.


def test_unavailable_when_offline(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("GRADMASK_OFFLINE", "1")
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load("mnist", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "'mnist'" in message and "\n" not in message
    assert f"IDX files in {tmp_path}" in message
    assert "GRADMASK_OFFLINE" in message and "tfds build mnist" in message


def test_unavailable_when_download_fails(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv("GRADMASK_OFFLINE", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))

    def no_network(builder, split, download):
        if download:
            raise ConnectionError("no route to host\nsecond line")
        raise AssertionError("not prepared")

    monkeypatch.setattr(data, "_tfds_dataset", no_network)
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load("fashion_mnist", "test", data_dir=str(tmp_path))
    message = str(error.value)
    assert "'fashion_mnist'" in message and "\n" not in message
    assert "ConnectionError: no route to host" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_unknown_dataset_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DatasetUnavailableError, match="'no_such_dataset_xyz'"):
        data.load("no_such_dataset_xyz", "test")


def test_fashion_mnist_prefers_debian_files_to_a_download(idx_dir, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    directory, arrays = idx_dir
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(directory))

    def not_prepared(builder, split, download):
        if download:
            raise AssertionError("must not download while a local copy exists")
        raise AssertionError("not prepared")

    monkeypatch.setattr(data, "_tfds_dataset", not_prepared)
    _, labels = _arrays(data.load("fashion_mnist", "test"))
    np.testing.assert_array_equal(labels, arrays["test"][1])


# The real Fashion-MNIST test split from Debian's package.


@pytest.mark.skipif(
    not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR),
    reason=f"{data.DEBIAN_FASHION_MNIST_DIR} is absent; "
    "`apt-get install dataset-fashion-mnist` provides it",
)
def test_debian_fashion_mnist_test_split():
    directory = data.DEBIAN_FASHION_MNIST_DIR
    with gzip.open(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"), "rb") as file:
        first_label = file.read(9)[8]
    assert first_label == 9  # Ankle boot.

    dataset = data.load("fashion_mnist", "test", data_dir=directory, batch_size=10_000)
    images, labels, sizes = _batches(dataset)
    assert sizes == [10_000]
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.float32
    assert labels[0] == first_label
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    assert images.min() == 0.0 and images.max() == 1.0
    # METHOD.md: about half of the pixels of a Fashion-MNIST image are non-zero.
    assert 0.45 < np.mean(images > 0) < 0.55
    assert data.info("fashion_mnist", data_dir=directory).num_test == 10_000
