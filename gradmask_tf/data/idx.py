"""IDX files, the format of LeCun's MNIST layout, read directly into NumPy arrays.

A dataset in this layout is four files in one directory: `train-images-idx3-ubyte`,
`train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each
optionally gzip-compressed (`.gz`). Splits are named as in tensorflow-datasets: `train`,
`test`, `all`, and slices of them joined by `+` (`"train[:90%]+test[-500:]"`).
"""

import gzip
import os
import re
import struct

import numpy as np

from gradmask_tf.errors import invalid

# Datasets published as the four IDX files of LeCun's MNIST layout.
DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

_FILE_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049

# One term of a split spec: `name`, `name[start:stop]`, bounds as ints or percents.
_SPLIT_TERM = re.compile(
    r"^(?P<name>\w+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$"
)


def first_line(error):
    """`"Type: first line of the message"`: how this package quotes another's error."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _file_names(split):
    prefix = _FILE_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_file(directory, file_name):
    for candidate in (file_name + ".gz", file_name):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def paths(directory, splits):
    """`{split: (images_path, labels_path)}`, or None unless every file is present."""
    if directory is None or not os.path.isdir(directory):
        return None
    found_paths = {}
    for split in splits:
        found = tuple(_find_file(directory, name) for name in _file_names(split))
        if None in found:
            return None
        found_paths[split] = found
    return found_paths


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_bytes(path, num_bytes=-1):
    try:
        with _open(path) as file:
            return file.read(num_bytes)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile and zlib.error are OSError.
        raise ValueError(
            f"Could not read IDX file {path}: {first_line(error)}. The file is "
            "corrupt or not gzip-compressed; replace it with a fresh copy."
        ) from error


def _parse_header(path, data, magic):
    """Checks the header of an IDX file and returns its dimensions."""
    rank = 3 if magic == _IMAGES_MAGIC else 1
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


def _read_images(path):
    data = _read_bytes(path)
    header_size, (count, rows, columns) = _parse_header(path, data, _IMAGES_MAGIC)
    expected = header_size + count * rows * columns
    if len(data) != expected:
        raise ValueError(
            f"IDX images file {path} is corrupt: its header announces {count} images "
            f"of {rows}x{columns} ({expected} bytes) but it holds {len(data)} bytes. "
            "Replace it with a fresh copy."
        )
    images = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    return images.reshape(count, rows, columns, 1)


def _read_labels(path):
    data = _read_bytes(path)
    header_size, (count,) = _parse_header(path, data, _LABELS_MAGIC)
    if len(data) != header_size + count:
        raise ValueError(
            f"IDX labels file {path} is corrupt: its header announces {count} labels "
            f"({header_size + count} bytes) but it holds {len(data)} bytes. Replace it "
            "with a fresh copy."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).astype(np.int32)


def _read_split(images_path, labels_path):
    images = _read_images(images_path)
    labels = _read_labels(labels_path)
    if len(images) != len(labels):
        raise ValueError(
            f"IDX files {images_path} and {labels_path} do not match: "
            f"{len(images)} images but {len(labels)} labels."
        )
    return images, labels


def count_examples(images_path):
    """The number of images an IDX images file announces (its header alone is read)."""
    data = _read_bytes(images_path, num_bytes=16)
    _, (count, _, _) = _parse_header(images_path, data, _IMAGES_MAGIC)
    return count


def _parse_split(split):
    """Turns a TFDS-style split spec into `[(split, start, stop), ...]`."""
    expected = (
        "'train', 'test', 'all', or slices of them joined by '+' such as "
        "'train[:90%]' or 'test[:1000]+train[-500:]'"
    )
    terms = []
    for term in re.split(r"\s*\+\s*", split.strip()):
        match = _SPLIT_TERM.match(term)
        if not match or match["name"] not in SPLITS + ("all",):
            raise invalid("split", expected, split)
        if match["name"] == "all":
            if match["start"] is not None or match["stop"] is not None:
                raise invalid("split", expected, split)
            terms.extend((name, None, None) for name in SPLITS)
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


def directory_has(directory, split):
    """Whether `directory` holds the IDX files that `split` reads."""
    try:
        names = {name for name, _, _ in _parse_split(split)}
    except ValueError:
        names = SPLITS  # With all four files present, `arrays` reports it.
    return paths(directory, sorted(names)) is not None


def arrays(directory, split):
    """`(images, labels)` of `split` read from `directory`: uint8 `[N, 28, 28, 1]` and
    int32 `[N]`, in the files' order.

    Raises:
        ValueError: If `split` is not a valid split spec, a slice bound is out of
            range, or a file is corrupt.
    """
    terms = _parse_split(split)
    split_paths = paths(directory, sorted({name for name, _, _ in terms}))
    split_arrays = {name: _read_split(*pair) for name, pair in split_paths.items()}
    images, labels = [], []
    for name, start, stop in terms:
        split_images, split_labels = split_arrays[name]
        count = len(split_labels)
        selection = slice(
            _resolve_bound(start, count, split), _resolve_bound(stop, count, split)
        )
        images.append(split_images[selection])
        labels.append(split_labels[selection])
    return np.concatenate(images), np.concatenate(labels)
