"""Tests of `gradmask_tf.distributed.fit_multi_worker`, on the two logical CPU devices.

A MirroredStrategy stands in for the multi-worker one: the loop is the same; the
end-to-end test of train.py runs two real workers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradmask_tf import GradientMask, data
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
    all_logs = fit_multi_worker(  # two epochs of 10 examples: one step each
        model, strategy, _dataset(20), epochs=3, initial_epoch=1, batch_size=8,
        callbacks=[callback], log_dir=tmp_path,
    )
    assert [epoch for epoch, _ in callback.seen] == [1, 2]
    assert len(all_logs) == 2
    assert {"loss", "gradient_norm", "kept_fraction/mask"} <= set(all_logs[-1])
    assert 0 < all_logs[-1]["kept_fraction/mask"] < 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert list(tmp_path.glob("*tfevents*"))


def _image_model(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((28, 28, 1))
        x = keras.layers.Dense(6)(keras.layers.Flatten()(inputs))
        model = GradMaskModel(inputs, keras.layers.Dense(10)(GradientMask("mean")(x)))
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return model


def test_a_resumed_loop_trains_on_the_epochs_it_runs(strategy, idx_dir):
    def epochs(numbers):
        return data.load(
            "fashion_mnist", "train", data_dir=str(idx_dir), max_examples=36, shuffle=True,
            seed=1, epochs=numbers,
        )

    def train(*parts):
        model = _image_model(strategy)
        for start, stop, numbers in parts:  # a part is a process: its epochs, its data
            fit_multi_worker(
                model, strategy, epochs(numbers), epochs=stop, initial_epoch=start,
                batch_size=8,
            )
        return model.get_weights()

    uninterrupted = train((0, 3, range(0, 3)))
    resumed = train((0, 1, range(0, 1)), (1, 3, range(1, 3)))
    for got, expected in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(got, expected)
    # Epochs 0 and 1's data where 1 and 2 are due (the old loop's restart) end elsewhere.
    stale = train((0, 1, range(0, 1)), (1, 3, range(0, 2)))
    assert any(not np.array_equal(a, b) for a, b in zip(stale, uninterrupted))


def test_rejects_batches_that_do_not_split_or_do_not_fit(strategy):
    model = _model(strategy)
    with pytest.raises(ValueError, match="multiple of the 2 replicas"):
        fit_multi_worker(model, strategy, _dataset(20), epochs=1, batch_size=7)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        fit_multi_worker(model, strategy, _dataset(6), epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="epochs still to run"):
        fit_multi_worker(model, strategy, _dataset(21), epochs=2, batch_size=8)
