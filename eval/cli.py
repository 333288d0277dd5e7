"""Command-line plumbing shared by train.py and the eval commands.

Imports nothing heavy, and importing it changes nothing: an entry point run as a program
creates its `DeferredStderr` at its top, before TensorFlow is imported; called from
Python it uses `ImmediateStderr`.
"""

import atexit
import logging
import os
import re
import sys
import tempfile

# Start-up lines that say nothing to a user: TensorFlow's native logging before it is
# configured, the CUDA probe of a machine without a GPU, and a TFDS warning about a
# dataset folder it has not created yet. Matched anywhere in the line.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|\] oneDNN custom operations are on"
    r"|\] Could not find cuda drivers on your machine"
    r"|\] failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|\] This TensorFlow binary is optimized to use available CPU instructions"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|has no dataset_info\.json"
)


class _DropStartupNoise(logging.Filter):
    def filter(self, record):
        return not STARTUP_NOISE.search(record.getMessage())


def quiet_python_logging():
    """Drops the start-up noise that Python loggers (absl's, TFDS's) print."""
    from absl import logging as absl_logging

    absl_logging.get_absl_logger().addFilter(_DropStartupNoise())


class DeferredStderr:
    """Holds back what native code writes to stderr until the command is validated.

    Importing TensorFlow prints lines from C++ that no setting silences. Created at the
    top of an entry point, before TensorFlow is imported, it raises TensorFlow's native
    log level to errors, drops the known start-up noise (`STARTUP_NOISE`) from Python
    logging, and sends stderr to a temporary file until the arguments, files and data
    are checked, so a bad command line gets exactly one line. Once the work starts (or
    if the process ends unexpectedly) what was held back is written out, less the
    start-up noise.
    """

    def __init__(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        quiet_python_logging()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        self._active = True
        atexit.register(self.release)

    def release(self, replay=True):
        if not self._active:
            return
        self._active = False
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        if replay:
            self._file.seek(0)
            held = self._file.read().decode(errors="replace").splitlines(keepends=True)
            kept = (line for line in held if not STARTUP_NOISE.search(line))
            os.write(2, "".join(kept).encode())
        self._file.close()

    def fail(self, program, message):
        """Exits with status 2 after one line on stderr, dropping what was held."""
        self.release(replay=False)
        sys.stderr.write(f"{program}: error: {' '.join(str(message).split())}\n")
        sys.exit(2)


class ImmediateStderr:
    """`DeferredStderr`'s interface for a command called from Python: nothing held back."""

    def release(self, replay=True):
        pass

    def fail(self, program, message):
        """Exits with status 2 after one line on stderr."""
        sys.stderr.write(f"{program}: error: {' '.join(str(message).split())}\n")
        sys.exit(2)


def parse_flags_or_fail(flag_values, argv, stderr, program):
    """absl flag parsing whose errors are one line and exit status 2."""
    from absl import flags

    try:
        return flag_values(argv)
    except flags.Error as error:
        stderr.fail(program, error)


HELP_FLAGS = ("--help", "-h", "--helpfull")


def wants_help(argv):
    """Whether a command line (`argv[0]` the program) asks for the flags' help."""
    return any(arg in HELP_FLAGS for arg in argv[1:])


def parse_own_flags(define_flags, argv, hint=""):
    """The flags `define_flags` defines on a fresh `absl.flags.FlagValues`, parsed from
    `argv` (`argv[0]` is the program): a command's own flags, never absl's global ones.

    Raises:
      ValueError: One line naming a flag that is wrong, or the unexpected arguments
        (followed by `hint`).
    """
    from absl import flags

    flag_values = define_flags(flags.FlagValues())
    try:
        rest = flag_values(list(argv))
    except flags.Error as error:
        raise ValueError(str(error)) from None
    if len(rest) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(rest[1:])}{hint}")
    return flag_values
