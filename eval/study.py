r"""The paper's four claims (and gradient quality) checked in one resumable command.

  python -m eval.study --quick                  # 1 seed, 2 epochs: minutes on a CPU
  python -m eval.study --output_dir=studies/fmnist   # 5 rules x 3 seeds, 10 epochs

Trains every rule x seed with `train.py` (same data, budget and seeds for every rule),
evaluates each run with `python -m eval`, and writes `DIR/report.md` with
`eval.compare`: one table per claim, mean ± std over seeds, verdicts against the
baseline (`none`) and the control (`random`), and the figures. The `random` control
runs at the kept fraction the `mean` rule actually measured (the mean over its mask
points and seeds), so it is a mask of equal sparsity that carries no information.

Run it again after an interruption: finished runs and evaluations are skipped, an
unfinished run resumes after its last finished epoch.
"""

import json
import pathlib
import subprocess
import sys
import time

from eval.cli import DeferredStderr, ImmediateStderr, parse_flags_or_fail

# Run as a program, TensorFlow's start-up lines are held back until the flags are checked.
_STDERR = DeferredStderr() if __name__ == "__main__" else ImmediateStderr()

from absl import app, flags, logging  # noqa: E402

from eval import EVALUATIONS  # noqa: E402
from gradmask_tf.ops import RULES  # noqa: E402
from gradmask_tf.training import KEPT_FRACTION_PREFIX  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "python -m eval.study"
ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_bool("quick", False, "1 seed, 2 epochs, 10,000 training examples, small evaluations.")
flags.DEFINE_string("output_dir", None, "Study directory. Defaults to studies/<dataset>-<model>[-quick].")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (tensorflow-datasets name).")
flags.DEFINE_string("data_dir", None, "Passed to train.py.")
flags.DEFINE_string("model", "cnn", "Architecture (train.py --model).")
flags.DEFINE_list("rules", ["none", "mean", "local", "lateral", "random"], "Mask rules to compare.")
flags.DEFINE_integer("seeds", 3, "Seeds per rule (0, 1, ...).", lower_bound=1)
flags.DEFINE_integer("epochs", 10, "Training epochs of every run.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", 0, "First N training examples (0 = all).", lower_bound=0)
flags.DEFINE_integer("max_test_examples", 0, "First N test examples for test accuracy (0 = all).", lower_bound=0)
flags.DEFINE_integer("eval_examples", 1000, "First N test examples for attacks and pruning.", lower_bound=1)
flags.DEFINE_integer("gsnr_every", 100, "GSNR logged every N training steps (0 = off).", lower_bound=0)
flags.DEFINE_bool("smoke", False, "Evaluations at their smoke settings (tests and CI).")
flags.DEFINE_list("train_flags", [], "Extra train.py flags, e.g. --train_flags=--batch_size=64.")

QUICK = dict(seeds=1, epochs=2, max_train_examples=10000, eval_examples=500)


def settings():
    values = {
        name: FLAGS[name].value
        for name in (
            "dataset", "data_dir", "model", "rules", "seeds", "epochs", "max_train_examples",
            "max_test_examples", "eval_examples", "gsnr_every", "smoke", "train_flags", "quick",
        )
    }
    if FLAGS.quick:
        for name, value in QUICK.items():
            if not FLAGS[name].present:
                values[name] = value
    unknown = [rule for rule in values["rules"] if rule not in RULES]
    if unknown or not values["rules"]:
        raise ValueError(
            f"flag --rules: unknown {', '.join(unknown) or '(empty)'}; valid: {', '.join(RULES)}"
        )
    if "random" in values["rules"] and "mean" not in values["rules"]:
        raise ValueError(
            "flag --rules: the random control runs at the kept fraction the mean rule "
            "measured, so it needs mean in --rules too"
        )
    values["rules"] = list(dict.fromkeys(values["rules"]))
    suffix = "-quick" if FLAGS.quick else ""
    values["output_dir"] = pathlib.Path(
        FLAGS.output_dir or f"studies/{values['dataset']}-{values['model']}{suffix}"
    )
    return values


def _run(command, log_path):
    """Runs a command, its output to a log; raises with the log's tail on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_path.read_text()[-1500:]
        raise RuntimeError(f"{' '.join(command[:3])} ... failed (see {log_path}):\n{tail}")


def measured_kept_fraction(run_dirs):
    """Mean kept fraction over the mask points of finished runs (their last epoch)."""
    values = []
    for run_dir in run_dirs:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        values += [v for k, v in metrics.items() if k.startswith(KEPT_FRACTION_PREFIX)]
    if not values:
        raise RuntimeError("the mean runs recorded no kept fraction")
    return float(sum(values) / len(values))


def train_command(options, run_dir, rule, seed, extra=()):
    command = [
        sys.executable, str(ROOT / "train.py"),
        f"--dataset={options['dataset']}", f"--model={options['model']}",
        f"--mask_rule={rule}", f"--seed={seed}", f"--epochs={options['epochs']}",
        f"--max_train_examples={options['max_train_examples']}",
        f"--max_test_examples={options['max_test_examples']}",
        f"--gsnr_every={options['gsnr_every']}", f"--output_dir={run_dir}",
        *options["train_flags"], *extra,
    ]
    if options["data_dir"]:
        command.append(f"--data_dir={options['data_dir']}")
    return command


def eval_command(options, run_dir, missing):
    command = [
        sys.executable, "-m", "eval", f"--run_dir={run_dir}", f"--evals={','.join(missing)}",
        f"--max_examples={options['eval_examples']}",
    ]
    if options["smoke"]:
        command.append("--smoke")
    elif options["quick"]:
        command += ["--fine_tune_examples=2000", "--num_images=8", "--smoothgrad_samples=10"]
    return command


class Progress:
    """`[k/n] what` lines with the elapsed time and an estimate of the time left."""

    def __init__(self, total):
        self.total, self.done, self.worked = total, 0, 0
        self.start, self.spent = time.perf_counter(), 0.0

    def step(self, what):
        elapsed = time.perf_counter() - self.start
        left = ""
        if self.worked:  # steps that were skipped (already done) do not count
            per_step = self.spent / self.worked
            left = f", about {per_step * (self.total - self.done) / 60:.0f} min left"
        print(f"[{self.done + 1}/{self.total}] {what} ({elapsed / 60:.1f} min so far{left})", flush=True)
        return time.perf_counter()

    def finish(self, started, did_work):
        self.done += 1
        if did_work:
            self.worked += 1
            self.spent += time.perf_counter() - started


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _STDERR.fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        options = settings()
    except ValueError as error:
        _STDERR.fail(PROGRAM, error)
    _STDERR.release()
    from gradmask_tf import runs

    directory = options["output_dir"]
    directory.mkdir(parents=True, exist_ok=True)
    logs = directory / "logs"
    seeds = list(range(options["seeds"]))
    # The control needs the mean rule's measured kept fraction: it goes last.
    rules = [r for r in options["rules"] if r != "random"] + (
        ["random"] if "random" in options["rules"] else []
    )
    jobs = [(rule, seed) for rule in rules for seed in seeds]
    progress = Progress(2 * len(jobs) + 1)
    started_at = time.perf_counter()
    run_dirs = {}
    for rule, seed in jobs:
        run_dir = directory / "runs" / f"{rule}-seed{seed}"
        run_dirs[(rule, seed)] = run_dir
        started = progress.step(f"train {rule}, seed {seed}")
        extra = []
        if rule == "random":
            keep = measured_kept_fraction([run_dirs[("mean", s)] for s in seeds])
            extra.append(f"--mask_keep_fraction={keep:.4f}")
        finished = (run_dir / runs.METRICS).is_file()
        if not finished:
            _run(train_command(options, run_dir, rule, seed, extra), logs / f"{rule}-seed{seed}.log")
        progress.finish(started, not finished)
    for rule, seed in jobs:
        run_dir = run_dirs[(rule, seed)]
        started = progress.step(f"evaluate {rule}, seed {seed}")
        missing = [name for name in EVALUATIONS if not (run_dir / "eval" / f"{name}.json").is_file()]
        if missing:
            _run(eval_command(options, run_dir, missing), logs / f"{rule}-seed{seed}.log")
        progress.finish(started, bool(missing))
    progress.step("report")
    from eval import compare

    compare.report([compare.load_run(path) for path in run_dirs.values()], directory)
    record = directory / "study.json"
    previous = runs.read_json(record) if record.is_file() else {}
    runs.atomic_write_json(
        record,
        {
            "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in options.items()},
            "command": " ".join([PROGRAM, *sys.argv[1:]]),
            "wall_seconds_this_invocation": time.perf_counter() - started_at,
            "wall_seconds_total": previous.get("wall_seconds_total", 0.0)
            + time.perf_counter() - started_at,
        },
    )
    print(f"Done: {directory / 'report.md'} ({(time.perf_counter() - started_at) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags_or_fail(FLAGS, argv, _STDERR, PROGRAM))
