"""Importing any module of the project changes nothing in the process.

Every module, found by walking gradmask_tf/, eval/ and train.py, is imported in a fresh
interpreter; the environment, the standard streams' file descriptors, the logging
handlers and filters, the atexit hooks, Keras's dtype policy, op determinism and absl's
global flags must be the same before and after. A command changes what it must only
once its `main` runs.
"""

import subprocess
import sys
import textwrap

from tests.helpers import ROOT, environment

_CHECK = r"""
import atexit, importlib, logging, os, sys
# Third-party start-up state is theirs, not ours: loaded first.
import absl.flags, absl.logging, keras, tensorflow as tf
from tensorflow.python.framework import config as framework_config

def state():
    loggers = [logging.getLogger(), absl.logging.get_absl_logger(),
               *(logger for logger in logging.root.manager.loggerDict.values()
                 if isinstance(logger, logging.Logger))]
    return dict(
        environment=dict(os.environ),
        descriptors=[os.fstat(fd).st_ino for fd in (0, 1, 2)],
        logging={logger.name: (list(logger.handlers), list(logger.filters), logger.level)
                 for logger in loggers},
        atexit=atexit._ncallbacks(),
        policy=keras.mixed_precision.global_policy().name,
        determinism=framework_config.is_op_determinism_enabled(),
        flags=sorted(absl.flags.FLAGS),
    )

before = state()
names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
after = state()
for key, value in before.items():
    now = after[key]
    if key == "logging":  # loggers made by the imports are new, not changed
        now = {name: entry for name, entry in now.items() if name in value}
    if isinstance(value, dict) and now != value:
        names = sorted(name for name in value.keys() | now.keys() if value.get(name) != now.get(name))
        print(f"CHANGED {key}: {names}")
    elif now != value:
        print(f"CHANGED {key}: {value!r} -> {now!r}")
print(f"imported {len(names)}")
"""


def _modules():
    names = ["train"]
    for package in ("gradmask_tf", "eval"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_importing_every_module_changes_nothing():
    modules = _modules()
    assert {"train", "gradmask_tf.trainer", "eval.study", "eval.__main__"} <= set(modules)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHECK), *modules],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CHANGED" not in result.stdout, result.stdout
    assert result.stdout.strip().endswith(f"imported {len(modules)}")
