"""Tests of `gradmask_tf.callbacks`: the mask warm-up and the per-epoch run record."""

import keras
import numpy as np

from gradmask_tf import GradientMask, runs
from gradmask_tf.callbacks import MaskSchedule, RunRecorder
from gradmask_tf.training import GradMaskModel, mask_layers


def _model():
    inputs = keras.Input((4,))
    x = GradientMask("mean", name="mask")(keras.layers.Dense(6)(inputs))
    model = GradMaskModel(inputs, keras.layers.Dense(2)(x))
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 2, 8)


def test_mask_schedule_turns_the_masks_on_at_the_start_epoch():
    model = _model()
    schedule = MaskSchedule(start_epoch=2)
    schedule.set_model(model)
    enabled = []
    for epoch in range(4):
        schedule.on_epoch_begin(epoch)
        enabled.append(bool(mask_layers(model)[0].enabled.numpy()))
    assert enabled == [False, False, True, True]


def test_mask_schedule_during_fit_reports_unmasked_epochs():
    model = _model()
    history = model.fit(*_data(), epochs=2, verbose=0, callbacks=[MaskSchedule(1)])
    kept = history.history["kept_fraction/mask"]
    assert kept[0] == 1.0 and kept[1] < 1.0


def test_run_recorder_checkpoints_each_epoch_and_keeps_the_history(tmp_path):
    recorder = RunRecorder(tmp_path, history=[{"epoch": 1, "loss": 9.0, "epoch_seconds": 1.0}])
    model = _model()
    model.fit(*_data(), epochs=3, initial_epoch=1, verbose=0, callbacks=[recorder])
    rows = recorder.history_rows
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert {"loss", "gradient_norm", "kept_fraction/mask", "epoch_seconds"} <= set(rows[-1])
    assert all(row["epoch_seconds"] > 0 for row in rows)
    assert runs.read_history(tmp_path) == rows
    epoch, checkpoint = runs.latest_checkpoint(tmp_path)
    assert epoch == 3 and runs.restore_checkpoint(_model(), checkpoint) == rows


def test_run_recorder_of_a_worker_that_must_not_write(tmp_path):
    recorder = RunRecorder(tmp_path / "run", write=False)
    _model().fit(*_data(), epochs=2, verbose=0, callbacks=[recorder])
    assert [row["epoch"] for row in recorder.history_rows] == [1, 2]
    assert not (tmp_path / "run").exists()
