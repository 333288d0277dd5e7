"""Times `GradMaskModel`'s training step on Keras's JAX backend, `none` against `mean`.

Run: `KERAS_BACKEND=jax python -m eval.jax_steps [--architectures=cnn,resnet20]
[--batch_size=128] [--repeats=20]`. Needs JAX and Keras only (no TensorFlow): the
step is the model's own stateless `train_step` under `jax.jit` (so with XLA), on the
default device (the CPU, or a GPU where JAX sees one). Candidates are timed
interleaved, round-robin, in blocks of steps, and each block's ratio to the `none`
block beside it gives the median ratio, as `eval.benchmark` does for TensorFlow. The
last line printed is the result as JSON; `eval.benchmark --suites=jax_step` runs this
and reports it beside the TensorFlow step.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

# The input of each architecture, as the project trains it.
INPUT_SHAPES = {"cnn": (28, 28, 1), "resnet20": (32, 32, 3)}
RULES = ("none", "mean")


def _model_and_state(architecture, rule, batch):
    """A compiled model on fixed weights and its step state after one warm-up step."""
    import jax
    import keras

    import gradmask_tf

    keras.utils.set_random_seed(0)
    model = gradmask_tf.build_model(
        architecture, input_shape=INPUT_SHAPES[architecture], num_classes=10,
        mask_rule=rule, seed=0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # One step of fit builds the optimizer's and metrics' variables.
    model.fit(*batch, batch_size=len(batch[1]), epochs=1, verbose=0)
    # Copies: the step donates its state, and equal initial values may share a buffer.
    state = tuple(
        [jax.numpy.array(variable.value, copy=True) for variable in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    return model, state


def step_candidates(architecture, batch_size, block, rules=RULES):
    """One jitted training step per rule; each candidate runs `block` steps."""
    import jax

    rng = np.random.default_rng(0)
    images = rng.random((batch_size, *INPUT_SHAPES[architecture])).astype("float32")
    labels = rng.integers(0, 10, batch_size).astype("int32")
    batch = (jax.numpy.asarray(images), jax.numpy.asarray(labels))
    candidates = {}
    for rule in rules:
        model, state = _model_and_state(architecture, rule, (images, labels))
        step = jax.jit(model.train_step, donate_argnums=0)
        holder = {"state": state}

        def run(step=step, holder=holder):
            for _ in range(block):
                logs, holder["state"] = step(holder["state"], batch)
            return float(logs["loss"])  # Waits for the device.

        candidates[rule] = run
    return candidates


def interleaved(candidates, repeats, warmup=2):
    """Each callable `repeats` times round-robin after `warmup` runs; seconds each."""
    for run in candidates.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: np.array(values) for name, values in times.items()}


def benchmark_step(architecture, batch_size, repeats, block=10):
    """Per-step milliseconds of each rule and its median paired ratio to `none`."""
    times = interleaved(step_candidates(architecture, batch_size, block), repeats)
    rows = []
    for name, seconds in times.items():
        ratios = seconds / times["none"]
        rows.append({
            "name": name,
            "ms": round(float(np.median(seconds)) / block * 1e3, 3),
            "vs_none": round(float(np.median(ratios)), 3),
            "spread": "{:.3f}-{:.3f}".format(*np.percentile(ratios, [25, 75])),
        })
    return {
        "architecture": architecture,
        "input_shape": list(INPUT_SHAPES[architecture]),
        "batch_size": batch_size,
        "steps_per_repeat": block,
        "repeats": repeats,
        "rows": rows,
    }


def environment():
    import jax
    import keras

    device = jax.devices()[0]
    return {
        "backend": keras.backend.backend(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "device": f"{device.platform}: {getattr(device, 'device_kind', '')}",
        "cpu_count": os.cpu_count(),
    }


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default="cnn", help="comma-separated: cnn, resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block", type=int, default=10, help="steps per timed repeat")
    return parser.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    architectures = args.architectures.split(",")
    unknown = sorted(set(architectures) - set(INPUT_SHAPES))
    if unknown or min(args.batch_size, args.repeats, args.block) < 1:
        print(
            f"python -m eval.jax_steps: error: architectures from {sorted(INPUT_SHAPES)} "
            "and positive --batch_size, --repeats, --block; received "
            f"{args.architectures!r}, {args.batch_size}, {args.repeats}, {args.block}",
            file=sys.stderr,
        )
        return 2
    result = {"environment": environment(), "steps": []}
    for architecture in architectures:
        step = benchmark_step(architecture, args.batch_size, args.repeats, args.block)
        for row in step["rows"]:
            print(f"{architecture} batch {args.batch_size} {row['name']:>5}: "
                  f"{row['ms']} ms/step, {row['vs_none']}x none ({row['spread']})")
        result["steps"].append(step)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
