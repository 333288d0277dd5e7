"""Times what Gradient Mask adds: the op's backward and full training steps.

Run: `python -m eval.benchmark [--suites=op,step,resnet50,jax_step] [--repeats=30]`.

`jax_step` times the cnn's step on Keras's JAX backend (`none` and `mean`, on the CPU)
in a process of its own (`eval.jax_steps`), since a process holds one Keras backend.

Every candidate is timed interleaved in one process (round-robin, so drift in the
machine's speed hits all alike) and the median over repeats is reported, with a
table for people and one JSON line for scripts.

The op's backward is compared with an identity whose backward writes its output
once (read + write of the gradient: the least any op that hands a new gradient
tensor down must do). A plain `tf.identity` backward writes nothing, since TensorFlow
forwards the buffer, so its time is call overhead, reported as `passthrough`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

from eval.cli import DeferredStderr

# Run as a program: TensorFlow's start-up lines are held back until the arguments
# are checked, and then dropped where they are known noise.
_STDERR = DeferredStderr() if __name__ == "__main__" else None

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gradmask_tf  # noqa: E402
from eval.jax_steps import interleaved  # noqa: E402 (TensorFlow-free: the JAX step's too)
from gradmask_tf import ops  # noqa: E402
from gradmask_tf.ops import RULES  # noqa: E402

PROGRAM = "python -m eval.benchmark"
SUITES = ("op", "step", "resnet50", "jax_step")
# The rules with a matched control (METHOD.md section 2).
CONTROL_RULES = tuple(rule for rule in RULES if rule not in ("none", "random"))
# The package's default (GradMaskModel, as train.py): the mask metrics every 10 steps.
METRICS_EVERY = None
# The training-step arms: (name, rule, mask options, mask metrics every N steps; None:
# the model's default, as a user who builds and fits meets it).
STEP_ARMS = (
    ("none", "none", {}, METRICS_EVERY),
    ("mean", "mean", {}, METRICS_EVERY),
    ("mean, metrics every step", "mean", {}, 1),
    *((rule, rule, {}, METRICS_EVERY) for rule in RULES if rule not in ("none", "mean")),
    *((f"{rule} + control", rule, {"control": True}, METRICS_EVERY) for rule in CONTROL_RULES),
)


def _interleaved_medians(candidates, repeats, warmup=3):
    """Median seconds of each callable, timed round-robin."""
    return {
        name: float(np.median(values))
        for name, values in interleaved(candidates, repeats, warmup).items()
    }


def _backward_fn(forward, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def backward(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = forward(x)
        gradient = tape.gradient(y, x, output_gradients=upstream)
        # One element comes back, so only the backward itself is timed, not a copy
        # of its result to NumPy; it depends on the whole computation.
        return tf.reshape(gradient, [-1])[0]

    return backward


@tf.custom_gradient
def _copying_identity(x):
    def grad(upstream):
        return tf.raw_ops.DeepCopy(x=upstream)

    return tf.identity(x), grad


def op_candidates(shape, jit_compile=False):
    """Backward-only callables, each returning a materialized gradient."""
    x = tf.random.normal(shape)
    upstream = tf.random.normal(shape, seed=1)
    forwards = {
        "passthrough": tf.identity,
        "identity": _copying_identity,
    }
    for rule in RULES:
        config = ops.MaskConfig(rule, seed=0 if rule == "random" else None)
        forwards[rule] = lambda t, config=config: ops.masked_identity(t, config)
    for rule in CONTROL_RULES:
        config = ops.MaskConfig(rule, control=True, seed=0)
        forwards[f"{rule} + control"] = lambda t, config=config: ops.masked_identity(
            t, config
        )
    candidates = {}
    for name, forward in forwards.items():
        backward = _backward_fn(forward, jit_compile)
        candidates[name] = lambda backward=backward: float(backward(x, upstream))
    return candidates


def benchmark_op(shape, repeats):
    medians = _interleaved_medians(op_candidates(shape), repeats)
    reference = medians["identity"]
    megabytes = np.prod(shape) * 4 / 1e6
    rows = []
    for name, seconds in medians.items():
        rows.append(
            {
                "name": name,
                "ms": round(seconds * 1e3, 3),
                "vs_identity": round(seconds / reference, 2),
                "gradient_passes": round(seconds / reference * 2, 1),
            }
        )
    return {"shape": list(shape), "megabytes": round(float(megabytes), 1), "rows": rows}


def step_candidates(architecture, input_shape, batch_size, arms, jit_modes, block):
    """One compiled training step per arm and XLA mode on the same fixed batch.

    Each candidate runs `block` consecutive steps, so a step that measures the mask
    metrics every N steps is timed with its share of measured steps (N = `block`).

    Args:
      arms: `(name, rule, mask_options, mask_metrics_every)` tuples.
    """
    import keras

    from gradmask_tf import build_model

    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((batch_size, *input_shape)), tf.float32)
    labels = tf.constant(rng.integers(0, 10, batch_size), tf.int32)
    candidates = {}
    for name, rule, options, every in arms:
        for jit_compile in jit_modes:
            keras.utils.set_random_seed(0)
            model = build_model(
                architecture,
                input_shape=input_shape,
                num_classes=10,
                mask_rule=rule,
                dataset="fashion_mnist",
                seed=0,
                **options,
            )
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            if every is not None:
                model.mask_metrics_every = every
            step = tf.function(model.train_step, jit_compile=jit_compile)

            def run(step=step):
                for _ in range(block):
                    loss = step((images, labels))["loss"]
                return float(loss)

            candidates[f"{name}{' (XLA)' if jit_compile else ''}"] = run
    return candidates


def benchmark_step(architecture, input_shape, batch_size, repeats, arms, jit_modes, block=10):
    """Per-step milliseconds and ratios to `none`, the median of paired repeats.

    A repeat of each candidate is `block` steps; repeats are interleaved, so the
    ratio of a candidate's repeat to the `none` repeat beside it cancels the
    machine's drift. The spread is the 25th to 75th percentile of those ratios.
    """
    times = interleaved(
        step_candidates(architecture, input_shape, batch_size, arms, jit_modes, block),
        repeats,
        warmup=3,
    )
    rows = []
    for name, seconds in times.items():
        baseline = times["none (XLA)" if name.endswith("(XLA)") else "none"]
        ratios = seconds / baseline
        rows.append(
            {
                "name": name,
                "ms": round(float(np.median(seconds)) / block * 1e3, 2),
                "vs_none": round(float(np.median(ratios)), 3),
                "spread": "{:.3f}-{:.3f}".format(*np.percentile(ratios, [25, 75])),
                "vs_none_no_xla": round(float(np.median(seconds / times["none"])), 3),
            }
        )
    return {
        "architecture": architecture,
        "input_shape": list(input_shape),
        "batch_size": batch_size,
        "steps_per_repeat": block,
        "repeats": repeats,
        "rows": rows,
    }


def _print_table(title, rows, columns):
    print(f"\n{title}")
    widths = [max(12, *(len(str(row[column])) for row in rows)) for column in columns]
    print(" | ".join(f"{column:>{width}}" for column, width in zip(columns, widths)))
    print("-" * (sum(widths) + 3 * (len(widths) - 1)))
    for row in rows:
        print(" | ".join(f"{str(row[column]):>{width}}" for column, width in zip(columns, widths)))


def environment():
    return {
        "tensorflow": tf.__version__,
        "gradmask_tf": gradmask_tf.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def _validate(args, suites):
    """The gradient shape of the op suite; a ValueError names a bad argument."""
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise ValueError(f"--suites: unknown {', '.join(unknown)}; valid: {', '.join(SUITES)}")
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, received {args.repeats}")
    try:
        shape = tuple(int(value) for value in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 4) or min(shape) <= 0:
        raise ValueError(
            "--shape: expected 2 or 4 positive comma-separated integers, "
            f"received {args.shape!r}"
        )
    return shape


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--shape", default="128,28,28,32", help="op suite: gradient shape")
    parser.add_argument(
        "--suites", default="op,step,resnet50", help=f"comma-separated: {', '.join(SUITES)}"
    )
    parser.add_argument("--step_repeats", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=128)
    return parser.parse_args(argv)


def _op_suite(shape, args):
    """The op's backward against the identities, with its table."""
    op = benchmark_op(shape, args.repeats)
    _print_table(
        f"Op backward on a {list(shape)} float32 gradient ({op['megabytes']} MB), no XLA, "
        f"median of {args.repeats}",
        op["rows"],
        ("name", "ms", "vs_identity", "gradient_passes"),
    )
    return {"op_backward": op}


def _step_suite(args):
    """The default cnn's training step for every arm, then with XLA on and off."""
    step = benchmark_step(
        "cnn", (28, 28, 1), args.batch_size, args.step_repeats, STEP_ARMS, (False,)
    )
    _print_table(
        f"Training step, default cnn on 28x28x1, batch {args.batch_size}, no XLA, "
        "mask metrics at the model's default (every 10 steps) unless said; median of "
        f"{args.step_repeats} repeats of 10 steps",
        step["rows"],
        ("name", "ms", "vs_none", "spread"),
    )
    xla = benchmark_step(
        "cnn", (28, 28, 1), args.batch_size, args.step_repeats, STEP_ARMS[:2], (False, True),
    )
    _print_table(
        "The same step with XLA on and off",
        xla["rows"],
        ("name", "ms", "vs_none", "spread", "vs_none_no_xla"),
    )
    return {"train_step": step, "train_step_xla": xla}


def _resnet50_suite(args):
    """insert_masks on keras.applications.ResNet50 (49 mask points), small input."""
    step = benchmark_step(
        "keras.applications.ResNet50", (32, 32, 3), 32, max(args.step_repeats // 2, 3),
        STEP_ARMS[:2], (False,),
    )
    _print_table(
        "Training step, keras.applications.ResNet50 with insert_masks, 32x32x3, "
        "batch 32, no XLA",
        step["rows"],
        ("name", "ms", "vs_none", "spread"),
    )
    return {"resnet50_step": step}


def _jax_step_suite(args):
    """The cnn's step on Keras's JAX backend, CPU only, in a process of its own."""
    environment = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    process = subprocess.run(
        [sys.executable, "-m", "eval.jax_steps", "--architectures=cnn",
         f"--batch_size={args.batch_size}", f"--repeats={args.step_repeats}"],
        env=environment, capture_output=True, text=True, check=False,
    )
    if process.returncode != 0:
        raise RuntimeError(f"eval.jax_steps failed:\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    (step,) = result["steps"]
    _print_table(
        f"Training step on Keras's JAX backend (jax {result['environment']['jax']}, CPU, "
        f"jax.jit), cnn on 28x28x1, batch {args.batch_size}, mask metrics every 10 steps; "
        f"median of {args.step_repeats} repeats of 10 steps",
        step["rows"],
        ("name", "ms", "vs_none", "spread"),
    )
    return {"jax_train_step": step}


def main(argv=None):
    args = _arguments(argv)
    suites = args.suites.split(",")
    try:
        shape = _validate(args, suites)
    except ValueError as error:
        if _STDERR is not None:
            _STDERR.fail(PROGRAM, error)
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    if _STDERR is not None:
        tf.config.list_physical_devices("GPU")  # The CUDA probe's lines, while held.
        _STDERR.release()
    # One tf.function per candidate is by design: no retracing warnings.
    tf.get_logger().setLevel("ERROR")
    result = {"environment": environment()}
    if "op" in suites:
        result.update(_op_suite(shape, args))
    if "step" in suites:
        result.update(_step_suite(args))
    if "resnet50" in suites:
        result.update(_resnet50_suite(args))
    if "jax_step" in suites:
        result.update(_jax_step_suite(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
