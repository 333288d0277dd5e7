r"""Trains a baseline or Gradient Mask CNN and writes a self-contained run directory.

  python train.py                                   # Fashion-MNIST, cnn, mask rule mean
  python train.py --mask_rule=none --seed=1         # the baseline
  python train.py --dataset=cifar10 --model=resnet20 --augment --epochs=160 \
      --optimizer=sgd --learning_rate=0.1

The run directory (`--output_dir`) receives `config.json`, `history.csv` (one row per
epoch), `logs/` (TensorBoard), `checkpoints/`, and at the end `model.keras`,
`saved_model/` (signature `serving_default`: float images in [0, 1] to `probabilities`
and `logits`) and `metrics.json`. Run the same command again after an interruption and
it resumes from the last finished epoch; a finished run is kept unless `--overwrite`.
"""

import json
import os
import pathlib
import shutil
import sys
import time

from eval.cli import DeferredStderr, parse_flags_or_fail

# Before TensorFlow is imported: a bad command line then gets exactly one line.
_STDERR = DeferredStderr()

from absl import app, flags, logging  # noqa: E402

from gradmask_tf import ops as mask_ops  # noqa: E402
from gradmask_tf.errors import InvalidArgumentError  # noqa: E402
from gradmask_tf.models import ARCHITECTURES, application_constructor  # noqa: E402
from gradmask_tf.optimizers import OPTIMIZERS  # noqa: E402

FLAGS = flags.FLAGS
_ABSL_FLAGS = set(FLAGS)

STRATEGIES = ("default", "mirrored", "multi_worker")

flags.DEFINE_string("dataset", "fashion_mnist", "tensorflow-datasets name of the data.")
flags.DEFINE_string(
    "data_dir", None, "Directory with IDX files (mnist, fashion_mnist) or TFDS data."
)
flags.DEFINE_string(
    "model",
    "cnn",
    f"Architecture: {', '.join(ARCHITECTURES)}, or keras.applications.<Name> "
    "(weights=None, masks inserted after every trunk non-linearity).",
)


def _valid_model(value):
    try:
        return value in ARCHITECTURES or application_constructor(value) is not None
    except ValueError:
        return False


flags.register_validator(
    "model",
    _valid_model,
    message=f"expected one of {', '.join(ARCHITECTURES)} or keras.applications.<Name> "
    "(for example keras.applications.ResNet50)",
)
flags.DEFINE_enum("mask_rule", "mean", mask_ops.RULES, "Gradient Mask rule ('none' = baseline).")
flags.DEFINE_enum("mask_scope", "spatial", mask_ops.SCOPES, "Neighbourhood of mean and topk.")
flags.DEFINE_float("mask_alpha", 1.0, "Threshold factor of mean and local.", lower_bound=0.0)
flags.DEFINE_integer("mask_kernel_size", 3, "Window of local (odd).", lower_bound=1)
flags.DEFINE_float(
    "mask_keep_fraction", 0.5, "Share kept by topk and random, in (0, 1].", upper_bound=1.0
)
flags.DEFINE_bool("mask_soft", False, "Shrink by the threshold instead of cutting.")
flags.DEFINE_bool("mask_rescale", False, "Restore each neighbourhood's L1 norm.")
flags.DEFINE_integer("mask_zone_size", 7, "Zone of lateral (odd).", lower_bound=1)
flags.DEFINE_float("mask_inhibition_base", 0.1, "Base inhibition of lateral.", lower_bound=0.0)
flags.DEFINE_float(
    "mask_inhibition_strength", 0.9, "Neighbour inhibition of lateral.", lower_bound=0.0
)
flags.DEFINE_integer(
    "mask_start_epoch", 0, "Masks are off before this epoch (0-based).", lower_bound=0
)
flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.", lower_bound=0.0)
flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "Optimizer (sgd uses momentum 0.9).")
flags.DEFINE_integer("seed", 0, "Seed of weights, data order and random masks.", lower_bound=0)
flags.DEFINE_string(
    "output_dir", None, "Run directory. Defaults to runs/<dataset>-<model>-<rule>-seed<seed>."
)
flags.DEFINE_integer(
    "max_train_examples", 0, "Use the first N training examples (0 = all).", lower_bound=0
)
flags.DEFINE_integer(
    "max_test_examples", 0, "Evaluate on the first N test examples (0 = all).", lower_bound=0
)
flags.DEFINE_bool("augment", False, "Random crop and flip (32x32 colour datasets).")
flags.DEFINE_enum(
    "jit_compile",
    "auto",
    ("auto", "true", "false"),
    "XLA: auto = on with a GPU, off on the CPU (measured slower there).",
)
flags.DEFINE_enum(
    "strategy", "default", STRATEGIES, "Distribution: multi_worker reads TF_CONFIG."
)
flags.DEFINE_integer(
    "num_cpu_devices",
    1,
    "Split the CPU into this many logical devices (to run 'mirrored' on a CPU).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "gsnr_every",
    0,
    "Log the GSNR (gradient quality) on a fixed probe batch every N steps (0 = off).",
    lower_bound=0,
)
flags.DEFINE_bool("mixed_precision", False, "Train with the mixed_float16 policy.")
flags.DEFINE_bool("deterministic", False, "Deterministic TensorFlow ops (slower).")
flags.DEFINE_bool("overwrite", False, "Replace a finished or different run in output_dir.")

GSNR_PROBE_EXAMPLES = 256
GSNR_MICRO_BATCHES = 8

# This script's own flags (recorded in config.json), then those that may differ
# when the same run is resumed.
RUN_FLAGS = sorted(set(FLAGS) - _ABSL_FLAGS)
_RESUME_FREE = ("output_dir", "overwrite")

# The --mask_* flags and the MaskConfig (and GradientMask) arguments they set.
MASK_FLAGS = {
    "mask_scope": "scope",
    "mask_alpha": "alpha",
    "mask_kernel_size": "kernel_size",
    "mask_keep_fraction": "keep_fraction",
    "mask_soft": "soft",
    "mask_rescale": "rescale",
    "mask_zone_size": "zone_size",
    "mask_inhibition_base": "inhibition_base",
    "mask_inhibition_strength": "inhibition_strength",
}
# The flag behind each MaskConfig argument, for its errors.
_FLAG_OF_ARGUMENT = {
    **{argument: flag for flag, argument in MASK_FLAGS.items()},
    "rule": "mask_rule",
    "seed": "seed",
}


class UsageError(Exception):
    """A bad command line or run directory: reported as one line, exit status 2."""


def _fail(message):
    _STDERR.fail("train.py", message)


def parse_flags(argv):
    """absl's parser, with any error as one line and exit status 2."""
    return parse_flags_or_fail(FLAGS, argv, _STDERR, "train.py")


def mask_options():
    return {argument: FLAGS[flag].value for flag, argument in MASK_FLAGS.items()}


def check_mask_flags():
    """MaskConfig's own checks, each error naming the flag instead of the argument."""
    try:
        mask_ops.MaskConfig(FLAGS.mask_rule, seed=FLAGS.seed, **mask_options())
    except InvalidArgumentError as error:
        flag = _FLAG_OF_ARGUMENT.get(error.name)
        if flag is None:
            raise UsageError(str(error)) from None
        raise UsageError(
            f"Invalid value for flag `--{flag}`: expected {error.expected}. "
            f"Received: --{flag}={error.value!r}"
        ) from None


def run_config():
    return {name: FLAGS[name].value for name in RUN_FLAGS}


def validate():
    """Everything that can be checked before any file is written."""
    check_mask_flags()
    if FLAGS.mask_start_epoch >= FLAGS.epochs and FLAGS.mask_rule != "none":
        raise UsageError(
            f"flag --mask_start_epoch={FLAGS.mask_start_epoch} must be below "
            f"--epochs={FLAGS.epochs}, or the masks never turn on"
        )
    if FLAGS.strategy == "multi_worker":
        try:
            tf_config = json.loads(os.environ.get("TF_CONFIG", ""))
            tf_config["cluster"]["worker"]
            tf_config["task"]["type"], tf_config["task"]["index"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                "flag --strategy=multi_worker needs the TF_CONFIG environment variable: "
                'JSON {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}'
            ) from None
    if FLAGS.num_cpu_devices > 1 and FLAGS.strategy != "mirrored":
        raise UsageError("flag --num_cpu_devices > 1 is only used with --strategy=mirrored")


def output_dir():
    if FLAGS.output_dir:
        return pathlib.Path(FLAGS.output_dir)
    return pathlib.Path("runs") / (
        f"{FLAGS.dataset}-{FLAGS.model}-{FLAGS.mask_rule}-seed{FLAGS.seed}"
    )


def prepare_run_dir(run_dir, config, from_runs):
    """Decides between a new run, a resume and a refusal; writes nothing."""
    config_path = run_dir / from_runs.CONFIG
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    if not config_path.exists():
        if FLAGS.overwrite:
            return "overwrite"
        raise UsageError(
            f"--output_dir={run_dir} exists and is not a run directory; "
            "choose another or pass --overwrite"
        )
    if FLAGS.overwrite:
        return "overwrite"
    if (run_dir / from_runs.METRICS).exists():
        raise UsageError(
            f"--output_dir={run_dir} holds a finished run; pass --overwrite to replace it"
        )
    saved = from_runs.read_json(config_path).get("flags", {})
    changed = sorted(
        name
        for name in set(saved) | set(config)
        if name not in _RESUME_FREE and saved.get(name) != config.get(name)
    )
    if changed:
        raise UsageError(
            f"--output_dir={run_dir} holds an unfinished run with other settings "
            f"({', '.join('--' + name for name in changed)}); resume it with the same "
            "flags, or pass --overwrite"
        )
    return "resume"


def configure_devices():
    import tensorflow as tf

    if FLAGS.num_cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices
        )
    return bool(tf.config.list_physical_devices("GPU"))


def make_strategy():
    import tensorflow as tf

    if FLAGS.strategy == "mirrored":
        devices = None
        if not tf.config.list_physical_devices("GPU"):
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if FLAGS.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or FLAGS.strategy != "multi_worker":
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    try:
        validate()
    except UsageError as error:
        _fail(str(error))
    config = run_config()
    run_dir = output_dir()

    from gradmask_tf import runs

    try:
        state = prepare_run_dir(run_dir, config, runs)
    except UsageError as error:
        _fail(str(error))

    has_gpu = configure_devices()
    jit_compile = {"auto": has_gpu, "true": True, "false": False}[FLAGS.jit_compile]
    # Before any TensorFlow op runs: collective ops are configured at start-up.
    strategy = make_strategy()

    import keras
    import tensorflow as tf

    import gradmask_tf
    from gradmask_tf import data
    from gradmask_tf.callbacks import MaskSchedule, RunRecorder
    from gradmask_tf.distributed import fit_multi_worker
    from gradmask_tf.optimizers import make_optimizer
    from gradmask_tf.versions import library_versions

    try:
        info = data.info(FLAGS.dataset, data_dir=FLAGS.data_dir)
        test_data = data.load(
            FLAGS.dataset,
            "test",
            data_dir=FLAGS.data_dir,
            max_examples=FLAGS.max_test_examples or None,
            batch_size=FLAGS.batch_size,
        )
        multi_worker = FLAGS.strategy == "multi_worker"
        train_data = data.load(
            FLAGS.dataset,
            "train",
            data_dir=FLAGS.data_dir,
            max_examples=FLAGS.max_train_examples or None,
            shuffle=True,
            seed=FLAGS.seed,
            augment=FLAGS.augment,
            # The multi-worker loop shards and batches per worker itself; XLA
            # recompiles for a smaller last batch, so it gets full batches only.
            batch_size=None if multi_worker else FLAGS.batch_size,
            drop_remainder=jit_compile,
        )
    except ValueError as error:
        _fail(" ".join(str(error).split()))
    if info.image_shape is None or info.num_classes is None:
        _fail(f"--dataset={FLAGS.dataset} is not an image classification dataset")

    _STDERR.release()  # Validated: from here on, the run shows everything.
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    chief = is_chief(strategy)
    if chief:
        if state == "overwrite":
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if state != "resume":
            runs.atomic_write_json(
                run_dir / runs.CONFIG, {"flags": config, "versions": library_versions()}
            )

    def build():
        model = gradmask_tf.build_model(
            FLAGS.model,
            input_shape=info.image_shape,
            num_classes=info.num_classes,
            mask_rule=FLAGS.mask_rule,
            dataset=FLAGS.dataset,
            seed=FLAGS.seed,
            **mask_options(),
        )
        model.compile(
            optimizer=make_optimizer(FLAGS.optimizer, FLAGS.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=jit_compile,
        )
        return model

    with strategy.scope():
        model = build()
    initial_epoch, checkpoint = runs.latest_checkpoint(run_dir)
    history = []
    if checkpoint is not None:
        with strategy.scope():
            history = runs.restore_checkpoint(model, checkpoint)
        print(f"Resuming {run_dir} after epoch {initial_epoch} of {FLAGS.epochs}.")

    recorder = RunRecorder(run_dir, history, write=chief)
    callbacks = [MaskSchedule(FLAGS.mask_start_epoch)]
    if FLAGS.gsnr_every:
        from gradmask_tf import quality

        # A fixed probe: the first examples of the training split, in their order.
        probe_images, probe_labels = data.as_numpy(
            data.load(
                FLAGS.dataset,
                "train",
                data_dir=FLAGS.data_dir,
                max_examples=GSNR_PROBE_EXAMPLES,
            )
        )
        callbacks.append(
            quality.GSNRCallback(
                probe_images,
                probe_labels,
                FLAGS.gsnr_every,
                num_micro_batches=GSNR_MICRO_BATCHES,
                log_dir=run_dir / runs.LOGS / "gsnr" if chief else None,
            )
        )
    callbacks.append(recorder)  # last: it records what the others added to the logs
    start = time.perf_counter()
    if initial_epoch < FLAGS.epochs:
        if FLAGS.strategy == "multi_worker":
            fit_multi_worker(
                model,
                strategy,
                train_data,
                epochs=FLAGS.epochs,
                initial_epoch=initial_epoch,
                batch_size=FLAGS.batch_size,
                callbacks=callbacks,
                log_dir=run_dir / runs.LOGS if chief else None,
                jit_compile=jit_compile,
            )
        else:
            callbacks.append(keras.callbacks.TensorBoard(run_dir / runs.LOGS))
            model.fit(
                train_data,
                epochs=FLAGS.epochs,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                shuffle=False,
                verbose=1 if sys.stdout.isatty() else 2,
            )
    train_seconds = time.perf_counter() - start
    if not chief:
        return 0

    # A plain copy outside any strategy evaluates, saves and exports the same way
    # whichever strategy trained it.
    final = build()
    final.set_weights(model.get_weights())
    final.optimizer.build(final.trainable_variables)
    for target, source in zip(final.optimizer.variables, model.optimizer.variables):
        target.assign(source.numpy())
    loss, accuracy = final.evaluate(test_data, verbose=0, return_dict=False)
    runs.save_keras_model(final, run_dir / runs.MODEL)
    runs.export_saved_model(final, run_dir / runs.SAVED_MODEL, info.image_shape)
    epoch_seconds = [row["epoch_seconds"] for row in recorder.history_rows]
    metrics = {
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
        "num_test_examples": int(sum(1 for _ in test_data.unbatch())),
        "epochs": FLAGS.epochs,
        "train_seconds": train_seconds,
        "mean_epoch_seconds": float(sum(epoch_seconds) / max(len(epoch_seconds), 1)),
        "mask_rule": FLAGS.mask_rule,
        "seed": FLAGS.seed,
    }
    last = recorder.history_rows[-1] if recorder.history_rows else {}
    metrics.update(
        {key: value for key, value in last.items() if key.startswith("kept_fraction/")}
    )
    runs.atomic_write_json(run_dir / runs.METRICS, metrics)
    print(
        f"Done: test accuracy {accuracy:.4f}, loss {loss:.4f}, "
        f"{train_seconds:.0f}s training ({metrics['mean_epoch_seconds']:.1f}s/epoch); "
        f"run in {run_dir}"
    )
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
