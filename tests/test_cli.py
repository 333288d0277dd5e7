"""Command-line plumbing (eval/cli.py): start-up noise held back, one-line failures.

That importing any module changes nothing is tests/test_imports.py's.
"""

import subprocess
import sys
import textwrap

from tests.helpers import ROOT


def _python(code):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


def test_held_stderr_is_replayed_without_startup_noise():
    result = _python(
        r"""
        import os
        from eval.cli import DeferredStderr
        held = DeferredStderr()
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"E0000 00:00:1 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"a real warning\n")
        from absl import logging
        logging.warning("Variant folder /x/3.0.1 has no dataset_info.json")
        logging.warning("another real warning")
        held.release()
        os.write(2, b"after\n")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "a real warning"
    assert "another real warning" in lines[1]
    assert lines[2:] == ["after"]


def test_fail_prints_one_line_and_exits_2():
    result = _python(
        """
        import os
        from eval.cli import DeferredStderr
        held = DeferredStderr()
        os.write(2, b"noise from a native library\\n")
        held.fail("prog", "flag --x: bad\\n  value")
        """
    )
    assert result.returncode == 2
    assert result.stderr == "prog: error: flag --x: bad value\n"
