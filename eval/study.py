r"""The paper's four claims (and gradient quality) checked in one resumable command.

  python -m eval.study --quick                       # 1 seed, 2 epochs: minutes on a CPU
  python -m eval.study --output_dir=studies/fmnist   # none, 3 rules and their controls x 5 seeds

Trains with `train.py` the baseline (`none`), every masked rule of `--rules` and, with
`--controls` (the default), each rule's matched control (`--mask_control`: as many
entries kept as the rule, the same L1 mass, uniformly random places), for every seed:
same data, budget and seeds for every arm. Evaluates each run with `python -m eval
--evals=...` and writes `DIR/report.md` with `eval.compare`: arms paired by seed, a
verdict for each `--primary` comparison (declared before the runs), every other
difference with its interval, and the figures.

With `--plan=NAME` the arms, regimes, primaries and seeds come from a plan,
`eval/plans/NAME.json` (eval/plans.py): runs under `DIR/<regime>/runs/<arm>-seed<seed>`,
one report per regime and an index `DIR/report.md`. With `--results_dir=DIR` the small
result files of every run are copied there when it finishes and looked for there first.

Run it again after an interruption: finished runs and evaluations are skipped, an
unfinished run resumes after its last finished epoch.

With `--engine=ray` (eval/ray_engine.py) each (regime, arm, seed) run, with its
evaluations, is one Ray Tune trial, on an embedded Ray or on a cluster
(`--ray_address`); a trial whose process dies is retried and resumes. Both engines run a
run with `StudyRun` (eval/study_runs.py) and write the same files.
"""

import pathlib
import sys
import time

from eval.cli import DeferredStderr, ImmediateStderr, parse_flags_or_fail

# Run as a program, TensorFlow's start-up lines are held back until the flags are checked.
_STDERR = DeferredStderr() if __name__ == "__main__" else ImmediateStderr()

from absl import app, flags, logging  # noqa: E402

from eval import EVALUATIONS  # noqa: E402
from eval.arms import UNMASKED, parse_primaries  # noqa: E402
from eval.study_runs import (  # noqa: E402, F401 (the result names and copy_results: for callers)
    EVAL_RESULT_PATTERNS, RESULT_FILES, StudyRun, copy_results, thread_environment,
)
from gradmask_tf.ops import RULES  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "python -m eval.study"
ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_bool("quick", False, "1 seed, 2 epochs, 10,000 training examples, small evaluations.")
flags.DEFINE_string("output_dir", None, "Study directory. Defaults to studies/<dataset>-<model>[-quick].")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (tensorflow-datasets name).")
flags.DEFINE_string("data_dir", None, "Passed to train.py.")
flags.DEFINE_string("model", "cnn", "Architecture (train.py --model).")
flags.DEFINE_list(
    "rules", ["mean", "local", "lateral"], "Masked rules (none, the baseline, always runs)."
)
flags.DEFINE_bool(
    "controls", True, "Also train each masked rule's matched control (train.py --mask_control)."
)
flags.DEFINE_list(
    "primary", ["mean:test_accuracy:higher"],
    "Primary comparisons, declared before the runs, passed to eval.compare: at most 3 "
    "rule:metric:direction (higher or lower is better). Only these get a verdict.",
)
flags.DEFINE_list(
    "evals", list(EVALUATIONS),
    f"Evaluations of every run (python -m eval --evals): {', '.join(EVALUATIONS)}; empty: none.",
)
flags.DEFINE_integer("seeds", 5, "Seeds per arm (0, 1, ...).", lower_bound=1)
flags.DEFINE_integer("epochs", 10, "Training epochs of every run.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", 0, "N training examples, drawn with each seed (0 = all).", lower_bound=0)
flags.DEFINE_integer("max_test_examples", 0, "First N test examples for test accuracy (0 = all).", lower_bound=0)
flags.DEFINE_integer("eval_examples", 1000, "First N test examples for attacks and pruning.", lower_bound=1)
flags.DEFINE_integer("gsnr_every", 100, "GSNR logged every N training steps (0 = off).", lower_bound=0)
flags.DEFINE_bool("smoke", False, "Evaluations at their smoke settings (tests and CI).")
flags.DEFINE_list("train_flags", [], "Extra train.py flags, e.g. --train_flags=--batch_size=64.")
flags.DEFINE_string(
    "plan", None,
    "A study plan: eval/plans/NAME.json or a path to a .json file (arms, regimes, primaries, "
    "seeds; see eval/plans.py). --rules, --controls and --primary do not apply; --seeds, "
    "--epochs, --evals, --max_*_examples and --train_flags, when given, override the plan.",
)
flags.DEFINE_list(
    "regimes", [],
    "With --plan: run only these of its regimes (default: all), e.g. to split a plan over "
    "machines that share --results_dir.",
)
flags.DEFINE_string(
    "results_dir", None,
    "Where each run's small result files (config.json, metrics.json, history.csv, eval/*) "
    "are copied once it finishes, and looked for first: a run found there is not trained "
    "again, and the reports are built from there.",
)

flags.DEFINE_enum(
    "engine", "local", ["local", "ray"],
    "local: the runs one after another on this machine. ray: each (regime, arm, seed) run, "
    "with its evaluations, one Ray Tune trial, on a Ray cluster (--ray_address) or an "
    "embedded Ray on this machine; needs requirements-ray.txt.",
)
flags.DEFINE_string(
    "ray_address", None,
    "--engine=ray: the Ray cluster, HOST:PORT of its head (`ray start --head`) or auto "
    "(the cluster this machine belongs to); the study runs on one of its nodes. "
    "Default: an embedded Ray on this machine.",
)
flags.DEFINE_integer(
    "cpus_per_run", None,
    "CPUs of each run: TensorFlow's (and OpenMP's) thread counts of its train.py and "
    "evaluations and, with --engine=ray, the CPUs its trial reserves (default there: 1). "
    "The local engine, without it, leaves TensorFlow's defaults.",
    lower_bound=1,
)
flags.DEFINE_float(
    "gpus_per_run", 0.0,
    "--engine=ray: GPUs each trial reserves: a whole number, or a fraction below 1 for "
    "runs that share a GPU (0.5: two a GPU).",
    lower_bound=0.0,
)
flags.DEFINE_integer(
    "max_failures", 3,
    "--engine=ray: retries of a run whose trial fails (its process killed, its node "
    "lost); each retry resumes after the run's last finished epoch.",
    lower_bound=0,
)

# The flags that only --engine=ray uses.
RAY_FLAGS = ("ray_address", "gpus_per_run", "max_failures")

QUICK = dict(seeds=1, epochs=2, max_train_examples=10000, eval_examples=500)
# A plan's --quick (every regime, tiny: a pipeline check of a study of dozens of arms):
# one epoch on 2,000 examples, the evaluations at their smoke settings.
QUICK_PLAN = dict(epochs=1, max_train_examples=2000)


def settings():
    values = {
        name: FLAGS[name].value
        for name in (
            "dataset", "data_dir", "model", "rules", "controls", "primary", "evals", "seeds",
            "epochs", "max_train_examples", "max_test_examples", "eval_examples", "gsnr_every",
            "smoke", "train_flags", "quick",
        )
    }
    if FLAGS.quick:
        for name, value in QUICK.items():
            if not FLAGS[name].present:
                values[name] = value
    values["rules"] = _masked_rules(values["rules"])
    unknown = [name for name in values["evals"] if name not in EVALUATIONS]
    if unknown:
        raise ValueError(
            f"flag --evals: unknown {', '.join(unknown)}; valid: {', '.join(EVALUATIONS)}"
        )
    values["evals"] = list(dict.fromkeys(values["evals"]))
    values["primary"] = [str(primary) for primary in _primaries(values)]
    suffix = "-quick" if FLAGS.quick else ""
    values["output_dir"] = pathlib.Path(
        FLAGS.output_dir or f"studies/{values['dataset']}-{values['model']}{suffix}"
    )
    return values


def plan_settings():
    """The settings of a `--plan` study: the plan, checked, and the flags that override it."""
    from eval import plans

    plan = plans.load(FLAGS.plan)
    values = {
        name: FLAGS[name].value
        for name in ("dataset", "data_dir", "model", "max_test_examples", "eval_examples",
                     "gsnr_every", "smoke", "train_flags", "quick")
    }
    overrides = {}
    for name in ("epochs", "max_train_examples", "max_test_examples"):
        if FLAGS[name].present:
            overrides[name] = FLAGS[name].value
        elif FLAGS.quick and name in QUICK_PLAN:
            overrides[name] = QUICK_PLAN[name]
            values.setdefault("quick_overrides", []).append(name)
    values["overrides"] = overrides
    if FLAGS["seeds"].present:
        plan["seeds"] = list(range(FLAGS.seeds))
    elif FLAGS.quick:
        plan["seeds"] = plan["seeds"][:1]
    if FLAGS.quick:
        values["smoke"] = True
    if FLAGS["evals"].present:
        unknown = [name for name in FLAGS.evals if name not in EVALUATIONS]
        if unknown:
            raise ValueError(
                f"flag --evals: unknown {', '.join(unknown)}; valid: {', '.join(EVALUATIONS)}"
            )
        for regime in plan["regimes"]:
            regime["evals"] = list(dict.fromkeys(FLAGS.evals))
    if FLAGS.regimes:
        names = [regime["name"] for regime in plan["regimes"]]
        unknown = [name for name in FLAGS.regimes if name not in names]
        if unknown:
            raise ValueError(
                f"flag --regimes: no regime {', '.join(unknown)} in plan {plan['name']}; "
                f"its regimes: {', '.join(names)}"
            )
        plan["regimes"] = [r for r in plan["regimes"] if r["name"] in FLAGS.regimes]
    values["plan"] = plan
    suffix = "-quick" if FLAGS.quick else ""
    values["output_dir"] = pathlib.Path(FLAGS.output_dir or f"studies/{plan['name']}{suffix}")
    return values


def _masked_rules(rules):
    """The masked rules of --rules, in order, once each; `none` always runs anyway."""
    masked = [rule for rule in RULES if rule not in UNMASKED]
    if "random" in rules:
        raise ValueError(
            "flag --rules: random is not a masked rule; each masked rule's matched control "
            "(--controls) is the control it is judged against"
        )
    unknown = [rule for rule in rules if rule not in RULES]
    rules = [rule for rule in dict.fromkeys(rules) if rule in masked]
    if unknown or not rules:
        raise ValueError(
            f"flag --rules: {'unknown ' + ', '.join(unknown) if unknown else 'no masked rule'}; "
            f"valid: {', '.join(masked)}"
        )
    return rules


def _primaries(values):
    """The declared primaries, each of a rule the study trains, with its control."""
    primaries = parse_primaries(values["primary"])
    for primary in primaries:
        if primary.rule not in values["rules"]:
            raise ValueError(
                f"flag --primary: {primary} names {primary.rule}, which is not in "
                f"--rules={','.join(values['rules'])}; declare the primaries with --primary"
            )
    if primaries and not values["controls"]:
        raise ValueError(
            "flag --primary: a primary is judged against the rule's matched control, which "
            "--nocontrols leaves out; pass --primary= to declare none"
        )
    return primaries


def train_command(options, run_dir, rule, control, seed):
    command = [
        sys.executable, str(ROOT / "train.py"),
        f"--dataset={options['dataset']}", f"--model={options['model']}",
        f"--mask_rule={rule}", f"--seed={seed}", f"--epochs={options['epochs']}",
        f"--max_train_examples={options['max_train_examples']}",
        f"--max_test_examples={options['max_test_examples']}",
        f"--gsnr_every={options['gsnr_every']}", f"--output_dir={run_dir}",
        *options["train_flags"], *(["--mask_control"] if control else []),
    ]
    if options["data_dir"]:
        command.append(f"--data_dir={options['data_dir']}")
    return command


def eval_flags(options):
    """The flags of `python -m eval` beyond the run directory and the evaluations."""
    flags_ = [f"--max_examples={options['eval_examples']}"]
    if options["smoke"]:
        flags_.append("--smoke")
    elif options["quick"]:
        flags_ += ["--fine_tune_examples=2000", "--num_images=8", "--smoothgrad_samples=10"]
    return flags_


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


def plan_train_command(options, run_dir, arm, regime, seed):
    """train.py for one (regime, arm, seed) of a plan: the regime's flags, the arm's
    options, then the study's overrides (so --quick and explicit flags win)."""
    from eval import plans

    chosen = {**regime["flags"], **arm["options"]}
    overrides = dict(options["overrides"])
    if "examples_per_class" in chosen:  # the subset is the regime's
        overrides.pop("max_train_examples", None)
    for name in options.get("quick_overrides", ()):  # --quick shrinks, never enlarges
        if chosen.get(name) and name in overrides and chosen[name] < overrides[name]:
            overrides.pop(name)
    command = [
        sys.executable, str(ROOT / "train.py"),
        f"--dataset={options['dataset']}", f"--model={options['model']}",
        f"--mask_rule={arm['rule']}", f"--seed={seed}",
        f"--gsnr_every={options['gsnr_every']}", f"--output_dir={run_dir}",
        *plans.flag_arguments(chosen), *plans.flag_arguments(overrides),
        *options["train_flags"], *(["--mask_control"] if arm["control"] else []),
    ]
    if options["data_dir"]:
        command.append(f"--data_dir={options['data_dir']}")
    return command


def copy_report(directory, results, figures=True):
    """Copies a report (`report.md` and, with `figures`, its figures) beside the results,
    so that the committed results carry the report they rebuild."""
    from gradmask_tf import runs

    for path in [directory / "report.md", *(sorted(directory.glob("*.png")) if figures else [])]:
        if path.is_file():
            runs.atomic_write(results / path.name, lambda file, p=path: file.write(p.read_bytes()),
                              binary=True)


def _regimes(options, env=None):
    """`[{"name", "directory", "results", "evals", "primary", "runs"}]`, each run a
    `StudyRun`; without a plan, one regime: the study itself.

    Args:
      options: The study's settings (`settings` or `plan_settings`), with `results_dir`.
      env: Variables set in the environment of every run's commands
        (`study_runs.thread_environment`).
    """
    directory, results_dir = options["output_dir"], options["results_dir"]
    env = tuple(sorted((env or {}).items()))
    plan = options.get("plan")

    def study_run(what, name, regime_directory, results, evals, command):
        run_dir = regime_directory / "runs" / name
        return StudyRun(
            what=what, name=name, run_dir=run_dir,
            results=results / name if results else None,
            log=regime_directory / "logs" / f"{name}.log",
            train_command=tuple(command(run_dir)), evals=tuple(evals),
            eval_flags=tuple(eval_flags(options)), env=env,
        )

    if plan is None:
        seeds = list(range(options["seeds"]))
        # The baseline, then each masked rule beside its matched control.
        arms = [("none", False)] + [
            (rule, control)
            for rule in options["rules"]
            for control in ((False, True) if options["controls"] else (False,))
        ]
        runs = [
            study_run(
                f"{rule}{' control' if control else ''}, seed {seed}",
                f"{rule}{'-control' if control else ''}-seed{seed}",
                directory, results_dir, options["evals"],
                lambda run_dir, r=rule, c=control, s=seed: train_command(options, run_dir, r, c, s),
            )
            for rule, control in arms
            for seed in seeds
        ]
        return [dict(name=None, directory=directory, results=results_dir,
                     evals=options["evals"], primary=options["primary"], runs=runs)]
    from eval import plans

    regimes = []
    for regime in plan["regimes"]:
        regime_directory = directory / regime["name"]
        results = results_dir / regime["name"] if results_dir else None
        runs = [
            study_run(
                f"{regime['name']}: {arm}, seed {seed}", f"{arm}-seed{seed}",
                regime_directory, results, regime["evals"],
                lambda run_dir, a=plan["arms"][arm], g=regime, s=seed:
                plan_train_command(options, run_dir, a, g, s),
            )
            # Seed by seed: a study stopped part-way leaves every arm paired on its
            # first seeds, not some arms whole and others missing.
            for seed in plan["seeds"]
            for arm in regime["arms"]
        ]
        regimes.append(dict(
            name=regime["name"], directory=regime_directory, results=results,
            evals=regime["evals"], primary=plans.primaries(plan, regime), runs=runs,
        ))
    return regimes


def _index(options, regimes):
    """`DIR/report.md` of a plan: its notes, seeds and a link to each regime's report."""
    plan = options["plan"]
    path = pathlib.Path(plan["path"])
    if path.is_absolute() and path.is_relative_to(ROOT):
        path = path.relative_to(ROOT)  # the index is committed: no machine's checkout path
    lines = [f"# Study `{plan['name']}`", "", f"Plan: `{path}`; seeds: "
             f"{', '.join(map(str, plan['seeds']))}.", ""]
    if plan["notes"]:
        lines += [plan["notes"], ""]
    lines += ["| regime | train.py flags | arms | primaries | report |", "|---|---|---|---|---|"]
    for regime, declared in zip(regimes, plan["regimes"]):
        flags_text = " ".join(f"`{a}`" for a in _flag_text(declared["flags"])) or "(defaults)"
        lines.append(
            f"| {regime['name']} | {flags_text} | {', '.join(declared['arms'])} | "
            f"{', '.join(f'`{p}`' for p in declared['primary']) or '(none)'} | "
            f"[{regime['name']}/report.md]({regime['name']}/report.md) |"
        )
    from gradmask_tf import runs

    runs.atomic_write_text(options["output_dir"] / "report.md", "\n".join(lines) + "\n")


def _flag_text(values):
    from eval import plans

    return plans.flag_arguments(values)


def engine_settings():
    """The engine's flags, checked: `{"engine", "address", "cpus", "gpus", "max_failures"}`.

    Raises:
      ValueError: A flag of the Ray engine with the local one, or a fraction of GPUs
        above 1 (one line naming the flag).
    """
    if FLAGS.engine == "local":
        given = [name for name in RAY_FLAGS if FLAGS[name].present]
        if given:
            raise ValueError(f"flag --{given[0]}: only with --engine=ray")
        return dict(engine="local", address=None, cpus=FLAGS.cpus_per_run or 0, gpus=0.0,
                    max_failures=0)
    gpus = FLAGS.gpus_per_run
    if gpus > 1 and gpus != int(gpus):
        raise ValueError(
            f"flag --gpus_per_run={gpus:g}: a whole number of GPUs, or a fraction below 1 "
            "(runs that share a GPU)"
        )
    if FLAGS.ray_address is not None:
        from eval import ray_engine

        ray_engine.parse_address(FLAGS.ray_address)
    return dict(engine="ray", address=FLAGS.ray_address, cpus=FLAGS.cpus_per_run or 1,
                gpus=gpus, max_failures=FLAGS.max_failures)


def _train_and_evaluate(regime, progress):
    """The local engine, one regime: trains every run, then evaluates each.

    Returns:
      How many runs train.py trained.
    """
    trained = 0
    for run in regime["runs"]:
        started = progress.step(f"train {run.what}")
        needed = run.train()
        trained += needed
        progress.finish(started, needed)
    for run in regime["runs"] if regime["evals"] else ():
        started = progress.step(f"evaluate {run.what}")
        progress.finish(started, bool(run.evaluate()))
    return trained


def _on_ray(regimes, engine, cluster, progress, directory):
    """The Ray engine: every run that is not complete, one Ray Tune trial each.

    Returns:
      `ray_engine.run_trials`'s summary (`{"trained", "retries", "failed"}`) and
      `"unfinished"`: the runs still not complete.
    """
    from eval import ray_engine

    runs = [run for regime in regimes for run in regime["runs"]]
    todo = ray_engine.pending(runs)
    for run in runs:
        if run not in todo:
            run.train()  # complete: copies its results to --results_dir if they are not there
    print(f"Ray: {cluster}; {len(todo)} of {len(runs)} runs to do, each "
          f"{engine['cpus']} CPU(s) and {engine['gpus']:g} GPU(s), retried up to "
          f"{engine['max_failures']} times", flush=True)
    summary = {"trained": 0, "retries": 0, "failed": []}
    try:
        if todo:
            progress.total += len(todo)
            summary = ray_engine.run_trials(
                todo, storage=directory / "ray", cpus_per_run=engine["cpus"],
                gpus_per_run=engine["gpus"], max_failures=engine["max_failures"],
                echo=lambda line: print(line, flush=True), steps=progress.total,
            )
            progress.done += len(todo)
    finally:
        ray_engine.shutdown()
    summary["unfinished"] = ray_engine.pending(todo)  # failed, or the study was stopped
    return summary


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _STDERR.fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        options = plan_settings() if FLAGS.plan else settings()
        engine = engine_settings()
        if engine["engine"] == "ray":
            from eval import ray_engine

            cluster = ray_engine.connect(engine["address"], engine["cpus"], engine["gpus"])
    except ValueError as error:
        _STDERR.fail(PROGRAM, error)
    options["results_dir"] = pathlib.Path(FLAGS.results_dir) if FLAGS.results_dir else None
    if engine["engine"] == "ray":  # trials run elsewhere: every path absolute
        options["output_dir"] = options["output_dir"].resolve()
        if options["results_dir"] is not None:
            options["results_dir"] = options["results_dir"].resolve()
    _STDERR.release()
    from gradmask_tf import runs

    directory = options["output_dir"]
    directory.mkdir(parents=True, exist_ok=True)
    regimes = _regimes(options, thread_environment(engine["cpus"], engine["gpus"]))
    started_at = time.perf_counter()
    if engine["engine"] == "ray":
        progress = Progress(len(regimes) + (1 if options.get("plan") else 0))
        summary = _on_ray(regimes, engine, cluster, progress, directory)
        if summary["unfinished"]:
            for line in summary["failed"]:
                print(f"{PROGRAM}: failed after {engine['max_failures']} retries: {line}",
                      file=sys.stderr)
            print(f"{PROGRAM}: {len(summary['unfinished'])} run(s) not finished, no report "
                  "written; run the study again: it runs only what is missing",
                  file=sys.stderr)
            return 1
        trained = summary["trained"]
    else:
        total = sum((2 if r["evals"] else 1) * len(r["runs"]) + 1 for r in regimes)
        progress = Progress(total + (1 if options.get("plan") else 0))
        trained = 0
    for regime in regimes:
        if engine["engine"] == "local":
            trained += _train_and_evaluate(regime, progress)
        started = progress.step(f"report{' ' + regime['name'] if regime['name'] else ''}")
        from eval import compare

        sources = [
            run.results if run.results is not None and (run.results / runs.CONFIG).is_file()
            else run.run_dir
            for run in regime["runs"]
        ]
        compare.report([compare.load_run(path) for path in sources], regime["directory"],
                       regime["primary"])
        if regime["results"] is not None:
            copy_report(regime["directory"], regime["results"])
        progress.finish(started, False)
    if options.get("plan"):
        progress.step("index")
        _index(options, regimes)
        if options["results_dir"] is not None and not FLAGS.regimes:
            copy_report(directory, options["results_dir"], figures=False)
    record = directory / "study.json"
    previous = runs.read_json(record) if record.is_file() else {}
    extra = {}
    if engine["engine"] == "ray":
        extra["engine"] = {
            "name": "ray", "address": engine["address"], "cpus_per_run": engine["cpus"],
            "gpus_per_run": engine["gpus"], "max_failures": engine["max_failures"],
            "retries_this_invocation": summary["retries"],
        }
    runs.atomic_write_json(
        record,
        {
            "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in options.items()},
            "command": " ".join([PROGRAM, *sys.argv[1:]]),
            "runs_trained_this_invocation": trained,
            "wall_seconds_this_invocation": time.perf_counter() - started_at,
            "wall_seconds_total": previous.get("wall_seconds_total", 0.0)
            + time.perf_counter() - started_at,
            **extra,
        },
    )
    print(f"Done: {directory / 'report.md'} ({(time.perf_counter() - started_at) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags_or_fail(FLAGS, argv, _STDERR, PROGRAM))
