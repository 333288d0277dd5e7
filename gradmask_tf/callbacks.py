"""Training callbacks: the mask warm-up and the run directory's per-epoch record."""

import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from gradmask_tf import runs
from gradmask_tf.data import noise_metrics
from gradmask_tf.training import set_masks_enabled


class MaskSchedule(keras.callbacks.Callback):
    """Turns the masks on at `start_epoch` (0-based), off before it."""

    def __init__(self, start_epoch):
        super().__init__()
        self.start_epoch = start_epoch

    def on_epoch_begin(self, epoch, logs=None):
        set_masks_enabled(self.model, epoch >= self.start_epoch)


class RunRecorder(keras.callbacks.Callback):
    """Records each finished epoch in the run directory (`runs.write_checkpoint`).

    Put it last among the callbacks: it records what the others added to the logs.

    Args:
      run_dir: The run directory.
      history: History rows of the epochs already run (when resuming).
      write: False on workers that must not write (only the chief writes); the
        rows are kept all the same.
    """

    def __init__(self, run_dir, history=(), write=True, files=()):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.history_rows = list(history)
        self.write = write
        self.files = tuple(files)
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["epoch_seconds"] = time.perf_counter() - self._epoch_start
        self.history_rows.append(row)
        if self.write:
            runs.write_checkpoint(
                self.run_dir, epoch + 1, self.model, self.history_rows, files=self.files
            )


def inference(model):
    """`images -> outputs` of `model` at inference, traced once per input shape (without
    autograph, as Keras traces its steps)."""
    return tf.function(lambda images: model(images, training=False), autograph=False)


def predicted_classes(model, dataset, predict=None):
    """The model's predicted class of each example of a batched `(image, label)` dataset;
    `predict` is an `inference(model)` to reuse, else one is made."""
    predict = predict or inference(model)
    batches = [np.argmax(np.asarray(predict(images)), axis=-1) for images, _ in dataset]
    return np.concatenate(batches) if batches else np.zeros(0, np.int64)


def dataset_labels(dataset):
    return np.concatenate([np.asarray(labels) for _, labels in dataset])


def accuracy(model, dataset, predict=None):
    return float(np.mean(predicted_classes(model, dataset, predict) == dataset_labels(dataset)))


def best_epoch(history_rows, monitor="val_accuracy"):
    """`(epoch, value)` of the first epoch with the highest `monitor`, `(0, -inf)` if none."""
    best = (0, -math.inf)
    for row in history_rows:
        if monitor in row and row[monitor] > best[1]:
            best = (int(row["epoch"]), float(row[monitor]))
    return best


class EpochEvaluation(keras.callbacks.Callback):
    """Adds each dataset's accuracy to the epoch's logs, and keeps the best weights.

    Args:
      datasets: `{log key: batched dataset}`, such as `{"val_accuracy": ...,
        "test_accuracy": ...}`.
      best_weights: Where to save the weights of the epoch with the highest
        `val_accuracy` (atomically), or None.
      history: History rows of the epochs already run: the best so far is theirs.
      write: False on workers that must not write.
      noise: Under label noise, `(dataset, true_labels, noisy_labels)` of the training
        part (batched, unshuffled, in the order of the labels): adds `memorisation` and
        `clean_train_accuracy` (`data.noise_metrics`) to the epoch's logs, so the
        history shows when the flipped labels are learned; None otherwise.
    """

    def __init__(self, datasets, best_weights=None, history=(), write=True, noise=None):
        super().__init__()
        self.datasets = dict(datasets)
        self.best_weights = best_weights
        self.best = best_epoch(history)[1]
        self.write = write
        self.noise = noise
        self._predict = None

    def on_epoch_end(self, epoch, logs=None):
        if self._predict is None:
            self._predict = inference(self.model)
        logs = logs if logs is not None else {}
        for key, dataset in self.datasets.items():
            logs[key] = accuracy(self.model, dataset, self._predict)
        if self.noise is not None:
            dataset, true_labels, noisy_labels = self.noise
            predictions = predicted_classes(self.model, dataset, self._predict)
            values = noise_metrics(predictions, true_labels, noisy_labels)
            for key, value in zip(("memorisation", "clean_train_accuracy"), values):
                if value is not None:
                    logs[key] = value
        if self.best_weights is not None and logs["val_accuracy"] > self.best:
            self.best = logs["val_accuracy"]
            if self.write:
                runs.save_weights(self.model, self.best_weights)
