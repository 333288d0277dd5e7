"""Shared helpers of the evaluations: matplotlib without a display, atomic files."""

import importlib.metadata


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path, dpi=130):
    """Writes a matplotlib figure as PNG, atomically, and closes it."""
    from gradmask_tf.runs import atomic_write

    try:
        atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=dpi), binary=True)
    finally:
        pyplot().close(figure)


def versions(*packages):
    """Installed versions of TensorFlow, Keras, gradmask_tf and `packages`."""
    names = ("tensorflow", "keras", "gradmask_tf", "numpy", *packages)
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
