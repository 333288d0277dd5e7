"""TensorFlow Datasets' real download-and-prepare path, its download served locally.

No network in tests: the one function that opens a URL is patched to serve Debian's
Fashion-MNIST files, and the builder is told their checksums (Debian recompressed
the gzip files, so TFDS's own registered checksums do not match them). Everything
else is TFDS's own code: download manager, checksum verification, extraction,
example generation, the prepared copy and `as_dataset`. A dependency that path needs
and the pinned requirements lack fails here, not on a user's machine.
"""

import contextlib
import pathlib
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


@pytest.fixture
def served_fashion_mnist(monkeypatch):
    """Serves Debian's files at the builder's URLs; yields the URLs fetched."""
    from tensorflow_datasets.core.download import checksums, downloader
    from tensorflow_datasets.image_classification.mnist import FashionMNIST

    urls = {FashionMNIST.URL + name: DEBIAN / name for name in FILES}
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
    yield fetched


def _examples(images, labels):
    """The examples as a sorted list of (label, pixel bytes): order-free comparison."""
    pixels = np.round(images * 255).astype(np.uint8)
    return sorted((int(label), image.tobytes()) for image, label in zip(pixels, labels))


def test_download_and_prepare_with_the_pinned_requirements(served_fashion_mnist, tmp_path):
    data_dir = tmp_path / "tensorflow_datasets"
    prepared = data.as_numpy(data.load("fashion_mnist", "test", data_dir=str(data_dir)))

    assert sorted(served_fashion_mnist) == sorted(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + name for name in FILES
    )
    assert list(data_dir.glob("fashion_mnist/*/dataset_info.json"))
    # The prepared copy holds exactly the served test examples (TFDS fixes its own order).
    served = data.as_numpy(data.load("fashion_mnist", "test", data_dir=str(DEBIAN)))
    assert len(prepared[1]) == 10_000
    assert _examples(*prepared) == _examples(*served)
    # A second load reads the prepared copy without fetching again.
    data.load("fashion_mnist", "train", data_dir=str(data_dir), max_examples=8)
    assert len(served_fashion_mnist) == len(FILES)
