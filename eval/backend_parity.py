"""Accuracy parity of the backends: a JAX `fit` of the cnn with `mean` against TensorFlow's.

Run: `python -m eval.backend_parity [--seeds=0,1,2] [--examples=5000] [--epochs=3]`.

The real Fashion-MNIST training split (Debian's IDX files, read with
`gradmask_tf.data`), a subset of `--examples` drawn per seed and the same for both
backends; the cnn with the default `mean` rule, Adam at 1e-3, batch 128, as
`train.py`'s defaults; top-1 accuracy on the full test split. Each backend fits every
seed in a process of its own (`KERAS_BACKEND`; a process holds one backend). Prints one
line per fit, the mean and standard deviation per backend and the difference of the
means, then the result as JSON. Initial weights and data order are drawn from the seed
by each backend's own generator, so the two backends' runs of one seed differ: parity
is of the means, not of single runs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

BACKENDS = ("tensorflow", "jax")


def _write_data(folder, seeds, examples):
    """The training subset of each seed and the test split, as one .npz file."""
    from gradmask_tf.data import idx, sources

    directory = sources.DEBIAN_FASHION_MNIST_DIR
    train_images, train_labels = idx.arrays(directory, "train")
    test_images, test_labels = idx.arrays(directory, "test")
    subsets = {
        f"subset_{seed}": np.random.default_rng(seed).choice(
            len(train_labels), examples, replace=False
        )
        for seed in seeds
    }
    path = os.path.join(folder, "data.npz")
    np.savez(
        path, train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, **subsets,
    )
    return path


def fit_seed(data, seed, epochs):
    """Fits the cnn with `mean` on this seed's subset; returns the test accuracy."""
    import keras

    import gradmask_tf

    keras.utils.set_random_seed(seed)
    subset = data[f"subset_{seed}"]
    images = data["train_images"][subset].astype("float32") / 255.0
    labels = data["train_labels"][subset]
    model = gradmask_tf.build_model(
        "cnn", input_shape=(28, 28, 1), num_classes=10, mask_rule="mean",
        dataset="fashion_mnist", seed=seed,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, labels, batch_size=128, epochs=epochs, shuffle=True, verbose=0)
    test_images = data["test_images"].astype("float32") / 255.0
    logs = model.evaluate(test_images, data["test_labels"], batch_size=512, verbose=0,
                          return_dict=True)
    return float(logs["accuracy"])


def _child(args):
    """In a process of one backend: every seed's accuracy as one JSON line."""
    import keras

    data = np.load(args.data)
    accuracies = [fit_seed(data, seed, args.epochs) for seed in _seeds(args)]
    print(json.dumps({"backend": keras.backend.backend(), "accuracies": accuracies}))
    return 0


def _seeds(args):
    return [int(seed) for seed in args.seeds.split(",")]


def _run_backend(backend, args, data_path):
    command = [sys.executable, "-m", "eval.backend_parity", "--child", f"--data={data_path}",
               f"--seeds={args.seeds}", f"--epochs={args.epochs}"]
    environment = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    process = subprocess.run(command, env=environment, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"{backend} fits failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])["accuracies"]


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    if args.child:
        return _child(args)
    result = {"seeds": _seeds(args), "examples": args.examples, "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as folder:
        data_path = _write_data(folder, _seeds(args), args.examples)
        for backend in BACKENDS:
            accuracies = _run_backend(backend, args, data_path)
            result[backend] = {
                "accuracies": accuracies,
                "mean": round(float(np.mean(accuracies)), 4),
                "std": round(float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0, 4),
            }
            print(f"{backend}: {accuracies} mean {result[backend]['mean']} "
                  f"std {result[backend]['std']}", flush=True)
    result["difference"] = round(result["jax"]["mean"] - result["tensorflow"]["mean"], 4)
    print(f"jax - tensorflow: {result['difference']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
