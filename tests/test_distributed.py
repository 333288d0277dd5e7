"""Tests of `gradmask_tf.distributed.fit_multi_worker`, on the two logical CPU devices.

A MirroredStrategy stands in for the multi-worker one: the loop is the same; the
end-to-end test of train.py runs two real workers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import GradientMask
from gradmask_tf.distributed import fit_multi_worker
from gradmask_tf.training import GradMaskModel


@pytest.fixture
def strategy():
    # Every strategy in a process numbers its collective ops from the same keys, so
    # they could meet another test's: reducing through one device uses none.
    return tf.distribute.MirroredStrategy(
        [device.name for device in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )


def _model(strategy):
    with strategy.scope():
        inputs = keras.Input((4,))
        x = GradientMask("mean", name="mask")(keras.layers.Dense(6)(inputs))
        model = GradMaskModel(inputs, keras.layers.Dense(2)(x))
        model.compile(
            optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    return model


def _dataset(num_examples):
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(num_examples, 4)).astype("float32"), rng.integers(0, 2, num_examples))
    )


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append((epoch, sorted(logs)))


def test_runs_the_missing_epochs_with_the_model_train_step(strategy, tmp_path):
    model = _model(strategy)
    before = [weight.copy() for weight in model.get_weights()]
    callback = _Epochs()
    all_logs = fit_multi_worker(
        model, strategy, _dataset(20), epochs=3, initial_epoch=1, batch_size=8,
        callbacks=[callback], log_dir=tmp_path,
    )
    assert [epoch for epoch, _ in callback.seen] == [1, 2]
    assert len(all_logs) == 2
    assert {"loss", "gradient_norm", "kept_fraction/mask"} <= set(all_logs[-1])
    assert 0 < all_logs[-1]["kept_fraction/mask"] < 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert list(tmp_path.glob("*tfevents*"))


def test_rejects_batches_that_do_not_split_or_do_not_fit(strategy):
    model = _model(strategy)
    with pytest.raises(ValueError, match="multiple of the 2 replicas"):
        fit_multi_worker(model, strategy, _dataset(20), epochs=1, batch_size=7)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        fit_multi_worker(model, strategy, _dataset(6), epochs=1, batch_size=8)
