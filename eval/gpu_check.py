"""The GPU check: the op against the NumPy reference on the device, then the step times.

Needs JAX and Keras only (Keras's JAX backend; no TensorFlow), so it runs on the lent
GPU machines, which hold JAX with CUDA (Python 3.12, jax 0.11) but not TensorFlow.
Two parts, printed as they finish and as one JSON line at the end:

1. every rule (both scopes, hard and soft, rescale) under `jax.jit` on the default
   device against `tests/reference.py`, as tests/test_backend_ops.py checks it;
2. the training step of the cnn (28x28x1) and of resnet20 (32x32x3), `none` against
   `mean`, batch 128, interleaved, under `jax.jit` (XLA), with `eval.jax_steps`.

Here: `KERAS_BACKEND=jax python -m eval.gpu_check` (tests/jax_gpu_check.py, in the JAX
half of the tests, runs it on the CPU with the cnn at a tiny size). On a lent machine,
Keras travels as wheels in the working tree (the device notes: `.whl` ignored and
carried):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
      --implementation cp --platform manylinux_2_28_x86_64 \\
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
      keras==3.15.1 namex==0.1.0 optree==0.20.0

and one command there, with `.whl` carried (about 2 minutes of device time):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
      --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax \\
      python3 -m eval.gpu_check --out=$OUT/gpu_check.json
"""

import argparse
import itertools
import json
import sys

import numpy as np

SHAPES = {2: (32, 64), 4: (16, 14, 14, 32)}


def check_against_reference(rules=None):
    """Every rule's compiled backward on the default device against the reference.

    `rules`: the rules to check (default: all of `tests/reference.py`'s GRID, every
    rule, scope and option on both ranks).
    """
    import jax

    from gradmask_tf import gradient_mask
    from tests.reference import GRID, reference_mask

    failures, count = [], 0
    for rule, scope, soft, rescale, rank in GRID:
        if rules is not None and rule not in rules:
            continue
        options = dict(rule=rule, scope=scope, soft=soft, rescale=rescale)
        # A gradient with no entry within rounding of its threshold, which float32
        # may decide either way (and `rescale` then scales its whole neighbourhood).
        for seed in itertools.count():
            upstream = np.random.default_rng(seed).normal(size=SHAPES[rank])
            upstream = upstream.astype("float32")
            expected, borderline = reference_mask(upstream, **options)
            if not borderline.any():
                break

        def backward(x, upstream, options=options):
            return jax.vjp(lambda x: gradient_mask(x, **options), x)[1](upstream)[0]

        actual = np.asarray(jax.jit(backward)(np.ones_like(upstream), upstream))
        count += 1
        if not np.allclose(actual, expected, rtol=1e-5, atol=1e-6):
            failures.append({**options, "rank": rank})
    return {"cases": count, "failures": failures}


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default="cnn,resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--block", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    parser.add_argument("--reference_rules", default=None,
                        help="comma-separated rules to check against the reference (default: all)")
    return parser.parse_args(argv)


def main(argv=None):
    from eval import jax_steps

    args = _arguments(argv)
    result = {"environment": jax_steps.environment()}
    print(json.dumps(result["environment"]), flush=True)
    rules = args.reference_rules.split(",") if args.reference_rules else None
    result["reference"] = check_against_reference(rules)
    print(f"reference: {result['reference']['cases']} cases, "
          f"{len(result['reference']['failures'])} failures", flush=True)
    result["steps"] = []
    for architecture in args.architectures.split(","):
        step = jax_steps.benchmark_step(architecture, args.batch_size, args.repeats, args.block)
        for row in step["rows"]:
            print(f"{architecture} batch {args.batch_size} {row['name']:>5}: {row['ms']} "
                  f"ms/step, {row['vs_none']}x none ({row['spread']})", flush=True)
        result["steps"].append(step)
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as file:
            file.write(line + "\n")
    return 1 if result["reference"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
