r"""Evaluates a trained run: adversarial attacks, pruning, saliency, gradient quality.

  python -m eval --run_dir=runs/fashion_mnist-cnn-mean-seed0
  python -m eval --run_dir=RUN --evals=adversarial,saliency --max_examples=500

Loads the run's `model.keras` and `config.json`, uses the run's dataset, evaluates on
the first N test examples in the dataset's order, and writes `RUN/eval/<name>.json`
and `RUN/eval/<name>.png` for each evaluation. Every JSON records its settings.
"""

import pathlib
import sys
import time

from eval.cli import DeferredStderr, parse_flags_or_fail

_STDERR = DeferredStderr()

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "python -m eval"
EVALUATIONS = ("adversarial", "pruning", "saliency", "quality")
ATTACKS = ("fgsm", "pgd", "bim", "mim")
SALIENCY_METHODS = ("saliency", "smoothgrad", "gradcam++", "scorecam")

flags.DEFINE_string("run_dir", None, "Run directory written by train.py.")
flags.DEFINE_list("evals", list(EVALUATIONS), f"Evaluations: {', '.join(EVALUATIONS)}.")
flags.DEFINE_integer(
    "max_examples", 1000, "Evaluate on the first N test examples (0 = all).", lower_bound=0
)
flags.DEFINE_bool(
    "smoke", False, "Tiny settings (few examples, steps and samples) for tests and CI."
)
flags.DEFINE_integer("batch_size", 128, "Batch size of attacks and evaluation.", lower_bound=1)
# adversarial
flags.DEFINE_list("attacks", ["fgsm", "pgd"], f"Attacks: {', '.join(ATTACKS)}.")
flags.DEFINE_list("eps", ["0.01", "0.03", "0.05", "0.1"], "L-inf budgets, pixels in [0, 1].")
flags.DEFINE_integer("pgd_steps", 10, "Steps of the iterative attacks.", lower_bound=1)
# pruning
flags.DEFINE_list(
    "sparsities", ["0.3", "0.5", "0.7", "0.8", "0.9", "0.95"], "Target sparsities."
)
flags.DEFINE_integer("fine_tune_epochs", 1, "Fine-tuning epochs (0 = one-shot only).", lower_bound=0)
flags.DEFINE_integer(
    "fine_tune_examples", 10000, "Training examples for fine-tuning (0 = all).", lower_bound=0
)
# saliency
flags.DEFINE_list(
    "saliency_methods", ["saliency", "smoothgrad", "gradcam++"], "Saliency methods."
)
flags.DEFINE_integer("num_images", 16, "Images for the saliency maps.", lower_bound=1)
flags.DEFINE_integer("smoothgrad_samples", 20, "SmoothGrad samples.", lower_bound=1)
# quality
flags.DEFINE_integer("micro_batches", 8, "GSNR micro-batches.", lower_bound=2)
flags.DEFINE_integer(
    "probe_examples", 256, "GSNR probe: the first N training examples.", lower_bound=2
)

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


def settings():
    """Validated settings, with the smoke caps applied."""
    values = {name: FLAGS[name].value for name in (*SMOKE, "fine_tune_epochs", "batch_size")}
    if FLAGS.smoke:
        for name, cap in SMOKE.items():
            if name == "sparsities":
                values[name] = cap
            else:  # 0 means "all", which the cap replaces too
                values[name] = min(values[name], cap) if values[name] else cap
    if not FLAGS.run_dir:
        raise ValueError("flag --run_dir is required: a directory written by train.py")
    values["evals"] = _names("evals", FLAGS.evals, EVALUATIONS)
    values["attacks"] = _names("attacks", FLAGS.attacks, ATTACKS)
    values["saliency_methods"] = _names("saliency_methods", FLAGS.saliency_methods, SALIENCY_METHODS)
    values["eps"] = _floats("eps", FLAGS.eps, 0.0, 1.0)
    values["sparsities"] = _floats("sparsities", values["sparsities"], 0.0, 0.999)
    run_dir = pathlib.Path(FLAGS.run_dir)
    for name in ("config.json", "model.keras"):
        if not (run_dir / name).is_file():
            raise ValueError(
                f"flag --run_dir={run_dir}: no {name} there; pass a finished run of train.py"
            )
    values["run_dir"] = run_dir
    return values


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        _STDERR.fail(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        options = settings()
    except ValueError as error:
        _STDERR.fail(PROGRAM, error)

    import keras

    import gradmask_tf  # noqa: F401  (registers the layers for loading)
    from gradmask_tf import data, runs

    # Imported before pruning runs: TF-MOT's import changes what `tf.keras` means
    # for libraries imported after it (tf-keras-vis among them).
    from eval import adversarial, pruning, quality, saliency

    run_dir = options["run_dir"]
    config = runs.read_json(run_dir / runs.CONFIG)["flags"]

    def split(name, **load_options):
        """The run's dataset split, in its original order unless shuffled."""
        return data.load(config["dataset"], name, data_dir=config.get("data_dir"), **load_options)

    try:
        test_data = data.as_numpy(split("test", max_examples=options["max_examples"] or None))
        model = keras.models.load_model(run_dir / runs.MODEL)
    except ValueError as error:
        _STDERR.fail(PROGRAM, error)
    _STDERR.release()

    title = (
        f"{config['dataset']} · {config['model']} · mask {config['mask_rule']} · "
        f"seed {config['seed']}"
    )
    output = run_dir / "eval"
    evaluations = {
        "adversarial": lambda: adversarial.evaluate_adversarial(
            model,
            test_data,
            attacks=options["attacks"],
            eps=options["eps"],
            pgd_steps=options["pgd_steps"],
            batch_size=options["batch_size"],
            seed=config["seed"],
            figure_path=output / "adversarial.png",
            title=title,
        ),
        "pruning": lambda: pruning.evaluate_pruning(
            model,
            test_data,
            run_config=config,
            train_data=(
                split(
                    "train",
                    max_examples=options["fine_tune_examples"] or None,
                    shuffle=True,
                    seed=config["seed"],
                )
                if options["fine_tune_epochs"]
                else None
            ),
            sparsities=options["sparsities"],
            fine_tune_epochs=options["fine_tune_epochs"],
            fine_tune_examples=options["fine_tune_examples"] or None,
            batch_size=config["batch_size"],
            figure_path=output / "pruning.png",
            title=title,
        ),
        "saliency": lambda: saliency.evaluate_saliency(
            model,
            test_data,
            methods=options["saliency_methods"],
            smoothgrad_samples=options["smoothgrad_samples"],
            num_images=options["num_images"],
            seed=config["seed"],
            figure_path=output / "saliency.png",
            maps_path=output / "saliency_maps.npz",
            title=title,
        ),
        "quality": lambda: quality.evaluate_quality(
            model,
            data.as_numpy(split("train", max_examples=options["probe_examples"])),
            num_micro_batches=options["micro_batches"],
            history=runs.read_history(run_dir),
            figure_path=output / "quality.png",
            title=title,
        ),
    }
    for index, name in enumerate(options["evals"], start=1):
        print(f"[{index}/{len(options['evals'])}] {name} on {run_dir}")
        start = time.perf_counter()
        result = evaluations[name]()
        result["run"] = {
            "run_dir": str(run_dir),
            "mask_rule": config["mask_rule"],
            "seed": config["seed"],
            "model": config["model"],
            "dataset": config["dataset"],
        }
        result["seconds"] = time.perf_counter() - start
        runs.atomic_write_json(output / f"{name}.json", result)
        print(f"    wrote {output / name}.json and .png ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_flags_or_fail(FLAGS, argv, _STDERR, PROGRAM))
    sys.exit(0)
