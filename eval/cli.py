"""Command-line plumbing shared by train.py and the eval commands.

Imports nothing heavy: it must run before TensorFlow is imported.
"""

import atexit
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class DeferredStderr:
    """Holds back what native code writes to stderr until the command is validated.

    Importing TensorFlow prints lines from C++ that no setting silences. Until the
    arguments, files and data are checked, stderr goes to a temporary file, so a bad
    command line gets exactly one line. Once the work starts (or if the process dies
    unexpectedly) what was held back is written out.
    """

    def __init__(self):
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
            os.write(2, self._file.read())
        self._file.close()

    def fail(self, program, message):
        """Exits with status 2 after one line on stderr, dropping what was held."""
        self.release(replay=False)
        sys.stderr.write(f"{program}: error: {' '.join(str(message).split())}\n")
        sys.exit(2)


def parse_flags_or_fail(flag_values, argv, stderr, program):
    """absl flag parsing whose errors are one line and exit status 2."""
    from absl import flags

    try:
        return flag_values(argv)
    except flags.Error as error:
        stderr.fail(program, error)
