"""Measures the matched control's extra memory: the op's backward alone, peak RSS.

Run: `python -m eval.control_memory [--shape=32,112,112,64] [--rules=mean,topk,...]
[--modes=eager,function,xla] [--allocator=malloc]`.

Each measurement runs in a fresh interpreter (TensorFlow backend, CPU only). It makes
a float32 input `x` and an upstream gradient of `--shape` (standard normal) and runs
the backward as a training step does: `tf.GradientTape` over `gradient_mask(x, rule,
control=...)` with the upstream gradient as `output_gradients`, eagerly (`eager`), in
a `tf.function` (`function`) or in one compiled with XLA (`xla`). A first run warms it
up (compiling what it compiles per shape, as a training run's first step does); the
second is measured. Memory is the process's peak resident set (VmHWM), reset just
before that run where the kernel allows it (`/proc/self/clear_refs`; the
`peak_was_reset` of the JSON line), else the whole process's.

Columns: `peak_mb`, the peak during the measured backward; `over_before_mb`, that
peak less the resident set just before it (the inputs, the runtime, and what the
warm-up left: compiled code, memory malloc keeps for reuse); `extra_mb`, the
control's cost: its peak less the peak of the same rule without control, measured
the same way in its own process; `extra_per_gradient`, `extra_mb` over the gradient's
bytes; `extra_over_before_mb`, the difference of the two `over_before_mb`, the same
cost without what the processes already held before the backward. MB are 10^6 bytes.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

PROGRAM = "python -m eval.control_memory"
# The rules with a matched control, spelled `rule` or `rule:scope`.
RULES = ("mean", "mean:channel", "topk", "local", "lateral", "log")
MODES = ("eager", "function", "xla")
# TF_ENABLE_ONEDNN_OPTS of each allocator: with oneDNN off TensorFlow's CPU buffers come
# from malloc, whose large blocks are mapped and unmapped, so the resident set follows
# the live bytes; with oneDNN on (TensorFlow's default on x86) they come from a pool
# that keeps freed blocks, so memory touched before the backward can hide its cost.
ALLOCATORS = {"malloc": "0", "onednn": "1"}


def _status_mb(field):
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak():
    """Resets VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _backward(rule, scope, control, mode):
    import tensorflow as tf

    from gradmask_tf import gradient_mask

    def compute(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gradient_mask(x, rule, scope=scope, control=control, seed=0)
        return tape.gradient(y, x, output_gradients=upstream)

    if mode == "eager":
        return compute
    return tf.function(compute, jit_compile=mode == "xla")


def measure_one(rule, scope, control, mode, shape):
    """Peak RSS (MB) of one backward on `shape`; run in a fresh process."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    compute = _backward(rule, scope, control, mode)
    x = tf.random.stateless_normal(shape, [1, 0])
    upstream = tf.random.stateless_normal(shape, [1, 1])
    # A first backward on the same shape compiles what it needs (XLA's kernels are
    # compiled per shape, as in the first step of a training run); its peak is not
    # counted, what it keeps is.
    compute(x, upstream)
    before = _status_mb("VmRSS")
    reset = _reset_peak()
    result = compute(x, upstream)
    float(tf.reshape(result, [-1])[0])  # the backward has run
    peak = _status_mb("VmHWM")
    return {"peak_mb": peak, "before_mb": before, "peak_was_reset": reset}


def measure_in_subprocess(rule, scope, control, mode, shape, allocator="malloc"):
    """`measure_one` in a fresh interpreter (the environment's, with `allocator`)."""
    request = json.dumps(
        {"rule": rule, "scope": scope, "control": control, "mode": mode, "shape": shape}
    )
    environment = dict(
        os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS=ALLOCATORS[allocator],
    )
    process = subprocess.run(
        [sys.executable, "-m", "eval.control_memory", f"--child={request}"],
        env=environment, capture_output=True, text=True, check=False,
    )
    if process.returncode != 0:
        raise RuntimeError(f"{PROGRAM} child {request} failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def measure(rules, modes, shape, allocator="malloc"):
    """One row per rule, mode and control setting, each measured in its own process."""
    gradient_mb = int(np.prod(shape)) * 4 / 1e6
    rows = []
    for mode in modes:
        for name in rules:
            rule, _, scope = name.partition(":")
            scope = scope or "spatial"
            without = measure_in_subprocess(rule, scope, False, mode, shape, allocator)
            with_control = measure_in_subprocess(rule, scope, True, mode, shape, allocator)
            for control, result in ((False, without), (True, with_control)):
                extra = result["peak_mb"] - without["peak_mb"]
                over_before = result["peak_mb"] - result["before_mb"]
                rows.append({
                    "rule": name, "mode": mode, "control": control,
                    "peak_mb": round(result["peak_mb"]),
                    "over_before_mb": round(over_before),
                    "extra_mb": round(extra),
                    "extra_per_gradient": round(extra / gradient_mb, 2),
                    "extra_over_before_mb": round(
                        over_before - without["peak_mb"] + without["before_mb"]
                    ),
                    "peak_was_reset": result["peak_was_reset"],
                })
    return {"shape": list(shape), "gradient_mb": round(gradient_mb, 1),
            "allocator": allocator, "rows": rows}


def print_table(result):
    columns = ("rule", "mode", "control", "peak_mb", "over_before_mb", "extra_mb",
               "extra_per_gradient", "extra_over_before_mb")
    rows = result["rows"]
    print(f"Matched control, backward alone on a {result['shape']} float32 gradient "
          f"({result['gradient_mb']} MB), peak RSS, one process per row, "
          f"allocator {result['allocator']}")
    widths = [max(len(column), *(len(str(row[column])) for row in rows)) for column in columns]
    print(" | ".join(f"{column:>{width}}" for column, width in zip(columns, widths)))
    print("-" * (sum(widths) + 3 * (len(widths) - 1)))
    for row in rows:
        print(" | ".join(f"{str(row[column]):>{width}}" for column, width in zip(columns, widths)))


def _validate(args):
    """`(rules, modes, shape)`; a ValueError names a bad argument."""
    rules, modes = args.rules.split(","), args.modes.split(",")
    for flag, values, valid in (("--rules", rules, RULES), ("--modes", modes, MODES)):
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"{flag}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    try:
        shape = [int(value) for value in args.shape.split(",")]
    except ValueError:
        shape = []
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(
            f"--shape: expected 4 positive comma-separated integers, received {args.shape!r}"
        )
    return rules, modes, shape


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,112,112,64", help="the gradient's shape")
    parser.add_argument("--rules", default="mean,topk",
                        help=f"comma-separated: {', '.join(RULES)}")
    parser.add_argument("--modes", default="eager,function",
                        help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--allocator", default="malloc", choices=tuple(ALLOCATORS),
                        help="TensorFlow's CPU allocator (oneDNN off: malloc; on: its pool)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    if args.child:
        print(json.dumps(measure_one(**json.loads(args.child))))
        return 0
    try:
        rules, modes, shape = _validate(args)
    except ValueError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    result = measure(rules, modes, shape, args.allocator)
    print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
