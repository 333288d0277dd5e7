"""Tests of `gradmask_tf.data`: IDX files, TFDS (mocked), the pipeline, regimes, and errors."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import data
from gradmask_tf.data import sources
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
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))

    def no_network(builder, split, download):
        if download:
            raise ConnectionError("no route to host\nsecond line")
        raise AssertionError("not prepared")

    monkeypatch.setattr(sources, "_tfds_dataset", no_network)
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
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(directory))

    def not_prepared(builder, split, download):
        if download:
            raise AssertionError("must not download while a local copy exists")
        raise AssertionError("not prepared")

    monkeypatch.setattr(sources, "_tfds_dataset", not_prepared)
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


# Regimes: the data steps of METHOD.md section 6.

REGIME_LABELS = np.random.default_rng(5).integers(0, 10, 600)


def _regime(**options):
    options = {"num_classes": 10, "seed": 3, **options}
    return data.regime(REGIME_LABELS, **options)


def test_regime_subset_is_balanced_and_indexes_the_original_split():
    regime = _regime(examples_per_class=20, validation_fraction=0.1, label_noise=0.3)
    subset = np.concatenate([regime.train_indices, regime.validation_indices])
    assert len(subset) == len(set(subset)) == 200
    np.testing.assert_array_equal(np.bincount(REGIME_LABELS[subset], minlength=10), np.full(10, 20))
    # Indices into the original split: their true labels are the split's.
    np.testing.assert_array_equal(regime.train_true_labels, REGIME_LABELS[regime.train_indices])
    np.testing.assert_array_equal(
        regime.validation_true_labels, REGIME_LABELS[regime.validation_indices]
    )
    # Stratified: 10% of each class's 20.
    np.testing.assert_array_equal(
        np.bincount(regime.validation_true_labels, minlength=10), np.full(10, 2)
    )


def test_regime_flips_exactly_round_q_n_per_part_each_to_another_label():
    regime = _regime(max_examples=333, validation_fraction=0.15, label_noise=0.37)
    n_train, n_validation = len(regime.train_indices), len(regime.validation_indices)
    assert n_validation == round(0.15 * 333) and n_train == 333 - n_validation
    subset = np.sort(np.concatenate([regime.train_indices, regime.validation_indices]))
    assert len(set(subset)) == 333 and subset.max() < len(REGIME_LABELS)
    for labels, true in ((regime.train_labels, regime.train_true_labels),
                         (regime.validation_labels, regime.validation_true_labels)):
        assert np.sum(labels != true) == round(0.37 * len(true))
        assert labels.min() >= 0 and labels.max() < 10
    records = regime.noise_records()
    assert len(records) == round(0.37 * n_train) + round(0.37 * n_validation)
    for record in records:
        assert record["noisy_label"] != record["true_label"] == REGIME_LABELS[record["index"]]
    assert {record["part"] for record in records} == {"train", "validation"}
    # Symmetric noise: the new labels cover every other class.
    big = _regime(label_noise=0.5)
    assert set(big.train_labels[big.train_flipped]) == set(range(10))


def test_regime_max_examples_is_a_seeded_uniform_draw():
    draws = [_regime(max_examples=100, seed=seed).train_indices for seed in (3, 3, 4)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    assert len(set(draws[0])) == 100 and np.all(np.diff(draws[0]) > 0)
    assert not np.array_equal(draws[0], np.arange(100)), "a draw, not the first N"
    # Reaching past the first 100: drawn from the whole split.
    assert draws[0].max() > len(REGIME_LABELS) // 2
    np.testing.assert_array_equal(
        _regime(max_examples=len(REGIME_LABELS) + 5).train_indices, np.arange(len(REGIME_LABELS))
    )


def test_regime_steps_in_order_each_its_own_stream():
    noisy = _regime(examples_per_class=20, validation_fraction=0.2, label_noise=0.4)
    # The subset does not depend on the later steps, nor the split on the noise.
    clean = _regime(examples_per_class=20)
    split = _regime(examples_per_class=20, validation_fraction=0.2)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([noisy.train_indices, noisy.validation_indices])),
        clean.train_indices,
    )
    np.testing.assert_array_equal(noisy.validation_indices, split.validation_indices)
    np.testing.assert_array_equal(noisy.train_true_labels, split.train_labels)
    # Same seed, same draws (the mask rule is not an input); another seed differs.
    again = _regime(examples_per_class=20, validation_fraction=0.2, label_noise=0.4)
    for field in ("train_indices", "train_labels", "validation_indices", "validation_labels"):
        np.testing.assert_array_equal(getattr(noisy, field), getattr(again, field))
    other = _regime(examples_per_class=20, validation_fraction=0.2, label_noise=0.4, seed=4)
    assert not np.array_equal(noisy.validation_indices, other.validation_indices)
    assert not np.array_equal(noisy.train_flipped, other.train_flipped) or not np.array_equal(
        noisy.train_indices, other.train_indices
    )
    # No option: the whole split, in order, clean.
    plain = _regime()
    np.testing.assert_array_equal(plain.train_indices, np.arange(600))
    assert len(plain.validation_indices) == 0 and not plain.train_flipped.any()


@pytest.mark.parametrize(
    "options",
    [
        {"examples_per_class": 1000},
        {"max_examples": 10, "examples_per_class": 2},
        {"label_noise": 1.0},
        {"validation_fraction": 1.0},
        {"max_examples": 3, "validation_fraction": 0.1},  # holds out none
    ],
)
def test_regime_refuses_bad_options(options):
    with pytest.raises(ValueError):
        _regime(**options)


def test_noise_metrics_on_fixed_predictions():
    true = np.array([0, 1, 2, 3, 4, 5])
    noisy = np.array([9, 1, 8, 3, 4, 7])  # examples 0, 2 and 5 flipped
    predictions = np.array([9, 1, 2, 0, 4, 7])  # memorises 0 and 5; 2 of 3 clean right
    memorisation, clean = data.noise_metrics(predictions, true, noisy)
    assert memorisation == pytest.approx(2 / 3) and clean == pytest.approx(2 / 3)
    assert data.noise_metrics(true, true, true) == (None, 1.0)


def test_load_serves_the_chosen_indices_and_labels(idx_dir):
    idx_dir, arrays = idx_dir
    indices, labels = np.array([5, 0, 11, 3]), np.array([9, 8, 7, 6])
    images, served = _arrays(
        data.load("fashion_mnist", "train", data_dir=idx_dir, indices=indices, labels=labels)
    )
    all_images, all_labels = _arrays(data.load("fashion_mnist", "train", data_dir=idx_dir))
    np.testing.assert_array_equal(images, all_images[indices])
    np.testing.assert_array_equal(served, labels)
    _, kept = _arrays(data.load("fashion_mnist", "train", data_dir=idx_dir, indices=indices))
    np.testing.assert_array_equal(kept, all_labels[indices])
    np.testing.assert_array_equal(all_labels, arrays["train"][1])
    np.testing.assert_array_equal(data.split_labels("fashion_mnist", "train", data_dir=idx_dir), all_labels)
    # Shuffled epochs of the subset: keyed by (seed, epoch), the same subset each epoch.
    shuffled = data.load("fashion_mnist", "train", data_dir=idx_dir, indices=indices,
                         labels=labels, shuffle=True, seed=1, epochs=range(1, 3))
    _, epoch_labels = _arrays(shuffled)
    assert sorted(epoch_labels[:4]) == sorted(epoch_labels[4:]) == [6, 7, 8, 9]
    resumed = data.load("fashion_mnist", "train", data_dir=idx_dir, indices=indices,
                        labels=labels, shuffle=True, seed=1, epochs=range(2, 3))
    np.testing.assert_array_equal(_arrays(resumed)[1], epoch_labels[4:])
    with pytest.raises(ValueError):
        data.load("fashion_mnist", "train", data_dir=idx_dir, indices=[len(all_labels)])
