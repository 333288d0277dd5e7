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

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradmask_tf  # noqa: E402
from gradmask_tf import data, quality, runs  # noqa: E402
from gradmask_tf import ops as mask_ops  # noqa: E402
from gradmask_tf.callbacks import (  # noqa: E402
    EpochEvaluation,
    MaskSchedule,
    RunRecorder,
    accuracy,
    best_epoch,
    predicted_classes,
)
from gradmask_tf.distributed import fit_multi_worker  # noqa: E402
from gradmask_tf.errors import InvalidArgumentError  # noqa: E402
from gradmask_tf.models import ARCHITECTURES, PLACEMENTS, application_constructor  # noqa: E402
from gradmask_tf.optimizers import OPTIMIZERS, make_optimizer  # noqa: E402
from gradmask_tf.training import MASK_METRIC_PREFIXES  # noqa: E402
from gradmask_tf.versions import library_versions  # noqa: E402

FLAGS = flags.FLAGS
_ABSL_FLAGS = set(FLAGS)

STRATEGIES = ("default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_NOISY_VALIDATION_FRACTION = 0.1
# Files of the run directory.
BEST_WEIGHTS = "best.weights.h5"  # the weights of the best validation epoch
LABEL_NOISE = "label_noise.json"  # the flipped examples: index, true, noisy label, part
SPLIT = "split.json"  # the original indices of the training and validation parts

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
flags.DEFINE_enum(
    "mask_placement",
    "activation",
    PLACEMENTS,
    "Mask points after every non-linearity (activation) or at each block's output, "
    "after its pooling (block); reference architectures only.",
)
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
flags.DEFINE_float("mask_sigma", 1.0, "Scale of log's Laplacian of Gaussian (> 0).")
flags.DEFINE_bool(
    "mask_control",
    False,
    "The rule's matched control: as many entries, the same L1 mass, uniformly random places.",
)
flags.DEFINE_integer(
    "mask_metrics_every",
    10,
    "Measure kept_fraction and kept_l1 every N training steps (and each epoch's first); "
    "1 = every step, at about the cost of the mask itself.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "mask_start_epoch", 0, "Masks are off before this epoch (0-based).", lower_bound=0
)
flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.", lower_bound=0.0)
flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "Optimizer (sgd: see --momentum).")
flags.DEFINE_float(
    "momentum", 0.9, "Momentum of --optimizer=sgd (an error with another optimizer).",
    lower_bound=0.0,
)
flags.DEFINE_enum(
    "lr_schedule",
    "constant",
    LR_SCHEDULES,
    "constant, or cosine: from --learning_rate to 0 over all training steps.",
)
flags.DEFINE_integer("seed", 0, "Seed of weights, data order and random masks.", lower_bound=0)
flags.DEFINE_string(
    "output_dir",
    None,
    "Run directory. Defaults to runs/<dataset>-<model>-<rule>[-control]-seed<seed>.",
)
flags.DEFINE_integer(
    "max_train_examples", 0,
    "Train on N training examples drawn with the run's seed (0 = all).", lower_bound=0
)
flags.DEFINE_integer(
    "max_test_examples", 0, "Evaluate on the first N test examples (0 = all).", lower_bound=0
)
flags.DEFINE_integer(
    "examples_per_class",
    0,
    "Small data: N training examples of each class, drawn by the seed (0 = off; "
    "exclusive with --max_train_examples).",
    lower_bound=0,
)
flags.DEFINE_float(
    "validation_fraction",
    0.0,
    "Hold out this share of the training subset, stratified, in [0, 1); 0.1 when "
    "--label_noise > 0 and this flag is not given. Its accuracy picks the best epoch.",
    lower_bound=0.0,
)
flags.DEFINE_float(
    "label_noise",
    0.0,
    "Symmetric label noise: this share of each part (training, validation) gets a "
    "different label, drawn by the seed, in [0, 1).",
    lower_bound=0.0,
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

GSNR_PROBE_EXAMPLES = quality.NUM_PROBE_EXAMPLES  # the fixed size figures compare at
GSNR_MICRO_BATCHES = quality.NUM_MICRO_BATCHES

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
    "mask_sigma": "sigma",
    "mask_control": "control",
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


def run_config():
    return {name: FLAGS[name].value for name in RUN_FLAGS}


def mask_options():
    return {argument: FLAGS[flag].value for flag, argument in MASK_FLAGS.items()}


# The command line ---------------------------------------------------------------------


def validate_flags(argv):
    """Everything about the command line that can be checked before any file is written."""
    if len(argv) > 1:
        raise UsageError(
            f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)"
        )
    check_mask_flags()
    if FLAGS.mask_placement != "activation" and FLAGS.model not in ARCHITECTURES:
        raise UsageError(
            f"flag --mask_placement={FLAGS.mask_placement} is defined only for "
            f"{', '.join(ARCHITECTURES)}; a keras.applications model takes activation"
        )
    if FLAGS.mask_start_epoch >= FLAGS.epochs and FLAGS.mask_rule != "none":
        raise UsageError(
            f"flag --mask_start_epoch={FLAGS.mask_start_epoch} must be below "
            f"--epochs={FLAGS.epochs}, or the masks never turn on"
        )
    if FLAGS.strategy == "multi_worker":
        check_tf_config()
    if FLAGS.num_cpu_devices > 1 and FLAGS.strategy != "mirrored":
        raise UsageError("flag --num_cpu_devices > 1 is only used with --strategy=mirrored")
    check_regime_flags()


def check_regime_flags():
    """The data regime, schedule and momentum flags; sets the default validation share."""
    for name in ("label_noise", "validation_fraction"):
        if FLAGS[name].value >= 1:
            raise UsageError(
                f"flag --{name}={FLAGS[name].value} must be in [0, 1)"
            )
    if FLAGS.examples_per_class and FLAGS.max_train_examples:
        raise UsageError(
            "flags --examples_per_class and --max_train_examples are exclusive; set one"
        )
    if FLAGS["momentum"].present and FLAGS.optimizer != "sgd":
        raise UsageError(
            f"flag --momentum is used only with --optimizer=sgd (not {FLAGS.optimizer})"
        )
    if FLAGS.label_noise > 0 and not FLAGS["validation_fraction"].present:
        FLAGS.validation_fraction = DEFAULT_NOISY_VALIDATION_FRACTION
    if evaluates_each_epoch() and FLAGS.strategy == "multi_worker":
        raise UsageError(
            "flags --validation_fraction and --label_noise are not supported with "
            "--strategy=multi_worker"
        )


def uses_regime():
    """Whether the data steps of METHOD.md section 6 apply (a subset, a hold-out, noise)."""
    return bool(FLAGS.max_train_examples or FLAGS.examples_per_class
                or FLAGS.validation_fraction or FLAGS.label_noise)


def evaluates_each_epoch():
    """A validation split or label noise: validation and test accuracy every epoch."""
    return bool(FLAGS.validation_fraction or FLAGS.label_noise)


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


def check_tf_config():
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", ""))
        tf_config["cluster"]["worker"]
        tf_config["task"]["type"], tf_config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            "flag --strategy=multi_worker needs the TF_CONFIG environment variable: "
            'JSON {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}'
        ) from None


# The run directory --------------------------------------------------------------------


def resolve_run_dir(config):
    """The run directory and what to do with it: "new", "resume" or "overwrite"."""
    if FLAGS.output_dir:
        run_dir = pathlib.Path(FLAGS.output_dir)
    else:
        control = "-control" if FLAGS.mask_control else ""
        placement = "" if FLAGS.mask_placement == "activation" else f"-{FLAGS.mask_placement}"
        run_dir = pathlib.Path("runs") / (
            f"{FLAGS.dataset}-{FLAGS.model}-{FLAGS.mask_rule}{control}{placement}"
            f"-seed{FLAGS.seed}"
        )
    try:
        state = runs.prepare_run_dir(
            run_dir, config, overwrite=FLAGS.overwrite, may_differ=_RESUME_FREE
        )
    except runs.RunDirectoryError as error:
        raise UsageError(str(error)) from None
    return run_dir, state


def start_run_dir(run_dir, state, config):
    """The chief empties the directory where asked and records the flags and versions."""
    if state == "overwrite":
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if state != "resume":
        runs.atomic_write_json(
            run_dir / runs.CONFIG, {"flags": config, "versions": library_versions()}
        )


# Devices and distribution -------------------------------------------------------------


def configure_runtime():
    """`(jit_compile, strategy)`, set up before any TensorFlow op runs.

    Collective ops and logical devices are configured at start-up; XLA is decided
    here because the data pipeline depends on it.
    """
    has_gpu = configure_devices()
    jit_compile = {"auto": has_gpu, "true": True, "false": False}[FLAGS.jit_compile]
    return jit_compile, make_strategy()


def configure_devices():
    if FLAGS.num_cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.num_cpu_devices
        )
    return bool(tf.config.list_physical_devices("GPU"))


def make_strategy():
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


def set_global_options():
    """The seed, op determinism and the dtype policy, before the model is built."""
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


# Data ---------------------------------------------------------------------------------


class Data:
    """What `load_data` returns: the datasets, the regime (None without one) and the
    steps of an epoch."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def load_data(jit_compile, initial_epoch):
    """A `Data`; an unusable dataset or regime is a `UsageError`.

    The training data holds the epochs still to run, epoch e drawn by (seed, e), so a
    resumed run sees the data an uninterrupted one would have. With a regime
    (`--examples_per_class`, `--validation_fraction`, `--label_noise`) the training
    part, the validation part and their labels come from `data.regime`, drawn by the
    seed alone, so every arm of a seed sees the same ones.
    """
    multi_worker = FLAGS.strategy == "multi_worker"
    regime = validation_data = train_eval_data = None
    try:
        info = data.info(FLAGS.dataset, data_dir=FLAGS.data_dir)
        test_data = load_split(
            "test",
            max_examples=FLAGS.max_test_examples or None,
            batch_size=FLAGS.batch_size,
        )
        subset = {}  # the whole split, unless a regime draws a part of it
        if uses_regime():
            regime = data.regime(
                data.split_labels(FLAGS.dataset, "train", data_dir=FLAGS.data_dir),
                num_classes=info.num_classes,
                seed=FLAGS.seed,
                max_examples=FLAGS.max_train_examples,
                examples_per_class=FLAGS.examples_per_class,
                validation_fraction=FLAGS.validation_fraction,
                label_noise=FLAGS.label_noise,
            )
            subset = {"indices": regime.train_indices, "labels": regime.train_labels}
            train_eval_data = load_split("train", batch_size=FLAGS.batch_size, **subset)
            if len(regime.validation_indices):
                validation_data = load_split(
                    "train",
                    indices=regime.validation_indices,
                    labels=regime.validation_labels,
                    batch_size=FLAGS.batch_size,
                )
        train_data = load_split(
            "train",
            **subset,
            shuffle=True,
            seed=FLAGS.seed,
            augment=FLAGS.augment,
            epochs=range(initial_epoch, FLAGS.epochs),
            # The multi-worker loop shards and batches per worker itself; XLA
            # recompiles for a smaller last batch, so it gets full batches only.
            batch_size=None if multi_worker else FLAGS.batch_size,
            drop_remainder=jit_compile,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    if info.image_shape is None or info.num_classes is None:
        raise UsageError(f"--dataset={FLAGS.dataset} is not an image classification dataset")
    if regime is not None:
        num_train = len(regime.train_indices)
    elif info.num_train is not None:
        num_train = info.num_train
    else:  # unknown without reading it: count one epoch's examples
        num_train = sum(1 for _ in load_split("train"))
    if multi_worker or jit_compile:
        steps_per_epoch = num_train // FLAGS.batch_size
    else:
        steps_per_epoch = -(-num_train // FLAGS.batch_size)
    return Data(
        info=info,
        train=train_data,
        test=test_data,
        regime=regime,
        validation=validation_data,
        train_eval=train_eval_data,
        steps_per_epoch=max(steps_per_epoch, 1),
    )


def load_split(split, **options):
    """`data.load` of the run's dataset: `split` with `options`."""
    return data.load(FLAGS.dataset, split, data_dir=FLAGS.data_dir, **options)


def gsnr_probe():
    """A fixed probe: the first examples of the training split, in their order."""
    return data.as_numpy(load_split("train", max_examples=GSNR_PROBE_EXAMPLES))


# The model ----------------------------------------------------------------------------


def learning_rate(steps_per_epoch):
    """The learning rate or its schedule, keyed by the optimizer's iterations (so a
    resumed run continues it exactly)."""
    if FLAGS.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            FLAGS.learning_rate, decay_steps=FLAGS.epochs * steps_per_epoch, alpha=0.0
        )
    return FLAGS.learning_rate


def compiled_model(info, jit_compile, steps_per_epoch):
    """A fresh model, compiled, under whatever strategy scope is current."""
    model = gradmask_tf.build_model(
        FLAGS.model,
        input_shape=info.image_shape,
        num_classes=info.num_classes,
        mask_rule=FLAGS.mask_rule,
        dataset=FLAGS.dataset,
        placement=FLAGS.mask_placement,
        seed=FLAGS.seed,
        **mask_options(),
    )
    model.compile(
        optimizer=make_optimizer(
            FLAGS.optimizer, learning_rate(steps_per_epoch), momentum=FLAGS.momentum
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    model.mask_metrics_every = FLAGS.mask_metrics_every
    return model


def checkpoint_to_resume(run_dir, state):
    """`(epoch, path)` of the last finished epoch's checkpoint, `(0, None)` if none."""
    if state != "resume":
        return 0, None
    return runs.latest_checkpoint(run_dir)


def resume(model, strategy, run_dir, initial_epoch, checkpoint, chief):
    """Restores the checkpoint, if any: the history rows of the epochs it finished.

    The best validation weights are put back as the checkpoint holds them.
    """
    if chief:
        runs.restore_files(run_dir, checkpoint, [BEST_WEIGHTS])
    if checkpoint is None:
        return []
    with strategy.scope():
        history = runs.restore_checkpoint(model, checkpoint)
    print(f"Resuming {run_dir} after epoch {initial_epoch} of {FLAGS.epochs}.")
    return history


# Callbacks and training ---------------------------------------------------------------


def make_callbacks(run_dir, recorder, chief, loaded):
    """The mask schedule, the GSNR probe if asked, the evaluation, the recorder last."""
    callbacks = [MaskSchedule(FLAGS.mask_start_epoch)]
    if evaluates_each_epoch():
        datasets = {"test_accuracy": loaded.test}
        if loaded.validation is not None:
            datasets["val_accuracy"] = loaded.validation
        callbacks.append(
            EpochEvaluation(
                datasets,
                best_weights=run_dir / BEST_WEIGHTS if loaded.validation is not None else None,
                history=recorder.history_rows,
                write=chief,
                noise=noise_evaluation(loaded),
            )
        )
    if FLAGS.gsnr_every:
        probe_images, probe_labels = gsnr_probe()
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
    return callbacks


def noise_evaluation(loaded):
    """The training part and its labels for memorisation each epoch, under label noise."""
    if not FLAGS.label_noise:
        return None
    regime = loaded.regime
    return loaded.train_eval, regime.train_true_labels, regime.train_labels


def train(model, strategy, train_data, callbacks, *, initial_epoch, log_dir, jit_compile):
    """Runs the epochs still to run; returns the seconds it took.

    `log_dir` is the TensorBoard directory, None on workers that must not write.
    """
    start = time.perf_counter()
    if initial_epoch >= FLAGS.epochs:
        pass
    elif FLAGS.strategy == "multi_worker":
        fit_multi_worker(
            model,
            strategy,
            train_data,
            epochs=FLAGS.epochs,
            initial_epoch=initial_epoch,
            batch_size=FLAGS.batch_size,
            callbacks=callbacks,
            log_dir=log_dir,
            jit_compile=jit_compile,
        )
    else:
        # One iterator through the epochs still to run, each its own stretch of the data.
        steps_per_epoch = int(train_data.cardinality()) // (FLAGS.epochs - initial_epoch)
        model.fit(
            train_data,
            epochs=FLAGS.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=[*callbacks, keras.callbacks.TensorBoard(log_dir)],
            shuffle=False,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    return time.perf_counter() - start


# The finished run ---------------------------------------------------------------------


def plain_copy(model, info, jit_compile, steps_per_epoch):
    """The trained model outside any strategy, optimizer state included.

    It evaluates, saves and exports the same way whichever strategy trained it.
    """
    final = compiled_model(info, jit_compile, steps_per_epoch)
    final.set_weights(model.get_weights())
    final.optimizer.build(final.trainable_variables)
    for target, source in zip(final.optimizer.variables, model.optimizer.variables):
        target.assign(source.numpy())
    return final


def write_regime(run_dir, regime):
    """The validation and training parts' original indices, and the flipped labels."""
    if regime is None:
        return
    runs.atomic_write_json(
        run_dir / SPLIT,
        {
            "train_indices": regime.train_indices.tolist(),
            "validation_indices": regime.validation_indices.tolist(),
        },
    )
    if FLAGS.label_noise:
        runs.atomic_write_json(run_dir / LABEL_NOISE, regime.noise_records())


def regime_metrics(model, loaded, run_dir, history_rows, jit_compile):
    """metrics.json's regime keys (METHOD.md section 6); the test accuracies are
    reported, never used to choose anything."""
    metrics = {}
    if evaluates_each_epoch():
        end = [row["test_accuracy"] for row in history_rows[-3:]]
        metrics["test_accuracy_end"] = float(sum(end) / len(end))
    if loaded.validation is not None:
        epoch, value = best_epoch(history_rows)
        best = compiled_model(loaded.info, jit_compile, loaded.steps_per_epoch)
        best.optimizer.build(best.trainable_variables)  # as saved with the weights
        best.load_weights(run_dir / BEST_WEIGHTS)
        metrics.update(
            best_validation_epoch=epoch,
            best_validation_accuracy=value,
            test_accuracy_best_validation=accuracy(best, loaded.test),
        )
    if FLAGS.label_noise:
        regime = loaded.regime
        memorisation, clean = data.noise_metrics(
            predicted_classes(model, loaded.train_eval),
            regime.train_true_labels,
            regime.train_labels,
        )
        metrics.update(memorisation=memorisation, clean_train_accuracy=clean)
    return metrics


def finalize(model, loaded, run_dir, history_rows, train_seconds, jit_compile):
    """Evaluates on the test split, then writes the model, its export and metrics.json."""
    info, test_data = loaded.info, loaded.test
    loss, accuracy = model.evaluate(test_data, verbose=0, return_dict=False)
    runs.save_keras_model(model, run_dir / runs.MODEL)
    runs.export_saved_model(model, run_dir / runs.SAVED_MODEL, info.image_shape)
    epoch_seconds = [row["epoch_seconds"] for row in history_rows]
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
    last = history_rows[-1] if history_rows else {}
    metrics.update(
        {key: value for key, value in last.items() if key.startswith(MASK_METRIC_PREFIXES)}
    )
    metrics.update(regime_metrics(model, loaded, run_dir, history_rows, jit_compile))
    runs.atomic_write_json(run_dir / runs.METRICS, metrics)
    print(
        f"Done: test accuracy {accuracy:.4f}, loss {loss:.4f}, "
        f"{train_seconds:.0f}s training ({metrics['mean_epoch_seconds']:.1f}s/epoch); "
        f"run in {run_dir}"
    )


def main(argv):
    logging.set_verbosity(logging.WARNING)
    try:
        validate_flags(argv)
        config = run_config()
        run_dir, state = resolve_run_dir(config)
        initial_epoch, checkpoint = checkpoint_to_resume(run_dir, state)
        jit_compile, strategy = configure_runtime()
        loaded = load_data(jit_compile, initial_epoch)
    except UsageError as error:
        _fail(str(error))
    _STDERR.release()  # Validated: from here on, the run shows everything.
    set_global_options()
    chief = is_chief(strategy)
    if chief:
        start_run_dir(run_dir, state, config)
        write_regime(run_dir, loaded.regime)
    with strategy.scope():
        model = compiled_model(loaded.info, jit_compile, loaded.steps_per_epoch)
    history = resume(model, strategy, run_dir, initial_epoch, checkpoint, chief)
    recorder = RunRecorder(run_dir, history, write=chief, files=[BEST_WEIGHTS])
    train_seconds = train(
        model,
        strategy,
        loaded.train,
        make_callbacks(run_dir, recorder, chief, loaded),
        initial_epoch=initial_epoch,
        log_dir=run_dir / runs.LOGS if chief else None,
        jit_compile=jit_compile,
    )
    if chief:
        final = plain_copy(model, loaded.info, jit_compile, loaded.steps_per_epoch)
        finalize(final, loaded, run_dir, recorder.history_rows, train_seconds, jit_compile)
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
