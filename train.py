r"""Trains a baseline or Gradient Mask CNN and writes a self-contained run directory.

  python train.py                                   # Fashion-MNIST, cnn, mask rule mean
  python train.py --mask_rule=none --seed=1         # the baseline
  python train.py --dataset=cifar10 --model=resnet20 --augment --epochs=160 \
      --optimizer=sgd --learning_rate=0.1

Every flag is a field of `gradmask_tf.config.RunConfig`, with its default, check and
help declared there once; this command parses them into one and calls
`gradmask_tf.trainer.run` (see it for the run directory's files). Run the same command
again after an interruption and it resumes from the last finished epoch; a finished run
is kept unless `--overwrite`. A bad flag, run directory or dataset is one line on
stderr and exit status 2, before anything is written.
"""

import sys

from absl import flags

from eval.cli import parse_own_flags, wants_help
from gradmask_tf.config import FIELDS, ConfigError, RunConfig

PROGRAM = "train.py"


def define_flags(flag_values):
    """Defines one flag per `RunConfig` field on `flag_values`; returns it."""
    for field in FIELDS:
        bounds = dict(lower_bound=field.lower, upper_bound=field.upper)
        if field.choices is not None:
            flags.DEFINE_enum(field.name, field.default, field.choices, field.help,
                              flag_values=flag_values)
        elif field.kind is bool:
            flags.DEFINE_bool(field.name, field.default, field.help, flag_values=flag_values)
        elif field.kind is int:
            flags.DEFINE_integer(field.name, field.default, field.help,
                                 flag_values=flag_values, **bounds)
        elif field.kind is float:
            flags.DEFINE_float(field.name, field.default, field.help,
                               flag_values=flag_values, **bounds)
        else:
            flags.DEFINE_string(field.name, field.default, field.help, flag_values=flag_values)
    return flag_values


def config_from_argv(argv):
    """The `RunConfig` of a command line (`argv[0]` is the program), checked.

    Raises:
      ConfigError: One line naming the flag that is wrong (a parse error included).
    """
    try:
        flag_values = parse_own_flags(define_flags, argv, " (flags look like --name=value)")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return RunConfig(**{field.name: flag_values[field.name].value for field in FIELDS}).checked()


def main(argv=None, stderr=None):
    """Runs the command line `argv` (default `sys.argv`); returns the exit status.

    `stderr` is an `eval.cli.DeferredStderr` when run as a program: TensorFlow's
    start-up lines are held back until the run is checked, so a bad command line gets
    exactly one line.
    """
    from eval.cli import ImmediateStderr

    argv = sys.argv if argv is None else argv
    stderr = stderr or ImmediateStderr()
    if wants_help(argv):
        stderr.release()
        print(define_flags(flags.FlagValues()).get_help())
        return 0
    try:
        config = config_from_argv(argv)
        from gradmask_tf import trainer  # TensorFlow: after the flags are checked

        prepared = trainer.prepare(config)
    except ConfigError as error:
        stderr.fail(PROGRAM, str(error))
    stderr.release()  # Checked: from here on, the run shows everything.
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    prepared.train()
    return 0


if __name__ == "__main__":
    from eval.cli import DeferredStderr

    sys.exit(main(sys.argv, DeferredStderr()))
