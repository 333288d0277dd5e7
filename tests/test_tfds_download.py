"""TensorFlow Datasets' real download-and-prepare path, its download served locally.

No network in tests: the one function that opens a URL is patched to serve Debian's
Fashion-MNIST files, cut to their first examples (preparing all 70,000 took 20 s),
and the builder is told their checksums (Debian recompressed the gzip files, so
TFDS's own registered checksums do not match them either). Everything
else is TFDS's own code: download manager, checksum verification, extraction,
example generation, the prepared copy and `as_dataset`. A dependency that path needs
and the pinned requirements lack fails here, not on a user's machine.
"""

import contextlib
import gzip
import pathlib
import struct
import types

import numpy as np
import pytest

from gradmask_tf import data
from gradmask_tf.data import sources

tfds = pytest.importorskip("tensorflow_datasets")

DEBIAN = pathlib.Path(data.DEBIAN_FASHION_MNIST_DIR)
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

pytestmark = pytest.mark.skipif(
    not all((DEBIAN / name).is_file() for name in FILES),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


# How many examples of each split are served.
SERVED = {"train": 1_000, "t10k": 500}


def _cut(source, target, count):
    """The IDX file `source` (gzip) with only its first `count` records, as `target`."""
    data = gzip.decompress(source.read_bytes())
    dimensions = data[3]
    header = 4 + 4 * dimensions
    sizes = struct.unpack(f">{dimensions}I", data[4:header])
    record = int(np.prod(sizes[1:]))
    cut = data[:4] + struct.pack(f">{dimensions}I", count, *sizes[1:])
    target.write_bytes(gzip.compress(cut + data[header:header + count * record], mtime=0))


@pytest.fixture
def served_fashion_mnist(monkeypatch, tmp_path):
    """Serves the first examples of Debian's files at the builder's URLs (a directory
    of them, `served_fashion_mnist.directory`); yields the URLs fetched."""
    from tensorflow_datasets.core.download import checksums, downloader
    from tensorflow_datasets.image_classification import mnist
    from tensorflow_datasets.image_classification.mnist import FashionMNIST

    directory = tmp_path / "served"
    directory.mkdir()
    for name in FILES:
        _cut(DEBIAN / name, directory / name, SERVED[name.split("-")[0]])
    urls = {FashionMNIST.URL + name: directory / name for name in FILES}
    # The builder reads as many examples as the full files hold.
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", SERVED["train"])
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", SERVED["t10k"])
    fetched = []

    @contextlib.contextmanager
    def open_url(url, **kwargs):
        path = urls[url]  # A KeyError here: the builder asked for a file we do not serve.
        fetched.append(url)
        response = types.SimpleNamespace(url=url, headers={"Content-length": path.stat().st_size})
        with path.open("rb") as file:
            yield response, iter(lambda: file.read(1 << 20), b"")

    monkeypatch.setattr(downloader, "_open_url", open_url)
    monkeypatch.setattr(
        FashionMNIST,
        "url_infos",
        {url: checksums.compute_url_info(path) for url, path in urls.items()},
    )
    # Neither the prepared-copy fallback nor the offline switch may short-cut the download.
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", "/nonexistent")
    monkeypatch.delenv("GRADMASK_OFFLINE", raising=False)
    yield types.SimpleNamespace(urls=fetched, directory=directory)


def _examples(images, labels):
    """The examples as a sorted list of (label, pixel bytes): order-free comparison."""
    pixels = np.round(images * 255).astype(np.uint8)
    return sorted((int(label), image.tobytes()) for image, label in zip(pixels, labels))


def test_download_and_prepare_with_the_pinned_requirements(served_fashion_mnist, tmp_path):
    data_dir = tmp_path / "tensorflow_datasets"
    prepared = data.as_numpy(data.load("fashion_mnist", "test", data_dir=str(data_dir)))

    assert sorted(served_fashion_mnist.urls) == sorted(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + name for name in FILES
    )
    assert list(data_dir.glob("fashion_mnist/*/dataset_info.json"))
    # The prepared copy holds exactly the served test examples (TFDS fixes its own order).
    served = data.as_numpy(data.load("fashion_mnist", "test",
                                     data_dir=str(served_fashion_mnist.directory)))
    assert len(prepared[1]) == SERVED["t10k"]
    assert _examples(*prepared) == _examples(*served)
    # A second load reads the prepared copy without fetching again.
    data.load("fashion_mnist", "train", data_dir=str(data_dir), max_examples=8)
    assert len(served_fashion_mnist.urls) == len(FILES)
