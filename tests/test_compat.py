"""The private hooks behind `gradmask_tf.compat` still exist and mean what we rely on.

A failure here after a TensorFlow or Keras upgrade names the hook to replace.
"""

import keras
import tensorflow as tf

from gradmask_tf import compat


def test_tensorflow_still_exports_the_xla_context_hook():
    assert callable(getattr(tf.__internal__, "get_enclosing_xla_context", None)), (
        "tf.__internal__.get_enclosing_xla_context is gone: replace it in "
        "gradmask_tf/compat.py (ops.py uses it to avoid NthElement under XLA)"
    )


def test_xla_context_is_seen_only_under_jit_compile():
    def traced_in_xla():
        return tf.constant(compat.in_xla_context())

    assert not compat.in_xla_context()  # eager
    assert not tf.function(traced_in_xla)().numpy()
    assert tf.function(traced_in_xla, jit_compile=True)().numpy()


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_functional_class_is_what_functional_models_are_and_subclasses_are_not():
    functional = compat.functional_class()
    assert functional is not keras.Model and issubclass(functional, keras.Model)
    inputs = keras.Input((3,))
    assert compat.is_functional(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    assert not compat.is_functional(_Subclassed())


def test_op_determinism_is_set_inside_and_put_back():
    from tensorflow.python.framework import config as framework_config

    assert not framework_config.is_op_determinism_enabled()
    with compat.op_determinism(True):
        assert framework_config.is_op_determinism_enabled()
    assert not framework_config.is_op_determinism_enabled()
