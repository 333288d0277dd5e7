"""The private TensorFlow and Keras hooks gradmask_tf relies on, in one place.

Neither library exports what these functions need. Each hook is checked by
`tests/test_compat.py`, so an upgrade that removes or changes one fails there, by
name, rather than deep inside a training step.
"""

import contextlib
import functools


def in_xla_context():
    """Whether the caller is being traced for XLA (`tf.function(jit_compile=True)`).

    Ops without an XLA kernel must not be used there. Reads
    `tf.__internal__.get_enclosing_xla_context`, which TensorFlow exports only under
    its internal namespace.
    """
    import tensorflow as tf  # Here, not at the top: `is_functional` serves any backend.

    return tf.__internal__.get_enclosing_xla_context() is not None


@functools.cache
def functional_class():
    """Keras's private `Functional` class: what `keras.Model(inputs, outputs)` is.

    Found by building a throwaway model, so no private module is imported. Keras is
    imported here, not at the top, so that `ops.py` stays free of Keras.
    """
    import keras

    inputs = keras.Input((1,))
    return type(keras.Model(inputs, inputs))


def is_functional(model):
    """Whether `model` has a functional graph (functional models and subclasses of them)."""
    return isinstance(model, functional_class())


@contextlib.contextmanager
def op_determinism(enabled):
    """Deterministic TensorFlow ops inside the block when `enabled`; the previous
    setting afterwards.

    TensorFlow exports only `tf.config.experimental.enable_op_determinism`; reading the
    setting and turning it off again are in `tensorflow.python.framework.config`.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as framework_config

    before = framework_config.is_op_determinism_enabled()
    if enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not before:
            framework_config.disable_op_determinism()
