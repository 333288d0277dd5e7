"""One run of a study end to end: train it if needed, evaluate what is missing, keep its results.

A study (`eval.study`) is a grid of independent runs, one per (regime, arm, seed). Each is
a `StudyRun`: its train.py and `python -m eval` command lines, its run directory, and the
directory its small result files are copied to (`--results_dir`). Both engines call it:
the local engine trains every run of a regime, then evaluates each (`train`, then
`evaluate`); the Ray engine (`eval.ray_engine`) runs each end to end in a Ray Tune trial
(`run`), on whichever machine the trial lands.

Everything a run decides it reads from its directories, so it can be called again at
any time: a finished run is not trained again, an unfinished one resumes after its last
finished epoch (train.py does that from the run directory's checkpoint), and only the
evaluations that have no result yet run. Its result files are checked first (`heal`,
`eval.result_files`): a damaged one is moved aside and put back from its other copy,
or what it held is done again.

Imports nothing heavy: a Ray worker imports this module to run a trial, and the trial's
work happens in the train.py and `python -m eval` subprocesses.
"""

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys

from eval import result_files
from gradmask_tf.files import CONFIG, HISTORY, METRICS

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The small files of a finished run that a report needs, copied to --results_dir.
RESULT_FILES = (CONFIG, METRICS, HISTORY)
# Evaluation outputs copied beside them: the JSON results and the saliency maps of the
# report's figure (a few images: small); never models, checkpoints or logs.
EVAL_RESULT_PATTERNS = ("*.json", "saliency_maps.npz")


def copy_results(run_dir, results):
    """Copies a run's small result files to `results` (a run directory of its own), each
    through a temporary file renamed into place: a copy cut short leaves no half file."""
    results.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (run_dir / name).is_file():
            result_files.copy_file(run_dir / name, results / name)
    for pattern in EVAL_RESULT_PATTERNS:
        for path in sorted((run_dir / "eval").glob(pattern)):
            if path.name.startswith("."):  # a write cut short: not a result
                continue
            result_files.copy_file(path, results / "eval" / path.name)


def warn(line):
    """Prints a study's one-line warning on stderr."""
    print(f"python -m eval.study: {line}", file=sys.stderr, flush=True)


def thread_environment(threads, gpus=0.0):
    """The environment variables that fix a run's thread counts (and GPU sharing).

    Args:
      threads: TensorFlow's intra-op and inter-op thread counts and OpenMP's (oneDNN);
        0 leaves TensorFlow's defaults (every core of the machine).
      gpus: The GPUs the run holds; below 1 it shares one, so TensorFlow allocates GPU
        memory as it needs it instead of taking all of it.

    Returns:
      A dict of variables to set in the run's environment.
    """
    env = {}
    if threads:
        env.update(
            OMP_NUM_THREADS=str(threads),
            TF_NUM_INTRAOP_THREADS=str(threads),
            TF_NUM_INTEROP_THREADS=str(threads),
        )
    if 0 < gpus < 1:
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    return env


def _kill_with_parent():
    """A `preexec_fn` that makes the child get SIGKILL when the thread that started it
    dies (Linux's PR_SET_PDEATHSIG), or None where that is not available.

    A trial whose process dies (a Ray worker killed, a node lost) takes its train.py with
    it, so its retry never finds an orphan still writing the run directory. The `prctl`
    function is looked up here, in the parent, so the child only calls it; a parent
    gone before the child's `prctl` (the race it leaves open) is caught by its pid.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None
    parent = os.getpid()

    def die_with_parent():
        prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        # A parent that died between the fork and the prctl sent no signal: the child
        # now belongs to another process, so it ends itself.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


def execute(command, log_path, env=None):
    """Runs a command, its output appended to a log; raises with the log's tail on failure.

    Args:
      command: The command line, a list of strings; it runs in the project's root.
      log_path: The log file, created if needed.
      env: Variables set in the command's environment, on top of this process's.

    Raises:
      RuntimeError: The command exited with a non-zero status (or was killed); the
        message names the log and ends with its last lines.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_kill_with_parent(),
        )
    if result.returncode != 0:
        tail = log_path.read_text()[-1500:]
        status = (f"killed by signal {-result.returncode}" if result.returncode < 0
                  else f"exit status {result.returncode}")
        raise RuntimeError(
            f"{' '.join(command[:3])} ... failed ({status}; see {log_path}):\n{tail}"
        )


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One (regime, arm, seed) run of a study.

    Attributes:
      what: How progress lines name it, e.g. `clean: mean, seed 0`.
      name: Its directory name, e.g. `mean-seed0`.
      run_dir: Its run directory (train.py's `--output_dir`).
      results: Where its small result files are copied (`--results_dir`), or None.
      log: The log of its commands.
      train_command: The train.py command line that trains it into `run_dir`.
      evals: The evaluations it needs (`python -m eval --evals`), in order.
      eval_flags: The flags of `python -m eval` beyond the run and the evaluations.
      env: Variables set in the environment of its commands (`thread_environment`).
    """

    what: str
    name: str
    run_dir: pathlib.Path
    results: pathlib.Path | None
    log: pathlib.Path
    train_command: tuple
    evals: tuple = ()
    eval_flags: tuple = ()
    env: tuple = ()  # (name, value) pairs: the instance stays hashable

    def evaluated(self):
        """The evaluations with a result, in the run directory or in `results`."""
        done = {p.stem for p in result_files.evaluation_files(self.run_dir)}
        if self.results is not None:
            done |= {p.stem for p in result_files.evaluation_files(self.results)}
        return done

    def missing(self):
        """The evaluations still to run, in order."""
        done = self.evaluated()
        return [name for name in self.evals if name not in done]

    def _trained_here(self):
        return (self.run_dir / METRICS).is_file()

    def _stored(self):
        return self.results is not None and all(
            (self.results / name).is_file() for name in RESULT_FILES)

    def heal(self):
        """Checks the run's result files in both places and heals what is damaged
        (`eval.result_files.heal`): a damaged file is moved aside and put back from its
        other copy, or what it held is done again. Call it before deciding what the run
        needs.

        Returns:
          Whether anything was damaged.
        """
        return result_files.heal(self.run_dir, self.results, self.what, warn)

    def needs_training(self):
        """Whether train.py must run: stored results are enough unless an evaluation is
        missing (it needs the model)."""
        return not self._trained_here() and not (self._stored() and not self.missing())

    def is_complete(self):
        """Whether nothing is left to do: trained (here or stored) and fully evaluated."""
        return not self.needs_training() and not self.missing()

    def train(self):
        """Trains the run if needed (resuming an unfinished one) and copies its results.

        Returns:
          Whether train.py ran.
        """
        self.heal()
        trained_here, stored = self._trained_here(), self._stored()
        needed = self.needs_training()
        if needed:
            execute(list(self.train_command), self.log, dict(self.env))
        if self.results is not None and (needed or (trained_here and not stored)):
            copy_results(self.run_dir, self.results)
        return needed

    def evaluate(self):
        """Runs the evaluations that have no result yet and copies their results.

        Returns:
          The evaluations that ran.
        """
        self.heal()
        missing = self.missing()
        if missing:
            python = self.train_command[0]  # the interpreter that trains it
            command = [
                python, "-m", "eval", f"--run_dir={self.run_dir}",
                f"--evals={','.join(missing)}", *self.eval_flags,
            ]
            execute(command, self.log, dict(self.env))
            if self.results is not None:
                copy_results(self.run_dir, self.results)
        return missing

    def run(self):
        """The run end to end: `train`, then `evaluate`.

        Returns:
          `{"trained": whether train.py ran, "evaluated": the evaluations that ran,
          comma-separated}`.
        """
        return {"trained": self.train(), "evaluated": ",".join(self.evaluate())}
