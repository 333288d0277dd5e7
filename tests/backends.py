"""Running the backend-neutral test files on both backends: TensorFlow in pytest's
workers, JAX in one subprocess.

A backend test file (`JAX_FILES`) holds backend-neutral tests, which pytest runs on
TensorFlow; `tests/test_jax_half.py` runs them all again in one fresh interpreter with
`KERAS_BACKEND=jax` and TensorFlow blocked (`run_jax_half`), but those a file names
in its `TENSORFLOW_ONLY`; `tests/jax_gpu_check.py`, not a `test_*` file, runs there
only. That half fails, never skips, when JAX is missing, and checks that it ran every
test it was given. `vjp` takes a gradient on either backend.
"""

import re
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

from tests.helpers import ROOT, environment

# Blocks TensorFlow in the JAX process: `import tensorflow` raises ImportError.
# (A finder rather than `sys.modules["tensorflow"] = None`: Keras 3.15's check for a
# TensorFlow graph, which its preprocessing layers such as `Normalization` run on
# every call, reads any `tensorflow` key in sys.modules as an imported TensorFlow and
# imports it, so a None there breaks `build_model` on JAX.)
BLOCK_TENSORFLOW = r"""
import importlib.abc, sys
class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked in this process")
sys.meta_path.insert(0, _BlockTensorFlow())
"""

_RUN_PYTEST = BLOCK_TENSORFLOW + r"""
import pytest
try:
    import tensorflow
except ImportError:
    print("TENSORFLOW BLOCKED")
# -n 0: in this one process (pyproject's addopts would start two xdist workers, which
# the finder above does not reach).
code = pytest.main(["-q", "-p", "no:cacheprovider", "--noconftest", "-n", "0", *sys.argv[1:]])
assert not any(name.split(".")[0] == "tensorflow" for name in sys.modules), "imported"
sys.exit(code)
"""


def vjp(function, x, upstream, compiled=False):
    """The gradient that `function` sends down to `x` for `upstream`, as NumPy.

    `compiled` compiles it as Keras does: `tf.function(jit_compile=True)` without
    autograph (as Keras traces its step) on TensorFlow, `jax.jit` on JAX.
    """
    if keras.backend.backend() == "jax":
        import jax

        def gradient(x, upstream):
            return jax.vjp(function, x)[1](upstream)[0]

        gradient = jax.jit(gradient) if compiled else gradient
        return np.asarray(gradient(x, upstream))
    import tensorflow as tf

    def gradient(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
        return tape.gradient(y, x, output_gradients=upstream)

    gradient = tf.function(gradient, jit_compile=True, autograph=False) if compiled else gradient
    return gradient(tf.constant(x), tf.constant(upstream)).numpy()


# The backend-neutral test files, run again on JAX by tests/test_jax_half.py.
JAX_FILES = ("test_backend_ops.py", "test_backend_layers.py", "test_op_properties.py",
             "test_saved_models.py", "jax_gpu_check.py")  # the last on JAX only


def jax_node_ids(session):
    """The ids of every test of `JAX_FILES` but those a file names in its
    `TENSORFLOW_ONLY` (they start a JAX process themselves), collected afresh."""
    ids = []
    for name in JAX_FILES:
        module = pytest.Module.from_parent(session, path=ROOT / "tests" / name)
        leave_out = getattr(module.obj, "TENSORFLOW_ONLY", ())
        ids += [item.nodeid for item in module.collect() if item.originalname not in leave_out]
    return ids


def run_other_backend(code, backend, timeout=300):
    """Runs Python `code` with `KERAS_BACKEND=backend` (TensorFlow blocked on JAX)."""
    prelude = BLOCK_TENSORFLOW if backend == "jax" else ""
    process = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env=environment(KERAS_BACKEND=backend, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert process.returncode == 0, (process.stdout + process.stderr)[-6000:]
    return process.stdout


def _compilation_cache(directory):
    """JAX's compilation cache in `directory` (empty), every computation kept.

    The tests compile many computations more than once, each time from a new function
    (`vjp`'s `jax.jit` of a new closure, an eager loop), which JAX's cache in memory
    does not recognise; its cache on disk keys them by their HLO, so the second
    compilation of the same computation is read back (the JAX half of
    test_backend_ops.py and test_op_properties.py: 32.5 s, 25.7 s with it). etils,
    which writes it, is told that TensorFlow is not there (it would look for it).
    """
    return dict(
        JAX_COMPILATION_CACHE_DIR=str(directory),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        EPATH_USE_TF="false",
    )


def run_jax_half(ids, timeout=600):
    """Runs the tests `ids` on JAX with TensorFlow blocked; fails unless all pass."""
    assert ids, "no test to run on JAX"
    with tempfile.TemporaryDirectory() as cache:
        process = subprocess.run(
            [sys.executable, "-c", _RUN_PYTEST, *ids],
            cwd=ROOT,
            env=environment(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", **_compilation_cache(cache)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-6000:]
    assert "TENSORFLOW BLOCKED" in output, output[-3000:]
    summary = re.search(r"^(\d+) passed(.*) in ", output, re.M)
    assert summary, output[-3000:]
    # Every test given ran and passed: none skipped, deselected or missing.
    assert int(summary.group(1)) == len(ids), output[-3000:]
    assert "skipped" not in summary.group(2) and "deselected" not in summary.group(2)
    return output
