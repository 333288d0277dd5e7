"""Shared helpers of the evaluations: matplotlib without a display, atomic files."""

import importlib.metadata
import os
import pathlib
import tempfile


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path, dpi=130):
    """Writes a matplotlib figure as PNG through a temporary file and a rename."""
    plt = pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(descriptor)
    try:
        figure.savefig(temporary, dpi=dpi, format="png")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)


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
