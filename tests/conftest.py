"""Shared test setup: quiet TensorFlow, XLA compiling fast, two logical CPU devices.

The logical devices must exist before TensorFlow initializes its runtime, so they
are configured when pytest starts (`pytest_configure`), before any test is collected.

XLA's CPU backend compiles without LLVM's optimizations here
(`--xla_backend_optimization_level=0`, in this process and in every process a test
starts, which inherit the environment): the tests compile hundreds of small
functions, each once, with XLA (the op's compiled parts, `jit_compile=True`, the
JAX half's `jax.jit`), and LLVM's passes were about a quarter of that time
(the JAX half of tests/test_backend_ops.py: 54 s, 39 s without them), and without
LLVM's expensive passes (`--xla_llvm_disable_expensive_passes`: test_backend_ops.py and
test_op_properties.py 42.2-42.8 s, against 44.0-45.2 s with them). The level
is how hard LLVM optimizes the machine code; the tests check values, never speed,
and pass at either level (`XLA_FLAGS= python -m pytest` runs them at XLA's
default). A caller's own XLA_FLAGS are kept.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.idx import write_idx  # noqa: E402


def pytest_configure(config):
    """Two logical CPU devices in each process that runs tests; xdist's controller,
    which runs none, does not import TensorFlow (seconds of CPU at the start)."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A tiny Fashion-MNIST-shaped dataset as IDX files: bright squares by class."""
    directory = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("test", 48)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            image[2 * label : 2 * label + 8, 4:12] = 250  # learnable signal
        write_idx(directory, images, labels, split)
    return directory


# The test files that take longest (`--durations=0`, 2026-12-06), longest first. The
# two workers take whole files in collection order (`--dist loadfile
# --no-loadscope-reorder`), so these go first and the many short files fill in
# around them: a long file taken last would leave one worker idle at the end. The
# order changes only how long the suite takes; a file missing here runs after them.
LONGEST_FIRST = (
    "test_jax_half.py", "test_train.py", "test_ray_engine.py", "test_pruning.py",
    "test_study.py", "test_backend_ops.py", "test_eval_cli.py", "test_ops.py",
    "test_backend_layers.py", "test_train_regime.py", "test_op_properties.py",
    "test_control_memory.py", "test_models.py", "test_layers.py", "test_insert.py",
    "test_adversarial.py", "test_runs.py", "test_train_workers.py", "test_saliency.py",
    "test_trainer.py", "test_quality.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
