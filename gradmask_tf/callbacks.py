"""Training callbacks: the mask warm-up and the run directory's per-epoch record."""

import pathlib
import time

import keras

from gradmask_tf import runs
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

    def __init__(self, run_dir, history=(), write=True):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.history_rows = list(history)
        self.write = write
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row["epoch_seconds"] = time.perf_counter() - self._epoch_start
        self.history_rows.append(row)
        if self.write:
            runs.write_checkpoint(self.run_dir, epoch + 1, self.model, self.history_rows)
