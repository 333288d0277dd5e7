r"""The paper's four claims (and gradient quality) checked in one resumable command.

  python -m eval.study --quick                       # 1 seed, 2 epochs: minutes on a CPU
  python -m eval.study --output_dir=studies/fmnist   # none, 3 rules and their controls x 5 seeds
  python -m eval.study --plan=regimes --results_dir=docs/results/regimes

A study is a plan (eval/plans/): arms, regimes, primaries and seeds. With `--plan=NAME`
it comes from `eval/plans/NAME.json`, runs go under `DIR/<regime>/runs/<arm>-seed<seed>`
with one report per regime and an index `DIR/report.md`. Without `--plan` the flags
make a plan of one regime: the baseline (`none`), every masked rule of `--rules` and,
with `--controls` (the default), each rule's matched control (`--mask_control`: as many
entries kept as the rule, the same L1 mass, uniformly random places), for every seed,
under `DIR/runs/`. Either way each run is a `gradmask_tf.config.RunConfig`, built and
checked before anything runs, trained by `train.py` in its own process and evaluated
with `python -m eval --evals=...`; each regime's `report.md` comes from `eval.compare`:
arms paired by seed, a verdict for each primary (declared before the runs), every other
difference with its interval, and the figures. With `--results_dir=DIR` the small
result files of every run are copied there when it finishes and looked for there first.

Run it again after an interruption: finished runs and evaluations are skipped, an
unfinished run resumes after its last finished epoch. Every result file is checked
before it is trusted (eval/result_files.py): a damaged one is moved aside, named in one
line, and put back from its other copy or done again. One study runs on a directory at
a time (eval/study_lock.py: `DIR/study.lock`, `--break_lock`).

With `--engine=ray` (eval/ray_engine.py) each (regime, arm, seed) run, with its
evaluations, is one Ray Tune trial, on an embedded Ray or on a cluster
(`--ray_address`); a trial whose process dies is retried and resumes. Both engines run a
run with `StudyRun` (eval/study_runs.py) and write the same files.
"""

import pathlib
import sys
import time

from absl import flags

from eval import EVALUATIONS, plans, study_lock
from eval.arms import UNMASKED, parse_primaries
from eval.cli import parse_own_flags, wants_help
from eval.study_engines import connect, engine_settings, on_ray, train_and_evaluate
from eval.study_report import Progress, copy_report, report_regime, write_index, write_record
from eval.study_runs import (  # noqa: F401 (the result names and copy_results: for callers)
    EVAL_RESULT_PATTERNS, RESULT_FILES, StudyRun, copy_results, thread_environment, warn,
)
from gradmask_tf.config import ConfigError
from gradmask_tf.mask_params import RULES

PROGRAM = "python -m eval.study"
ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"

QUICK = dict(seeds=1, epochs=2, max_train_examples=10000, eval_examples=500)
# A plan's --quick (every regime, tiny: a pipeline check of a study of dozens of arms):
# one epoch on 2,000 examples, the evaluations at their smoke settings.
QUICK_PLAN = dict(epochs=1, max_train_examples=2000)


def define_flags(fv):
    """Defines the study's flags on `fv` (an `absl.flags.FlagValues`); returns it."""
    flags.DEFINE_bool("quick", False, "1 seed, 2 epochs, 10,000 training examples, small evaluations.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Study directory. Defaults to studies/<dataset>-<model>[-quick].", flag_values=fv)
    flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (tensorflow-datasets name).", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "Passed to train.py.", flag_values=fv)
    flags.DEFINE_string("model", "cnn", "Architecture (train.py --model).", flag_values=fv)
    flags.DEFINE_list(
        "rules", ["mean", "local", "lateral"], "Masked rules (none, the baseline, always runs).", flag_values=fv)
    flags.DEFINE_bool(
        "controls", True, "Also train each masked rule's matched control (train.py --mask_control).", flag_values=fv)
    flags.DEFINE_list(
        "primary", ["mean:test_accuracy:higher"],
        "Primary comparisons, declared before the runs, passed to eval.compare: at most 3 "
        "rule:metric:direction (higher or lower is better). Only these get a verdict.", flag_values=fv)
    flags.DEFINE_list(
        "evals", list(EVALUATIONS),
        f"Evaluations of every run (python -m eval --evals): {', '.join(EVALUATIONS)}; empty: none.", flag_values=fv)
    flags.DEFINE_integer("seeds", 5, "Seeds per arm (0, 1, ...).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("epochs", 10, "Training epochs of every run.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max_train_examples", 0, "N training examples, drawn with each seed (0 = all).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("max_test_examples", 0, "First N test examples for test accuracy (0 = all).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("eval_examples", 1000, "First N test examples for attacks and pruning.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("gsnr_every", 100, "GSNR logged every N training steps (0 = off).", lower_bound=0, flag_values=fv)
    flags.DEFINE_bool("smoke", False, "Evaluations at their smoke settings (tests and CI).", flag_values=fv)
    flags.DEFINE_list("train_flags", [], "Extra train.py flags, e.g. --train_flags=--batch_size=64.", flag_values=fv)
    flags.DEFINE_string(
        "plan", None,
        "A study plan: eval/plans/NAME.json or a path to a .json file (arms, regimes, primaries, "
        "seeds; see eval/plans/). --rules, --controls and --primary do not apply; --seeds, "
        "--epochs, --evals, --max_*_examples and --train_flags, when given, override the plan.", flag_values=fv)
    flags.DEFINE_list(
        "regimes", [],
        "With --plan: run only these of its regimes (default: all), e.g. to split a plan over "
        "machines that share --results_dir.", flag_values=fv)
    flags.DEFINE_string(
        "results_dir", None,
        "Where each run's small result files (config.json, metrics.json, history.csv, eval/*) "
        "are copied once it finishes, and looked for first: a run found there is not trained "
        "again, and the reports are built from there.", flag_values=fv)
    flags.DEFINE_bool(
        "break_lock", False,
        "Take the study directory's lock (study.lock) even if it is held from another host "
        "(or unreadable): only once that study is known to have stopped. A lock left on "
        "this host by a process that is gone is taken over without it.", flag_values=fv)
    return _define_engine_flags(fv)


def _define_engine_flags(fv):
    """The engine's flags (`--engine` and what the Ray engine takes)."""
    flags.DEFINE_enum(
        "engine", "local", ["local", "ray"],
        "local: the runs one after another on this machine. ray: each (regime, arm, seed) run, "
        "with its evaluations, one Ray Tune trial, on a Ray cluster (--ray_address) or an "
        "embedded Ray on this machine; needs requirements-ray.txt.", flag_values=fv)
    flags.DEFINE_string(
        "ray_address", None,
        "--engine=ray: the Ray cluster, HOST:PORT of its head (`ray start --head`) or auto "
        "(the cluster this machine belongs to); the study runs on one of its nodes. "
        "Default: an embedded Ray on this machine.", flag_values=fv)
    flags.DEFINE_integer(
        "cpus_per_run", None,
        "CPUs of each run: TensorFlow's (and OpenMP's) thread counts of its train.py and "
        "evaluations and, with --engine=ray, the CPUs its trial reserves (default there: 1). "
        "The local engine, without it, leaves TensorFlow's defaults.",
        lower_bound=1, flag_values=fv)
    flags.DEFINE_float(
        "gpus_per_run", 0.0,
        "--engine=ray: GPUs each trial reserves: a whole number, or a fraction below 1 for "
        "runs that share a GPU (0.5: two a GPU).",
        lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer(
        "max_failures", 3,
        "--engine=ray: retries of a run whose trial fails (its process killed, its node "
        "lost); each retry resumes after the run's last finished epoch.",
        lower_bound=0, flag_values=fv)
    return fv


def parse(argv):
    """The study's flags parsed from `argv` (`argv[0]` is the program).

    Raises:
      ValueError: One line naming a flag that is wrong.
    """
    return parse_own_flags(define_flags, argv)


def settings(fv):
    """The study's settings from its parsed flags: always a checked plan.

    Returns:
      `{"plan", "output_dir", "dataset", "data_dir", "model", "gsnr_every", "smoke",
      "quick", "train_flags", "eval_examples", "max_test_examples", "overrides",
      "quick_overrides", "regime_names"}`; `plan["name"]` is None for a plan made from
      the flags.

    Raises:
      ValueError: One line naming the flag or the plan's key that is wrong.
    """
    values = {name: fv[name].value for name in (
        "dataset", "data_dir", "model", "max_test_examples", "eval_examples", "gsnr_every",
        "smoke", "train_flags", "quick")}
    _check_evals(fv)
    if fv.plan:
        plan, overrides, shrunk = _plan_of_file(fv)
        suffix = "-quick" if fv.quick else ""
        output_dir = fv.output_dir or f"studies/{plan['name']}{suffix}"
        values["smoke"] = values["smoke"] or fv.quick
    else:
        plan, overrides, shrunk = _plan_of_flags(fv, values), {}, []
        suffix = "-quick" if fv.quick else ""
        output_dir = fv.output_dir or f"studies/{values['dataset']}-{values['model']}{suffix}"
    values.update(plan=plan, overrides=overrides, quick_overrides=shrunk,
                  output_dir=pathlib.Path(output_dir), regime_names=list(fv.regimes))
    return values


def _check_evals(fv):
    unknown = [name for name in fv.evals if name not in EVALUATIONS]
    if unknown:
        raise ValueError(
            f"flag --evals: unknown {', '.join(unknown)}; valid: {', '.join(EVALUATIONS)}")


def _plan_of_file(fv):
    """`(plan, overrides, quick_overrides)` of `--plan`: the plan, checked, with the
    flags that override it."""
    plan = plans.load(fv.plan)
    overrides, shrunk = {}, []
    for name in ("epochs", "max_train_examples", "max_test_examples"):
        if fv[name].present:
            overrides[name] = fv[name].value
        elif fv.quick and name in QUICK_PLAN:
            overrides[name] = QUICK_PLAN[name]
            shrunk.append(name)
    if fv["seeds"].present:
        plan["seeds"] = list(range(fv.seeds))
    elif fv.quick:
        plan["seeds"] = plan["seeds"][:1]
    if fv["evals"].present:
        for regime in plan["regimes"]:
            regime["evals"] = list(dict.fromkeys(fv.evals))
    if fv.regimes:
        names = [regime["name"] for regime in plan["regimes"]]
        unknown = [name for name in fv.regimes if name not in names]
        if unknown:
            raise ValueError(
                f"flag --regimes: no regime {', '.join(unknown)} in plan {plan['name']}; "
                f"its regimes: {', '.join(names)}")
        plan["regimes"] = [r for r in plan["regimes"] if r["name"] in fv.regimes]
    return plan, overrides, shrunk


def _plan_of_flags(fv, values):
    """The plan of a study without `--plan`: one regime of the flags' arms and budget."""
    if fv.regimes:
        raise ValueError("flag --regimes: only with --plan")
    budget = {name: fv[name].value for name in
              ("seeds", "epochs", "max_train_examples", "eval_examples")}
    if fv.quick:
        budget.update({k: v for k, v in QUICK.items() if not fv[k].present})
    values["eval_examples"] = budget["eval_examples"]
    rules = _masked_rules(fv.rules)
    arms = {"none": dict(rule="none", options={}, control=False)}
    for rule in rules:
        arms[rule] = dict(rule=rule, options={}, control=False)
        if fv.controls:
            arms[f"{rule}-control"] = dict(rule=rule, options={}, control=True)
    primary = [str(p) for p in _primaries(fv.primary, rules, fv.controls)]
    regime = dict(
        name=None, arms=list(arms), evals=list(dict.fromkeys(fv.evals)), primary=primary,
        flags={"epochs": budget["epochs"], "max_train_examples": budget["max_train_examples"],
               "max_test_examples": fv.max_test_examples})
    return dict(name=None, path=None, notes="", seeds=list(range(budget["seeds"])),
                arms=arms, regimes=[regime])


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


def _primaries(values, rules, controls):
    """The declared primaries, each of a rule the study trains, with its control."""
    primaries = parse_primaries(values)
    for primary in primaries:
        if primary.rule not in rules:
            raise ValueError(
                f"flag --primary: {primary} names {primary.rule}, which is not in "
                f"--rules={','.join(rules)}; declare the primaries with --primary"
            )
    if primaries and not controls:
        raise ValueError(
            "flag --primary: a primary is judged against the rule's matched control, which "
            "--nocontrols leaves out; pass --primary= to declare none"
        )
    return primaries


# The runs ---------------------------------------------------------------------------


def run_config(options, run_dir, arm, regime, seed):
    """The `RunConfig` of one (regime, arm, seed), checked: the regime's flags, the
    arm's options, then the study's overrides (so --quick and explicit flags win), then
    `--train_flags`.

    Raises:
      ValueError: A setting that cannot run (one line naming its flag).
    """
    import train

    chosen = {**regime["flags"], **arm["options"]}
    overrides = dict(options["overrides"])
    if "examples_per_class" in chosen:  # the subset is the regime's
        overrides.pop("max_train_examples", None)
    for name in options["quick_overrides"]:  # --quick shrinks, never enlarges
        if chosen.get(name) and name in overrides and chosen[name] < overrides[name]:
            overrides.pop(name)
    argv = [
        str(TRAIN), f"--dataset={options['dataset']}", f"--model={options['model']}",
        f"--mask_rule={arm['rule']}", f"--seed={seed}",
        f"--gsnr_every={options['gsnr_every']}", f"--output_dir={run_dir}",
        *plans.flag_arguments({**chosen, **overrides}),
        *options["train_flags"], *(["--mask_control"] if arm["control"] else []),
        *([f"--data_dir={options['data_dir']}"] if options["data_dir"] else []),
    ]
    try:
        return train.config_from_argv(argv)
    except ConfigError as error:
        where = f"regime {regime['name']}, " if regime["name"] else ""
        raise ValueError(f"{where}arm {arm_name(arm)}: {error}") from None


def arm_name(arm):
    return f"{arm['rule']}{'-control' if arm['control'] else ''}"


def train_command(config):
    """The train.py command line of a `RunConfig`: every setting that is not a default."""
    from gradmask_tf.config import FIELDS

    defaults = {field.name: field.default for field in FIELDS}
    values = {name: value for name, value in config.to_dict().items()
              if value != defaults[name]}
    return [sys.executable, str(TRAIN), *plans.flag_arguments(values)]


def eval_flags(options):
    """The flags of `python -m eval` beyond the run directory and the evaluations."""
    flags_ = [f"--max_examples={options['eval_examples']}"]
    if options["smoke"]:
        flags_.append("--smoke")
    elif options["quick"]:
        flags_ += ["--fine_tune_examples=2000", "--num_images=8", "--smoothgrad_samples=10"]
    return flags_


def regimes_of(options, env=None):
    """`[{"name", "directory", "results", "evals", "primary", "runs"}]`, each run a
    `StudyRun` whose configuration is built and checked here, before anything runs.

    Args:
      options: The study's settings (`settings`), with `results_dir`.
      env: Variables set in the environment of every run's commands
        (`study_runs.thread_environment`).
    """
    directory, results_dir, plan = options["output_dir"], options["results_dir"], options["plan"]
    env = tuple(sorted((env or {}).items()))
    regimes = []
    for regime in plan["regimes"]:
        name = regime["name"]
        regime_directory = directory / name if name else directory
        results = (results_dir / name if name else results_dir) if results_dir else None
        runs = []
        # Seed by seed: a study stopped part-way leaves every arm paired on its first
        # seeds, not some arms whole and others missing.
        for seed in plan["seeds"]:
            for arm in regime["arms"]:
                run_name = f"{arm}-seed{seed}"
                run_dir = regime_directory / "runs" / run_name
                config = run_config(options, run_dir, plan["arms"][arm], regime, seed)
                what = f"{arm}, seed {seed}".replace("-control,", " control,")
                runs.append(StudyRun(
                    what=f"{name}: {arm}, seed {seed}" if name else what,
                    name=run_name, run_dir=run_dir,
                    results=results / run_name if results else None,
                    log=regime_directory / "logs" / f"{run_name}.log",
                    train_command=tuple(train_command(config)), evals=tuple(regime["evals"]),
                    eval_flags=tuple(eval_flags(options)), env=env))
        regimes.append(dict(
            name=name, directory=regime_directory, results=results, evals=regime["evals"],
            primary=plans.primaries(plan, regime), runs=runs))
    return regimes


# The command ------------------------------------------------------------------------


def prepare(argv):
    """`(options, engine, regimes)` of a command line, everything checked; writes
    nothing and starts nothing (`connect` starts the Ray engine's cluster).

    Raises:
      ValueError: One line naming what is wrong.
    """
    fv = parse(argv)
    options = settings(fv)
    engine = engine_settings(fv)
    options["results_dir"] = pathlib.Path(fv.results_dir) if fv.results_dir else None
    options["break_lock"] = fv.break_lock
    if engine["engine"] == "ray":  # trials run elsewhere: every path absolute
        options["output_dir"] = options["output_dir"].resolve()
        if options["results_dir"] is not None:
            options["results_dir"] = options["results_dir"].resolve()
    regimes = regimes_of(options, thread_environment(engine["cpus"], engine["gpus"]))
    return options, engine, regimes


def run_study(options, engine, regimes, cluster, argv):
    """Trains, evaluates and reports; returns the exit status."""
    directory = options["output_dir"]
    directory.mkdir(parents=True, exist_ok=True)
    started_at = time.perf_counter()
    indexed = options["plan"]["name"] is not None
    summary = None
    if engine["engine"] == "ray":
        progress = Progress(len(regimes) + indexed)
        summary = on_ray(regimes, engine, cluster, progress, directory)
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
        progress, trained = Progress(total + indexed), 0
    for regime in regimes:
        if engine["engine"] == "local":
            trained += train_and_evaluate(regime, progress)
        started = progress.step(f"report{' ' + regime['name'] if regime['name'] else ''}")
        report_regime(regime)
        progress.finish(started, False)
    if indexed:
        progress.step("index")
        write_index(options["plan"], regimes, directory, ROOT)
        if options["results_dir"] is not None and not options["regime_names"]:
            copy_report(directory, options["results_dir"], figures=False)
    write_record(directory, options, engine, summary, trained, started_at,
                 " ".join([PROGRAM, *argv[1:]]))
    print(f"Done: {directory / 'report.md'} ({(time.perf_counter() - started_at) / 60:.1f} min)")
    return 0


def main(argv=None, stderr=None):
    """Runs the command line `argv` (default `sys.argv`); returns the exit status."""
    from absl import logging

    from eval.cli import ImmediateStderr

    argv = sys.argv if argv is None else argv
    stderr = stderr or ImmediateStderr()
    if wants_help(argv):
        stderr.release()
        print(define_flags(flags.FlagValues()).get_help())
        return 0
    logging.set_verbosity(logging.WARNING)
    try:
        options, engine, regimes = prepare(argv)
    except ValueError as error:
        stderr.fail(PROGRAM, error)
    return _run_locked(options, engine, regimes, argv, stderr)


def _run_locked(options, engine, regimes, argv, stderr):
    """`run_study` holding the study directory's lock, taken before anything is written
    or started (one line and exit status 2 if another study holds it)."""
    import contextlib

    directory = options["output_dir"]
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        lock = study_lock.acquire(directory, break_lock=options["break_lock"], warn=warn)
    except study_lock.LockHeld as error:
        stderr.fail(PROGRAM, error)
    try:
        cluster = connect(engine)
    except ValueError as error:
        study_lock.release(lock)
        if created:  # nothing was written: leave no trace
            with contextlib.suppress(OSError):
                directory.rmdir()
        stderr.fail(PROGRAM, error)
    try:
        stderr.release()
        return run_study(options, engine, regimes, cluster, argv)
    finally:
        study_lock.release(lock)


if __name__ == "__main__":
    from eval.cli import DeferredStderr

    sys.exit(main(sys.argv, DeferredStderr()))
