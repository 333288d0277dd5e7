"""Running a test file on both backends: TensorFlow here, JAX in a subprocess.

A backend test file (`tests/test_backend_*.py`) holds backend-neutral tests, which
pytest runs here on TensorFlow, and one test, `test_jax_half`, that runs the same
tests again in a fresh interpreter with `KERAS_BACKEND=jax` and TensorFlow blocked
(`run_jax_half`). That half fails, never skips, when JAX is missing, and checks that
it ran every test it was given. `vjp` takes a gradient on either backend.
"""

import re
import subprocess
import sys

import keras
import numpy as np

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

    `compiled` compiles it as Keras does: `tf.function(jit_compile=True)` on
    TensorFlow, `jax.jit` on JAX.
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

    gradient = tf.function(gradient, jit_compile=True) if compiled else gradient
    return gradient(tf.constant(x), tf.constant(upstream)).numpy()


def node_ids(request, leave_out=()):
    """The ids of every test of the calling test's module but `test_jax_half`.

    Collected afresh from the module, so `-k test_jax_half` runs the whole half;
    `leave_out` names the tests that run from the TensorFlow process only.
    """
    module = request.node.parent
    return [
        item.nodeid
        for item in module.collect()
        if item.name != "test_jax_half" and item.originalname not in leave_out
    ]


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


def run_jax_half(ids, timeout=600):
    """Runs the tests `ids` on JAX with TensorFlow blocked; fails unless all pass."""
    assert ids, "no test to run on JAX"
    process = subprocess.run(
        [sys.executable, "-c", _RUN_PYTEST, *ids],
        cwd=ROOT,
        env=environment(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"),
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
