r"""Evaluates a trained run: adversarial attacks, pruning, saliency, gradient quality.

  python -m eval --run_dir=runs/fashion_mnist-cnn-mean-seed0
  python -m eval --run_dir=RUN --evals=adversarial,saliency --max_examples=500

Loads the run's `model.keras` and `config.json`, uses the run's dataset, evaluates on
the first N test examples in the dataset's order, and for each evaluation writes
`RUN/eval/<name>.json` (the evaluator's result, the run and the time taken) and
`RUN/eval/<name>.png` (its figure from `eval.figures`); saliency also writes
`RUN/eval/saliency_maps.npz`, which `eval.compare` draws beside other runs'.
"""

import pathlib
import sys
import time
import types

from absl import flags

# Only the names here: the evaluation modules (and TensorFlow) load once the cheap
# checks of the flags have passed, so most bad command lines fail at once.
from eval import EVALUATIONS

PROGRAM = "python -m eval"


def define_flags(fv):
    """Defines the command's flags on `fv` (an `absl.flags.FlagValues`); returns it."""
    flags.DEFINE_string("run_dir", None, "Run directory written by train.py.", flag_values=fv)
    flags.DEFINE_list("evals", list(EVALUATIONS), f"Evaluations: {', '.join(EVALUATIONS)}.", flag_values=fv)
    flags.DEFINE_integer(
        "max_examples", 1000, "Evaluate on the first N test examples (0 = all).", lower_bound=0, flag_values=fv)
    flags.DEFINE_bool(
        "smoke", False, "Tiny settings (few examples, steps and samples) for tests and CI.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 128, "Batch size of attacks and evaluation.", lower_bound=1, flag_values=fv)
    # adversarial
    flags.DEFINE_list(
        "attacks", None,
        "Attacks from eval.adversarial.ATTACKS. Defaults to eval.adversarial.DEFAULT_ATTACKS.", flag_values=fv)
    flags.DEFINE_list(
        "eps", None,
        "L-inf budgets, pixels in [0, 1]. Defaults to eval.adversarial.DEFAULT_EPS.", flag_values=fv)
    flags.DEFINE_integer("pgd_steps", 10, "Steps of the iterative attacks.", lower_bound=1, flag_values=fv)
    # pruning
    flags.DEFINE_list(
        "sparsities", None, "Target sparsities. Defaults to eval.pruning.DEFAULT_SPARSITIES.", flag_values=fv)
    flags.DEFINE_integer("fine_tune_epochs", 1, "Fine-tuning epochs (0 = one-shot only).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer(
        "fine_tune_examples", 10000, "Training examples for fine-tuning (0 = all).", lower_bound=0, flag_values=fv)
    # saliency
    flags.DEFINE_list(
        "saliency_methods", None,
        "Saliency methods from eval.saliency.METHODS. Defaults to eval.saliency.DEFAULT_METHODS.", flag_values=fv)
    flags.DEFINE_integer("num_images", 16, "Images for the saliency maps.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("smoothgrad_samples", 20, "SmoothGrad samples.", lower_bound=1, flag_values=fv)
    # quality
    # gradmask_tf.quality.NUM_MICRO_BATCHES and NUM_PROBE_EXAMPLES, not imported here (it
    # loads TensorFlow): GSNR figures compare only between probes of the same size.
    flags.DEFINE_integer(
        "micro_batches", 32, "GSNR micro-batches (at least 2 examples each).", lower_bound=2, flag_values=fv)
    flags.DEFINE_integer(
        "probe_examples", 1024,
        "GSNR probe: the first N training examples. Figures compare only at the same size.",
        lower_bound=4, flag_values=fv)
    return fv


SMOKE = dict(
    max_examples=64,
    pgd_steps=3,
    sparsities=["0.5", "0.9"],
    fine_tune_examples=256,
    num_images=4,
    smoothgrad_samples=2,
    probe_examples=64,
    micro_batches=4,
)


def _floats(name, values, low, high):
    try:
        parsed = [float(value) for value in values]
    except ValueError:
        raise ValueError(f"flag --{name}: expected numbers, received {','.join(values)}") from None
    for value in parsed:
        if not low <= value <= high:
            raise ValueError(f"flag --{name}: {value} is outside [{low}, {high}]")
    if not parsed:
        raise ValueError(f"flag --{name}: expected at least one value")
    return parsed


def _names(name, values, allowed):
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise ValueError(
            f"flag --{name}: unknown {', '.join(unknown) or '(empty)'}; "
            f"valid: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(values))


def settings(fv):
    """Validated settings, with the smoke caps applied.

    The checks that need no evaluation module come first; then the modules load
    (TensorFlow with them) for their names and defaults.
    """
    if not fv.run_dir:
        raise ValueError("flag --run_dir is required: a directory written by train.py")
    run_dir = pathlib.Path(fv.run_dir)
    for name in ("config.json", "model.keras"):
        if not (run_dir / name).is_file():
            raise ValueError(
                f"flag --run_dir={run_dir}: no {name} there; pass a finished run of train.py"
            )
    names = (*SMOKE, "fine_tune_epochs", "batch_size", "eps", "attacks", "saliency_methods")
    values = {name: fv[name].value for name in names}
    if fv.smoke:
        for name, cap in SMOKE.items():
            if name == "sparsities":
                values[name] = cap
            else:  # 0 means "all", which the cap replaces too
                values[name] = min(values[name], cap) if values[name] else cap
    if values["probe_examples"] < 2 * values["micro_batches"]:
        raise ValueError(
            f"flag --probe_examples={values['probe_examples']}: expected at least 2 examples "
            f"in each of the {values['micro_batches']} --micro_batches"
        )
    values["run_dir"] = run_dir
    values["evals"] = _names("evals", fv.evals, EVALUATIONS)
    for name, high in (("eps", 1.0), ("sparsities", 0.999)):
        if values[name] is not None:
            values[name] = _floats(name, values[name], 0.0, high)
    from eval import adversarial, pruning, saliency

    for name, default in (
        ("eps", adversarial.DEFAULT_EPS),
        ("sparsities", pruning.DEFAULT_SPARSITIES),
        ("attacks", adversarial.DEFAULT_ATTACKS),
        ("saliency_methods", saliency.DEFAULT_METHODS),
    ):
        if values[name] is None:
            values[name] = list(default)
    values["attacks"] = _names("attacks", values["attacks"], adversarial.ATTACKS)
    values["saliency_methods"] = _names(
        "saliency_methods", values["saliency_methods"], saliency.METHODS
    )
    return values


def _adversarial(run, options):
    from eval import adversarial, figures

    result = adversarial.evaluate_adversarial(
        run.model, run.test_data, attacks=options["attacks"], eps=options["eps"],
        pgd_steps=options["pgd_steps"], batch_size=options["batch_size"], seed=run.config["seed"],
    )
    return result, figures.plot_adversarial(result, title=run.title)


def _pruning(run, options):
    from eval import figures, pruning

    fine_tune = train_data = None
    if options["fine_tune_epochs"]:
        fine_tune = pruning.fine_tune_of_run(
            run.config, epochs=options["fine_tune_epochs"],
            num_examples=options["fine_tune_examples"] or None,
        )
        train_data = run.split(
            "train", max_examples=fine_tune.num_examples, shuffle=True, seed=run.config["seed"]
        )
    result = pruning.evaluate_pruning(
        run.model, run.test_data, architecture=run.config["model"], dataset=run.config["dataset"],
        sparsities=options["sparsities"], fine_tune=fine_tune, train_data=train_data,
        batch_size=options["batch_size"],
        # Runs recorded before --mask_placement existed used the activation placement.
        placement=run.config.get("mask_placement", "activation"),
    )
    return result, figures.plot_pruning(result, title=run.title)


def _saliency(run, options):
    from eval import figures, saliency, saliency_file

    result, maps = saliency.evaluate_saliency(
        run.model, run.test_data, methods=options["saliency_methods"],
        smoothgrad_samples=options["smoothgrad_samples"], num_images=options["num_images"],
        seed=run.config["seed"],
    )
    images, labels = (array[: result["num_examples"]] for array in run.test_data)
    saliency_file.save_maps(run.output / saliency_file.FILE_NAME, images, labels, maps)
    row_labels = [f"label {int(label)}" for label in labels]
    return result, figures.plot_saliency(images, maps, title=run.title, row_labels=row_labels)


def _quality(run, options):
    from eval import figures, gsnr
    from gradmask_tf import data, runs

    probe = data.as_numpy(run.split("train", max_examples=options["probe_examples"]))
    result = gsnr.evaluate_gsnr(
        run.model, probe, num_micro_batches=options["micro_batches"],
        history=runs.read_history(run.dir),
    )
    return result, figures.plot_quality(result, title=run.title)


EVALUATORS = {"adversarial": _adversarial, "pruning": _pruning, "saliency": _saliency,
              "quality": _quality}


def load_run(run_dir, max_examples):
    """The run's model, config and first test examples; a loader of its splits."""
    import keras

    import gradmask_tf.layers  # noqa: F401  (registers the saved classes for loading)
    import gradmask_tf.training  # noqa: F401
    from gradmask_tf import data, runs

    config = runs.read_json(run_dir / runs.CONFIG)["flags"]

    def split(name, **load_options):
        """The run's dataset split, in its original order unless shuffled."""
        return data.load(config["dataset"], name, data_dir=config.get("data_dir"), **load_options)

    return types.SimpleNamespace(
        dir=run_dir,
        output=run_dir / "eval",
        config=config,
        split=split,
        test_data=data.as_numpy(split("test", max_examples=max_examples or None)),
        model=keras.models.load_model(run_dir / runs.MODEL),
        title=(f"{config['dataset']} · {config['model']} · mask {config['mask_rule']} · "
               f"seed {config['seed']}"),
    )


def main(argv=None, stderr=None):
    """Runs the command line `argv` (default `sys.argv`); returns the exit status.

    `stderr` is an `eval.cli.DeferredStderr` when run as a program: TensorFlow's
    start-up lines are held back until the flags and the run are checked.
    """
    from absl import logging

    from eval.cli import ImmediateStderr, parse_own_flags, wants_help

    argv = sys.argv if argv is None else argv
    stderr = stderr or ImmediateStderr()
    if wants_help(argv):
        stderr.release()
        print(define_flags(flags.FlagValues()).get_help())
        return 0
    logging.set_verbosity(logging.WARNING)
    try:
        options = settings(parse_own_flags(define_flags, argv))
        run = load_run(options["run_dir"], options["max_examples"])
    except ValueError as error:
        stderr.fail(PROGRAM, error)
    stderr.release()
    return evaluate(run, options)


def evaluate(run, options):
    """Runs each evaluation of `options` on `run`, writing its JSON and figure."""
    from eval import figures
    from gradmask_tf import runs

    for index, name in enumerate(options["evals"], start=1):
        print(f"[{index}/{len(options['evals'])}] {name} on {run.dir}")
        start = time.perf_counter()
        result, figure = EVALUATORS[name](run, options)
        result["run"] = {key: run.config[key] for key in ("mask_rule", "seed", "model", "dataset")}
        result["run"]["run_dir"] = str(run.dir)
        result["seconds"] = time.perf_counter() - start
        runs.atomic_write_json(run.output / f"{name}.json", result)
        figures.save(figure, run.output / f"{name}.png")
        print(f"    wrote {run.output / name}.json and .png ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    from eval.cli import DeferredStderr

    sys.exit(main(sys.argv, DeferredStderr()))
