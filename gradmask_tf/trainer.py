"""A training run as a Python call: `run(config) -> metrics`.

    from gradmask_tf.config import RunConfig
    from gradmask_tf.trainer import run

    metrics = run(RunConfig(mask_rule="mean", epochs=3, output_dir="runs/mean"))

The run directory receives `config.json` (`RunConfig.to_dict()` and the library
versions), `history.csv` (one row per epoch), `logs/` (TensorBoard), `checkpoints/`, and
at the end `model.keras`, `saved_model/` (signature `serving_default`: float images in
[0, 1] to `probabilities` and `logits`) and `metrics.json`. Run the same configuration
again after an interruption and it resumes from the last finished epoch; a finished run
is kept unless `overwrite=True`. `train.py` is the command line over this module.

`prepare(config)` checks everything that can be checked before a file is written (the
settings, the run directory, the data) and raises `ConfigError` with one line;
`Prepared.train()` then trains. The global state a run changes (the dtype policy, op
determinism) is put back when it ends; logical CPU devices (`num_cpu_devices`) and
multi-worker collectives cannot be, so such runs belong in their own process.
"""

import contextlib
import pathlib
import shutil
import sys
import time

import keras
import tensorflow as tf

from gradmask_tf import compat, quality, runs
from gradmask_tf.callbacks import EpochEvaluation, MaskSchedule, RunRecorder
from gradmask_tf.config import ARCHITECTURES, RESUME_FREE, ConfigError, RunConfig
from gradmask_tf.distributed import fit_multi_worker
from gradmask_tf.models import application_constructor, build_model
from gradmask_tf.optimizers import make_optimizer
from gradmask_tf.run_data import load_data
from gradmask_tf.run_results import BEST_WEIGHTS, finalize, write_regime
from gradmask_tf.versions import library_versions


def run(config):
    """Trains `config` (a `RunConfig`) to the end; returns its `metrics.json` values.

    Raises:
      ConfigError: A setting, the run directory or the data cannot be used (one line;
        nothing is written).
    """
    return prepare(config).train()


def prepare(config):
    """Checks `config`, its run directory and its data; writes nothing.

    Returns:
      A `Prepared` run, whose `train()` runs it.

    Raises:
      ConfigError: One line naming what cannot be used.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"expected a gradmask_tf.config.RunConfig, received {type(config).__name__}")
    config = config.checked()
    _check_model(config.model)
    run_dir, state = _resolve_run_dir(config)
    initial_epoch, checkpoint = (0, None) if state != "resume" else _latest(run_dir)
    jit_compile, strategy = _configure_runtime(config)
    loaded = load_data(config, jit_compile, initial_epoch)
    return Prepared(config, run_dir, state, initial_epoch, checkpoint, jit_compile,
                    strategy, loaded)


def _check_model(model):
    if model in ARCHITECTURES:
        return
    try:
        if application_constructor(model) is not None:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"flag --model={model}: expected one of {', '.join(ARCHITECTURES)} or "
        "keras.applications.<Name> (for example keras.applications.ResNet50)")


def _resolve_run_dir(config):
    """The run directory and what to do with it: "new", "resume" or "overwrite"."""
    run_dir = pathlib.Path(config.output_dir or config.run_dir_name)
    try:
        state = runs.prepare_run_dir(
            run_dir, config.to_dict(), overwrite=config.overwrite, may_differ=RESUME_FREE)
    except runs.RunDirectoryError as error:
        raise ConfigError(str(error)) from None
    return run_dir, state


def _latest(run_dir):
    """`(epoch, path)` of the newest intact checkpoint, `(0, None)` if none; a damaged
    one is moved aside and named in one line on stderr."""
    try:
        return runs.checkpoint_to_resume(
            run_dir, warn=lambda line: print(f"train.py: {line}", file=sys.stderr, flush=True))
    except runs.RunDirectoryError as error:
        raise ConfigError(str(error)) from None


def _configure_runtime(config):
    """`(jit_compile, strategy)`, set up before any TensorFlow op runs."""
    if config.num_cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config.num_cpu_devices)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    jit_compile = {"auto": has_gpu, "true": True, "false": False}[config.jit_compile]
    if config.strategy == "mirrored":
        devices = None
        if not has_gpu:
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return jit_compile, tf.distribute.MirroredStrategy(devices)
    if config.strategy == "multi_worker":
        return jit_compile, tf.distribute.MultiWorkerMirroredStrategy()
    return jit_compile, tf.distribute.get_strategy()


def _is_chief(config, strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or config.strategy != "multi_worker":
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


@contextlib.contextmanager
def global_options(config):
    """The seed, op determinism and the dtype policy for the run; the latter two are
    put back afterwards."""
    policy = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with compat.op_determinism(config.deterministic):
            yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def compiled_model(config, info, jit_compile, steps_per_epoch):
    """A fresh model, compiled, under whatever strategy scope is current."""
    model = build_model(
        config.model,
        input_shape=info.image_shape,
        num_classes=info.num_classes,
        mask_rule=config.mask_rule,
        dataset=config.dataset,
        placement=config.mask_placement,
        seed=config.seed,
        **config.mask_options,
    )
    model.compile(
        optimizer=make_optimizer(
            config.optimizer, _learning_rate(config, steps_per_epoch), momentum=config.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    model.mask_metrics_every = config.mask_metrics_every
    return model


def _learning_rate(config, steps_per_epoch):
    """The learning rate or its schedule, keyed by the optimizer's iterations (so a
    resumed run continues it exactly)."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.0)
    return config.learning_rate


class Prepared:
    """A checked run, ready to train (`prepare`'s result)."""

    def __init__(self, config, run_dir, state, initial_epoch, checkpoint, jit_compile,
                 strategy, loaded):
        self.config = config
        self.run_dir = run_dir
        self.state = state
        self.initial_epoch = initial_epoch
        self.checkpoint = checkpoint
        self.jit_compile = jit_compile
        self.strategy = strategy
        self.loaded = loaded

    def model(self):
        """A fresh compiled model of this run (outside any strategy)."""
        loaded = self.loaded
        return compiled_model(self.config, loaded.info, self.jit_compile, loaded.steps_per_epoch)

    def train(self):
        """Trains the epochs still to run and finishes the run; returns its metrics
        (None on a worker that is not the chief)."""
        config, run_dir, loaded = self.config, self.run_dir, self.loaded
        with global_options(config):
            chief = _is_chief(config, self.strategy)
            if chief:
                self._start_run_dir()
                write_regime(run_dir, loaded.regime, config.label_noise)
            with self.strategy.scope():
                model = self.model()
            history = self._resume(model, chief)
            recorder = RunRecorder(run_dir, history, write=chief, files=[BEST_WEIGHTS])
            seconds = self._fit(model, self._callbacks(recorder, chief), chief)
            if not chief:
                return None
            final = self._plain_copy(model)
            return finalize(self, final, recorder.history_rows, seconds)

    def _start_run_dir(self):
        """Empties the directory where asked and records the configuration and versions."""
        if self.state == "overwrite":
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.state != "resume":
            runs.atomic_write_json(
                self.run_dir / runs.CONFIG,
                {"flags": self.config.to_dict(), "versions": library_versions()})

    def _resume(self, model, chief):
        """Restores the checkpoint, if any: the history rows of the epochs it finished.

        The best validation weights are put back as the checkpoint holds them.
        """
        if chief:
            runs.restore_files(self.run_dir, self.checkpoint, [BEST_WEIGHTS])
        if self.checkpoint is None:
            return []
        with self.strategy.scope():
            history = runs.restore_checkpoint(model, self.checkpoint)
        print(f"Resuming {self.run_dir} after epoch {self.initial_epoch} of {self.config.epochs}.")
        return history

    def _callbacks(self, recorder, chief):
        """The mask schedule, the evaluation and GSNR probe if asked, the recorder last."""
        config, loaded = self.config, self.loaded
        callbacks = [MaskSchedule(config.mask_start_epoch)]
        if config.evaluates_each_epoch:
            datasets = {"test_accuracy": loaded.test}
            if loaded.validation is not None:
                datasets["val_accuracy"] = loaded.validation
            noise = None
            if config.label_noise:  # memorisation each epoch (history.csv)
                noise = (loaded.train_eval, loaded.regime.train_true_labels,
                         loaded.regime.train_labels)
            callbacks.append(EpochEvaluation(
                datasets,
                best_weights=self.run_dir / BEST_WEIGHTS if loaded.validation is not None else None,
                history=recorder.history_rows, write=chief, noise=noise))
        if config.gsnr_every:
            images, labels = loaded.gsnr_probe()
            callbacks.append(quality.GSNRCallback(
                images, labels, config.gsnr_every,
                num_micro_batches=quality.NUM_MICRO_BATCHES,
                log_dir=self.run_dir / runs.LOGS / "gsnr" if chief else None))
        callbacks.append(recorder)  # last: it records what the others added to the logs
        return callbacks

    def _fit(self, model, callbacks, chief):
        """Runs the epochs still to run; returns the seconds it took."""
        config = self.config
        start = time.perf_counter()
        log_dir = self.run_dir / runs.LOGS if chief else None
        if self.initial_epoch >= config.epochs:
            pass
        elif config.strategy == "multi_worker":
            fit_multi_worker(
                model, self.strategy, self.loaded.train, epochs=config.epochs,
                initial_epoch=self.initial_epoch, batch_size=config.batch_size,
                callbacks=callbacks, log_dir=log_dir, jit_compile=self.jit_compile)
        else:
            # One iterator through the epochs still to run, each its own stretch of the data.
            steps = int(self.loaded.train.cardinality()) // (config.epochs - self.initial_epoch)
            model.fit(
                self.loaded.train, epochs=config.epochs, initial_epoch=self.initial_epoch,
                steps_per_epoch=steps,
                callbacks=[*callbacks, keras.callbacks.TensorBoard(log_dir)],
                shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
        return time.perf_counter() - start

    def _plain_copy(self, model):
        """The trained model outside any strategy, optimizer state included.

        It evaluates, saves and exports the same way whichever strategy trained it.
        """
        final = self.model()
        final.set_weights(model.get_weights())
        final.optimizer.build(final.trainable_variables)
        for target, source in zip(final.optimizer.variables, model.optimizer.variables):
            target.assign(source.numpy())
        return final
