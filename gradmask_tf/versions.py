"""The installed versions a result was produced with, recorded beside it."""

import importlib.metadata
import platform

CORE_PACKAGES = ("tensorflow", "keras", "numpy", "gradmask_tf")


def library_versions(*packages):
    """Python's version and the installed versions of the core packages and `packages`.

    A package that is not installed maps to None.
    """
    found = {"python": platform.python_version()}
    for name in (*CORE_PACKAGES, *packages):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
