"""A training run's configuration: every setting declared once, checked, serialisable.

`RunConfig` holds one field per `train.py` flag, with the same name, default and check;
`train.py` builds its flags from `FIELDS` and `gradmask_tf.trainer.run(config)` runs
one. `config.json` records `RunConfig.to_dict()`. This module imports no TensorFlow and
no Keras, so a study can read and check configurations cheaply:

    config = RunConfig(mask_rule="none", seed=1, epochs=3).checked()
    config.to_dict()["validation_fraction"]   # 0.0; 0.1 under label noise

The mask's own parameters (`mask_scope`, `mask_alpha`, ...) come from
`gradmask_tf.mask_params`, where they are declared once for the op, the layer and here.
"""

import dataclasses
import json
import os

from gradmask_tf import mask_params
from gradmask_tf.errors import InvalidArgumentError
from gradmask_tf.optimizers import OPTIMIZERS

ARCHITECTURES = ("cnn", "vgg", "resnet20", "resnet32", "resnet56")  # gradmask_tf.models
APPLICATIONS_PREFIX = "keras.applications."
# Where the mask points go (METHOD.md section 3); the first is the default.
PLACEMENTS = ("activation", "block")
STRATEGIES = ("default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine")
JIT_COMPILE = ("auto", "true", "false")
DEFAULT_MOMENTUM = 0.9
DEFAULT_NOISY_VALIDATION_FRACTION = 0.1
# May change when a run resumes: where it is and whether it may be replaced.
RESUME_FREE = ("output_dir", "overwrite")


class ConfigError(ValueError):
    """A setting that cannot run; the one-line message names it as its flag."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its flag name, default, kind, bounds or choices, and help.

    A mask parameter's field (`parameter` set) is checked by `mask_params`, all of
    them together, so its words are the op's.
    """

    name: str
    default: object
    help: str
    kind: type = None  # str, int, float or bool; from the default where it is not None
    choices: tuple = None
    lower: float = None
    upper: float = None
    parameter: object = None  # the gradmask_tf.mask_params.Parameter it sets

    def __post_init__(self):
        if self.kind is None:
            object.__setattr__(self, "kind", type(self.default))

    def check(self, value):
        """`value` as this field holds it; a `ConfigError` naming the flag otherwise."""
        if self.parameter is not None or (value is None and self.default is None):
            return value
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ConfigError(f"flag --{self.name}={value!r}: expected a {self.kind.__name__}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"flag --{self.name}={value!r}: expected one of {', '.join(self.choices)}")
        if self.lower is not None and value < self.lower:
            raise ConfigError(f"flag --{self.name}={value!r}: expected >= {self.lower}")
        if self.upper is not None and value > self.upper:
            raise ConfigError(f"flag --{self.name}={value!r}: expected <= {self.upper}")
        return value


def _mask_field(name):
    """The `--mask_<name>` setting of one of the op's parameters (gradmask_tf.mask_params)."""
    parameter = mask_params.BY_NAME[name]
    return Field(parameter.flag, parameter.default, parameter.help, kind=parameter.type,
                 choices=parameter.choices, parameter=parameter)


# The op's parameters that a run sets by `--mask_*` flags: all but the rule (first
# among the settings) and the seed (the run's own `--seed`).
_MASK_OPTIONS = tuple(p for p in mask_params.FLAG_PARAMETERS if p.name != "rule")

FIELDS = (
    Field("dataset", "fashion_mnist", "tensorflow-datasets name of the data."),
    Field("data_dir", None, "Directory with IDX files (mnist, fashion_mnist) or TFDS data.",
          kind=str),
    Field("model", "cnn",
          f"Architecture: {', '.join(ARCHITECTURES)}, or keras.applications.<Name> "
          "(weights=None, masks inserted after every trunk non-linearity)."),
    _mask_field("rule"),
    Field("mask_placement", "activation",
          "Mask points after every non-linearity (activation) or at each block's output, "
          "after its pooling (block); reference architectures only.", choices=PLACEMENTS),
    *(_mask_field(p.name) for p in _MASK_OPTIONS),
    Field("mask_metrics_every", 10,
          "Measure kept_fraction and kept_l1 every N training steps (and each epoch's "
          "first); 1 = every step, at about the cost of the mask itself.", lower=1),
    Field("mask_start_epoch", 0, "Masks are off before this epoch (0-based).", lower=0),
    Field("epochs", 10, "Training epochs.", lower=1),
    Field("batch_size", 128, "Global batch size.", lower=1),
    Field("learning_rate", 1e-3, "Learning rate.", lower=0.0),
    Field("optimizer", "adam", "Optimizer (sgd: see --momentum).", choices=OPTIMIZERS),
    Field("momentum", None,
          f"Momentum of --optimizer=sgd (an error with another optimizer); "
          f"{DEFAULT_MOMENTUM} when not given.", kind=float, lower=0.0),
    Field("lr_schedule", "constant",
          "constant, or cosine: from --learning_rate to 0 over all training steps.",
          choices=LR_SCHEDULES),
    Field("seed", 0, "Seed of weights, data order and random masks.", lower=0),
    Field("output_dir", None,
          "Run directory. Defaults to runs/<dataset>-<model>-<rule>[-control]-seed<seed>.",
          kind=str),
    Field("max_train_examples", 0,
          "Train on N training examples drawn with the run's seed (0 = all).", lower=0),
    Field("max_test_examples", 0, "Evaluate on the first N test examples (0 = all).",
          lower=0),
    Field("examples_per_class", 0,
          "Small data: N training examples of each class, drawn by the seed (0 = off; "
          "exclusive with --max_train_examples).", lower=0),
    Field("validation_fraction", None,
          "Hold out this share of the training subset, stratified, in [0, 1); 0.1 when "
          "--label_noise > 0 and this flag is not given, else 0. Its accuracy picks the "
          "best epoch.", kind=float, lower=0.0),
    Field("label_noise", 0.0,
          "Symmetric label noise: this share of each part (training, validation) gets a "
          "different label, drawn by the seed, in [0, 1).", lower=0.0),
    Field("augment", False, "Random crop and flip (32x32 colour datasets)."),
    Field("jit_compile", "auto",
          "XLA: auto = on with a GPU, off on the CPU (measured slower there).",
          choices=JIT_COMPILE),
    Field("strategy", "default", "Distribution: multi_worker reads TF_CONFIG.",
          choices=STRATEGIES),
    Field("num_cpu_devices", 1,
          "Split the CPU into this many logical devices (to run 'mirrored' on a CPU).",
          lower=1),
    Field("gsnr_every", 0,
          "Log the GSNR (gradient quality) on a fixed probe batch every N steps (0 = off).",
          lower=0),
    Field("mixed_precision", False, "Train with the mixed_float16 policy."),
    Field("deterministic", False, "Deterministic TensorFlow ops (slower)."),
    Field("overwrite", False, "Replace a finished or different run in output_dir."),
)
FIELD_NAMES = tuple(field.name for field in FIELDS)
_FIELDS = {field.name: field for field in FIELDS}


class _RunConfigMethods:
    """What every `RunConfig` can do (its fields come from `FIELDS`)."""

    def checked(self):
        """This configuration checked, with its implied defaults filled in.

        Returns:
          A `RunConfig` whose every field has a concrete value (`momentum`,
          `validation_fraction`), as `config.json` records it.

        Raises:
          ConfigError: One line naming the flag and what it allows.
        """
        values = {name: _FIELDS[name].check(getattr(self, name)) for name in FIELD_NAMES}
        _check_combinations(values)
        if values["momentum"] is None:
            values["momentum"] = DEFAULT_MOMENTUM
        if values["validation_fraction"] is None:
            values["validation_fraction"] = (
                DEFAULT_NOISY_VALIDATION_FRACTION if values["label_noise"] > 0 else 0.0)
        return RunConfig(**values)

    def to_dict(self):
        """`{flag name: value}`, sorted by name, as `config.json`'s `flags` holds it."""
        return {name: getattr(self, name) for name in sorted(FIELD_NAMES)}

    @classmethod
    def from_dict(cls, values):
        """A `RunConfig` from `to_dict()`'s form (a `config.json`'s `flags`).

        Raises:
          ConfigError: On a name that is not a setting.
        """
        unknown = sorted(set(values) - set(FIELD_NAMES))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; valid: {', '.join(FIELD_NAMES)}")
        return cls(**values)

    def replace(self, **changes):
        """A copy with `changes`; unknown names are a `ConfigError`."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @property
    def mask_options(self):
        """The op's and layer's keyword arguments (`scope`, `alpha`, ...), rule and seed aside."""
        return {p.name: getattr(self, p.flag) for p in _MASK_OPTIONS}

    @property
    def run_dir_name(self):
        """The default run directory, `runs/<dataset>-<model>-<rule>[-control][-placement]-seed<seed>`."""
        control = "-control" if self.mask_control else ""
        placement = "" if self.mask_placement == "activation" else f"-{self.mask_placement}"
        return os.path.join(
            "runs", f"{self.dataset}-{self.model}-{self.mask_rule}{control}{placement}"
                    f"-seed{self.seed}")

    @property
    def uses_regime(self):
        """Whether the data steps of METHOD.md section 6 apply (a subset, a hold-out, noise)."""
        return bool(self.max_train_examples or self.examples_per_class
                    or self.validation_fraction or self.label_noise)

    @property
    def evaluates_each_epoch(self):
        """A validation split or label noise: validation and test accuracy every epoch."""
        return bool(self.validation_fraction or self.label_noise)


RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [(field.name, object, dataclasses.field(default=field.default)) for field in FIELDS],
    bases=(_RunConfigMethods,),
    frozen=True,
)
RunConfig.__module__ = __name__  # so it pickles and prints as gradmask_tf.config.RunConfig
RunConfig.__doc__ = """One training run: a field per `train.py` flag (`FIELDS`), frozen.

`RunConfig(**settings).checked()` checks it; `gradmask_tf.trainer.run(config)` runs it.
"""


def _check_combinations(values):
    """The checks that involve several settings (each a one-line `ConfigError`)."""
    _check_mask(values)
    model = values["model"]
    if model not in ARCHITECTURES and not model.startswith(APPLICATIONS_PREFIX):
        raise ConfigError(
            f"flag --model={model}: expected one of {', '.join(ARCHITECTURES)} or "
            "keras.applications.<Name> (for example keras.applications.ResNet50)")
    if values["mask_placement"] != "activation" and model not in ARCHITECTURES:
        raise ConfigError(
            f"flag --mask_placement={values['mask_placement']} is defined only for "
            f"{', '.join(ARCHITECTURES)}; a keras.applications model takes activation")
    if values["mask_start_epoch"] >= values["epochs"] and values["mask_rule"] != "none":
        raise ConfigError(
            f"flag --mask_start_epoch={values['mask_start_epoch']} must be below "
            f"--epochs={values['epochs']}, or the masks never turn on")
    if values["strategy"] == "multi_worker":
        _check_tf_config()
    if values["num_cpu_devices"] > 1 and values["strategy"] != "mirrored":
        raise ConfigError("flag --num_cpu_devices > 1 is only used with --strategy=mirrored")
    _check_regime(values)


def _check_mask(values):
    """The op's parameters, each named as its flag (`values` updated as the op holds them)."""
    parameters = mask_params.FLAG_PARAMETERS + (mask_params.BY_NAME["seed"],)
    try:
        checked = mask_params.check_all({p.name: values[p.flag] for p in parameters})
    except InvalidArgumentError as error:
        flag = mask_params.BY_NAME[error.name].flag if error.name in mask_params.BY_NAME else None
        if flag is None:
            raise ConfigError(str(error)) from None
        raise ConfigError(
            f"Invalid value for flag `--{flag}`: expected {error.expected}. "
            f"Received: --{flag}={error.value!r}") from None
    values.update({p.flag: checked[p.name] for p in parameters})


def _check_regime(values):
    """The data regime, schedule and momentum settings."""
    for name in ("label_noise", "validation_fraction"):
        if values[name] is not None and values[name] >= 1:
            raise ConfigError(f"flag --{name}={values[name]} must be in [0, 1)")
    if values["examples_per_class"] and values["max_train_examples"]:
        raise ConfigError(
            "flags --examples_per_class and --max_train_examples are exclusive; set one")
    # The recorded default (config.json holds it for every optimizer) is no error.
    if values["momentum"] not in (None, DEFAULT_MOMENTUM) and values["optimizer"] != "sgd":
        raise ConfigError(
            f"flag --momentum is used only with --optimizer=sgd (not {values['optimizer']})")
    per_epoch = values["validation_fraction"] or values["label_noise"]
    if per_epoch and values["strategy"] == "multi_worker":
        raise ConfigError(
            "flags --validation_fraction and --label_noise are not supported with "
            "--strategy=multi_worker")


def _check_tf_config():
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", ""))
        tf_config["cluster"]["worker"]
        tf_config["task"]["type"], tf_config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            "flag --strategy=multi_worker needs the TF_CONFIG environment variable: "
            'JSON {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}'
        ) from None
