"""Shared test setup: quiet TensorFlow and two logical CPU devices.

The logical devices must exist before TensorFlow initializes its runtime, so they
are configured when pytest imports this file, before any test runs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
