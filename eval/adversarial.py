"""Accuracy under L-infinity adversarial attacks, exact gradients (METHOD.md §5.3).

The attacks are CleverHans's tf2 implementations; this module only batches them,
seeds them, counts what they break and plots the result. CleverHans quirks stay here:
its iterative attacks check `eps_iter <= eps` with a Python `assert` (so `eps` must
be a Python number when traced, and the step is capped at `eps`), and BIM and MIM
default to `sanity_checks=True`, which cannot run on tensors (so it is turned off).

Gradient Mask layers are identities with exact gradients at inference
(`training=False`), so every attack here differentiates the true model. That is the
point of the evaluation: a mask active at inference would hide gradients from the
attacker and fake robustness (gradient masking, Athalye et al. 2018).
"""

import importlib.metadata
import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.basic_iterative_method import basic_iterative_method
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import (
    projected_gradient_descent,
)

from eval import figures

ATTACKS = ("fgsm", "pgd", "bim", "mim")
# Madry et al. (2018): 2.5 * eps / steps lets PGD walk to the far side of the ball
# from a random start; CleverHans requires the step to be at most eps.
PGD_STEP_SIZE_RULE = "min(2.5 * eps / pgd_steps, eps)"
GRADIENTS = "exact (masks inactive at inference)"

_ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "bim": "BIM", "mim": "MIM"}
# The clean accuracy is dashed; no attack is.
_LINESTYLES = {"fgsm": "-", "pgd": "-.", "bim": ":", "mim": (0, (3, 1, 1, 1, 1, 1))}
_MARKERS = {"fgsm": "o", "pgd": "s", "bim": "^", "mim": "D"}


def perturb(
    model,
    images,
    labels,
    attack,
    eps,
    *,
    pgd_steps=10,
    pgd_step_size=None,
    seed=0,
    batch_size=128,
):
    """Adversarial versions of `images` from one L-infinity attack.

    The attack differentiates `model(x, training=False)`, where Gradient Mask layers
    are exact identities: the adversary sees the true gradients.

    Args:
      model: A Keras model whose outputs are logits.
      images: Float array `[N, H, W, C]` with values in [0, 1].
      labels: Integer array `[N]` of true labels; the attacks use them, not the
        model's predictions, so no label leaking.
      attack: `"fgsm"`, `"pgd"` (random start), `"bim"` (PGD without random start)
        or `"mim"` (momentum).
      eps: L-infinity radius, `>= 0`, in pixel units of [0, 1].
      pgd_steps: Iterations of `pgd`, `bim` and `mim`. Defaults to 10.
      pgd_step_size: Step of the iterative attacks, capped at `eps`. Defaults to
        None: `2.5 * eps / pgd_steps` (Madry et al.).
      seed: Seed of PGD's random start. Sets TensorFlow's global seed
        (`tf.random.set_seed`). Defaults to 0.
      batch_size: Examples per attack batch. Defaults to 128.

    Returns:
      Float32 array shaped like `images`, within `eps` of it and within [0, 1].

    Raises:
      ValueError: On an unknown attack, a negative or non-finite `eps`, or images,
        labels or options that do not fit the description above.

    References:
      Goodfellow, Shlens, Szegedy. "Explaining and Harnessing Adversarial
      Examples". ICLR 2015 (FGSM).
      Madry et al. "Towards Deep Learning Models Resistant to Adversarial
      Attacks". ICLR 2018 (PGD).
      Kurakin, Goodfellow, Bengio. "Adversarial Examples in the Physical World".
      ICLR workshop 2017 (BIM).
      Dong et al. "Boosting Adversarial Attacks with Momentum". CVPR 2018 (MIM).
    """
    (attack,) = _check_attacks([attack])
    (eps,) = _check_eps([eps])
    _check_options(pgd_steps, pgd_step_size, batch_size)
    images, labels = _check_data(images, labels)
    model_fn = _logits_fn(model)
    _check_labels(labels, _num_classes(model_fn, images))
    tf.random.set_seed(seed)
    run = _compiled_attack(
        model_fn, attack, eps, images.shape[1:], pgd_steps, pgd_step_size
    )
    adversarial = [
        run(*_batch(images, labels, batch))[0].numpy()
        for batch in _batches(len(images), batch_size)
    ]
    return np.concatenate(adversarial)


def evaluate_adversarial(
    model,
    data,
    *,
    attacks=("fgsm", "pgd"),
    eps=(0.01, 0.03, 0.05, 0.1),
    pgd_steps=10,
    pgd_step_size=None,
    batch_size=128,
    seed=0,
    progress=True,
    figure_path=None,
    title=None,
):
    """Accuracy of `model` under L-infinity attacks, for each attack and radius.

    Every attack is untargeted, uses the true labels, clips to [0, 1] and
    differentiates `model(x, training=False)`. Gradient Mask layers are exact
    identities there, so the gradients are exact: a mask active at inference would
    hide gradients from the attacker and fake robustness (METHOD.md §2, and
    Athalye et al. 2018). Accuracy at `eps=0` is the clean accuracy.

    Example:

    ```python
    results = evaluate_adversarial(model, (x_test[:1000], y_test[:1000]))
    results["attacks"]["pgd"]["0.03"]  # accuracy under PGD-10 at eps 0.03
    ```

    Args:
      model: A Keras model whose outputs are logits (cast to float32 here, so
        mixed precision works).
      data: `(images, labels)`: float images `[N, H, W, C]` in [0, 1] and integer
        labels `[N]`, typically the first N test examples.
      attacks: Names from `ATTACKS`: `"fgsm"`, `"pgd"` (Madry: random start),
        `"bim"` (no random start), `"mim"` (momentum). Defaults to
        `("fgsm", "pgd")`.
      eps: L-infinity radii, each `>= 0`. Defaults to `(0.01, 0.03, 0.05, 0.1)`.
      pgd_steps: Iterations of the iterative attacks. Defaults to 10.
      pgd_step_size: Step of the iterative attacks, capped at each `eps`.
        Defaults to None: `2.5 * eps / pgd_steps`.
      batch_size: Examples per batch. Defaults to 128.
      seed: Seed of PGD's random start; sets TensorFlow's global seed. Results
        are reproducible for a given seed and batch size. Defaults to 0.
      progress: Show a progress bar over attacks x radii x batches. Defaults to
        True.
      figure_path: If given, also writes a PNG of accuracy against eps there
        (see `plot_adversarial`). Defaults to None.
      title: Title of the figure. Defaults to None (a description of the run).

    Returns:
      A JSON-able dict: `clean_accuracy`; `num_examples`; `attacks`, mapping each
      attack to `{format(eps, "g"): accuracy}`; and `settings` (attacks, eps,
      pgd_steps, pgd_step_size or its rule, norm, clip, rand_init per attack,
      seed, batch_size, targeted, masks, gradients, library_versions).

    Raises:
      ValueError: On an unknown attack (the message lists the valid ones), a
        negative or non-finite eps, or data or options that do not fit.

    References:
      Goodfellow, Shlens, Szegedy. "Explaining and Harnessing Adversarial
      Examples". ICLR 2015 (FGSM).
      Madry et al. "Towards Deep Learning Models Resistant to Adversarial
      Attacks". ICLR 2018 (PGD).
      Kurakin, Goodfellow, Bengio. "Adversarial Examples in the Physical World".
      ICLR workshop 2017 (BIM).
      Dong et al. "Boosting Adversarial Attacks with Momentum". CVPR 2018 (MIM).
      Athalye, Carlini, Wagner. "Obfuscated Gradients Give a False Sense of
      Security: Circumventing Defenses to Adversarial Examples". ICML 2018.
    """
    attacks = _check_attacks(attacks)
    radii = _check_eps(eps)
    _check_options(pgd_steps, pgd_step_size, batch_size)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            "Invalid value for argument `data`: expected a tuple (images, labels). "
            f"Received: data of type {type(data).__name__}"
        )
    images, labels = _check_data(*data)
    model_fn = _logits_fn(model)
    _check_labels(labels, _num_classes(model_fn, images))

    batches = list(_batches(len(images), batch_size))
    attacked = [radius for radius in radii if radius > 0]
    bar = None
    if progress:
        bar = keras.utils.Progbar(
            len(batches) * (1 + len(attacks) * len(attacked)), unit_name="batch"
        )
    done = 0

    def count_correct(run):
        nonlocal done
        correct = 0
        for batch in batches:
            correct += int(run(*_batch(images, labels, batch))[1])
            done += 1
            if bar is not None:
                bar.update(done)
        return correct / len(images)

    clean_accuracy = count_correct(_compiled_clean(model_fn, images.shape[1:]))
    tf.random.set_seed(seed)
    accuracies = {}
    for attack in attacks:
        accuracies[attack] = {}
        for radius in radii:
            if radius == 0:
                # Nothing can move: the attacked accuracy is the clean one, exactly.
                accuracy = clean_accuracy
            else:
                accuracy = count_correct(
                    _compiled_attack(
                        model_fn,
                        attack,
                        radius,
                        images.shape[1:],
                        pgd_steps,
                        pgd_step_size,
                    )
                )
            accuracies[attack][_eps_key(radius)] = accuracy

    results = {
        "clean_accuracy": clean_accuracy,
        "num_examples": len(images),
        "attacks": accuracies,
        "settings": {
            "attacks": list(attacks),
            "eps": list(radii),
            "pgd_steps": pgd_steps,
            "pgd_step_size": (
                PGD_STEP_SIZE_RULE if pgd_step_size is None else float(pgd_step_size)
            ),
            "norm": "inf",
            "clip": [0.0, 1.0],
            "rand_init": {attack: attack == "pgd" for attack in attacks},
            "targeted": False,
            "seed": seed,
            "batch_size": batch_size,
            "masks": "inactive (exact gradients)",
            "gradients": GRADIENTS,
            "library_versions": {
                name: importlib.metadata.version(name)
                for name in ("cleverhans", "tensorflow", "keras")
            },
        },
    }
    if figure_path is not None:
        plot_adversarial(results, figure_path, title=title)
    return results


def plot_adversarial(results, path, labels=None, title=None):
    """Writes a PNG of accuracy against eps for one or several evaluations.

    One line per attack, each starting from the clean accuracy at eps 0; the clean
    accuracy is also a dashed horizontal line. With several results, each run has
    one colour and each attack one line style and marker, with one key for each
    beside the axes. The file is written to a temporary name and renamed into
    place.

    Args:
      results: One dict from `evaluate_adversarial`, or a sequence of them.
      path: Where to write the PNG; missing directories are created.
      labels: One name per result, for the legend. Defaults to None (no names
        for one result, "run 1", "run 2", ... for several).
      title: Figure title. Defaults to None (a description of the evaluation).

    Returns:
      The `matplotlib.figure.Figure` (not attached to pyplot), for further use.

    Raises:
      ValueError: If `results` is empty or `labels` does not match it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    runs = [results] if isinstance(results, dict) else list(results)
    if not runs:
        raise ValueError(
            "Invalid value for argument `results`: expected at least one result of "
            "`evaluate_adversarial`. Received: an empty sequence"
        )
    if labels is None:
        numbered = [f"run {number}" for number in range(1, len(runs) + 1)]
        labels = [None] if len(runs) == 1 else numbered
    labels = list(labels)
    if len(labels) != len(runs):
        raise ValueError(
            f"Invalid value for argument `labels`: expected one label per result "
            f"({len(runs)}). Received: {len(labels)} labels"
        )

    several = len(runs) > 1
    figure = Figure(figsize=(8.0 if several else 6.4, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    palette = [f"C{i}" for i in range(10)]
    all_eps = {0.0}
    run_handles, attack_handles = [], {}
    for index, (run, label) in enumerate(zip(runs, labels)):
        prefix = "" if label is None else f"{label}: "
        steps = run["settings"]["pgd_steps"]
        clean = run["clean_accuracy"]
        run_colour = palette[index % len(palette)]
        axes.axhline(
            clean,
            color=run_colour if several else "0.35",
            linestyle="--",
            linewidth=1.0,
            label=f"{prefix}clean ({clean:.3f})",
            zorder=1,
        )
        run_handles.append(
            Line2D(
                [], [], color=run_colour, linewidth=2.0, label=f"{label} ({clean:.3f})"
            )
        )
        for attack_index, (attack, by_eps) in enumerate(run["attacks"].items()):
            points = sorted((float(key), value) for key, value in by_eps.items())
            if points[0][0] != 0.0:
                points.insert(0, (0.0, clean))
            all_eps.update(radius for radius, _ in points)
            name = _ATTACK_NAMES.get(attack, attack.upper())
            if attack != "fgsm":
                name = f"{name}-{steps}"
            style = dict(
                linestyle=_LINESTYLES.get(attack, "-"),
                marker=_MARKERS.get(attack, "o"),
                markersize=5,
                linewidth=1.6,
            )
            # One run: a colour per attack; several: a colour per run.
            colour = run_colour if several else palette[attack_index % len(palette)]
            axes.plot(
                [radius for radius, _ in points],
                [value for _, value in points],
                color=colour,
                label=f"{prefix}{name}",
                clip_on=False,
                zorder=3,
                **style,
            )
            attack_handles.setdefault(
                name, Line2D([], [], color="0.3", label=name, **style)
            )

    if several:
        # Two keys beside the axes, off the curves: colour = run (with its clean
        # accuracy), style = attack.
        clean_handle = Line2D(
            [], [], color="0.3", linestyle="--", linewidth=1.0, label="clean"
        )
        figure.legend(
            handles=run_handles,
            loc="outside right upper",
            frameon=False,
            fontsize="small",
        )
        figure.legend(
            handles=[*attack_handles.values(), clean_handle],
            loc="outside right lower",
            frameon=False,
            fontsize="small",
        )
    else:
        axes.legend(frameon=False, fontsize="small", loc="best")

    largest = max(all_eps)
    axes.set_xlim(0.0, largest * 1.04 if largest > 0 else 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xticks(sorted(all_eps))
    axes.set_xticklabels([format(radius, "g") for radius in sorted(all_eps)])
    axes.set_xlabel("L∞ perturbation ε (pixels in [0, 1])")
    axes.set_ylabel("accuracy")
    axes.grid(True, color="0.9", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.set_title(title if title is not None else _default_title(runs))
    # An annotation below the axis label, so the constrained layout makes room.
    axes.annotate(
        _footnote(runs),
        xy=(1.0, 0.0),
        xycoords="axes fraction",
        xytext=(0, -34),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=7,
        color="0.4",
    )
    figures.save(figure, path, dpi=150)
    return figure


def _default_title(runs):
    sizes = sorted({run["num_examples"] for run in runs})
    examples = " / ".join(str(size) for size in sizes)
    return f"Accuracy under L∞ attacks ({examples} test examples)"


def _footnote(runs):
    settings = runs[0]["settings"]
    parts = ["untargeted, true labels"]
    iterative = [attack for attack in settings["attacks"] if attack != "fgsm"]
    if iterative:
        steps = settings["pgd_steps"]
        step = settings["pgd_step_size"]
        step = f"2.5ε/{steps}" if step == PGD_STEP_SIZE_RULE else format(step, "g")
        names = "/".join(_ATTACK_NAMES[attack] for attack in iterative)
        start = ""
        if "pgd" in iterative:
            start = ", random start" if len(iterative) == 1 else " (PGD: random start)"
        parts.append(f"{names}: {steps} steps of {step}{start}")
    parts.append("exact gradients (masks inactive)")
    return "; ".join(parts)


def _eps_key(radius):
    return format(radius, "g")


def _logits_fn(model):
    """CleverHans's `model_fn`: float32 logits of the model at inference."""

    def model_fn(x):
        # training=False: Gradient Mask layers are exact identities, so the attack
        # differentiates the true model. float32: the loss is computed in full
        # precision under mixed precision too, as Keras does for its losses.
        return tf.cast(model(x, training=False), tf.float32)

    return model_fn


def _attack_step(model_fn, attack, eps, pgd_steps, pgd_step_size):
    """`x, y -> adversarial x` for one attack at one radius."""
    eps_iter = 2.5 * eps / pgd_steps if pgd_step_size is None else float(pgd_step_size)
    # CleverHans asserts eps_iter <= eps (with a Python `assert`, so eps stays a
    # Python float and each radius gets its own trace).
    eps_iter = min(eps_iter, eps)
    common = dict(norm=np.inf, clip_min=0.0, clip_max=1.0, targeted=False)
    if attack == "fgsm":
        return lambda x, y: fast_gradient_method(model_fn, x, eps, y=y, **common)
    iterative = dict(common, eps_iter=eps_iter, nb_iter=pgd_steps)
    if attack == "pgd":
        return lambda x, y: projected_gradient_descent(
            model_fn, x, eps, y=y, rand_init=True, **iterative
        )
    # BIM and MIM default to sanity_checks=True, which calls np.all on tensors.
    if attack == "bim":
        return lambda x, y: basic_iterative_method(
            model_fn, x, eps, y=y, sanity_checks=False, **iterative
        )
    return lambda x, y: momentum_iterative_method(
        model_fn, x, eps, y=y, sanity_checks=False, **iterative
    )


def _signature(image_shape):
    return (
        tf.TensorSpec([None, *image_shape], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )


def _count_correct(model_fn, x, y):
    predictions = tf.argmax(model_fn(x), axis=-1)
    return tf.reduce_sum(tf.cast(predictions == y, tf.int64))


def _compiled_attack(model_fn, attack, eps, image_shape, pgd_steps, pgd_step_size):
    """One traced graph per attack and radius: `x, y -> (adversarial x, correct)`.

    Traced once for any batch size, with `get_concrete_function`, so building one
    per radius does not trip TensorFlow's retracing warning. Graph mode saves the
    eager dispatch between the steps (about 10% of PGD's time on a CPU; FGSM's
    gradient is already a `tf.function` in CleverHans).
    """
    step = _attack_step(model_fn, attack, eps, pgd_steps, pgd_step_size)

    def run(x, y):
        adversarial = step(x, y)
        return adversarial, _count_correct(model_fn, adversarial, y)

    return tf.function(run).get_concrete_function(*_signature(image_shape))


def _compiled_clean(model_fn, image_shape):
    def run(x, y):
        return x, _count_correct(model_fn, x, y)

    return tf.function(run).get_concrete_function(*_signature(image_shape))


def _batches(count, batch_size):
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def _batch(images, labels, batch):
    return tf.constant(images[batch]), tf.constant(labels[batch])


def _num_classes(model_fn, images):
    return int(model_fn(tf.constant(images[:1])).shape[-1])


def _check_attacks(attacks):
    if isinstance(attacks, str):
        attacks = [attacks]
    attacks = list(dict.fromkeys(attacks))
    unknown = [attack for attack in attacks if attack not in ATTACKS]
    if unknown or not attacks:
        received = f"attack={unknown[0]!r}" if unknown else "attacks=[]"
        raise ValueError(
            f"Invalid value for argument `attacks`: expected one or more of "
            f"{', '.join(ATTACKS)}. Received: {received}"
        )
    return tuple(attacks)


def _check_eps(eps):
    if isinstance(eps, numbers.Real):
        eps = [eps]
    radii = []
    for radius in eps:
        if (
            not isinstance(radius, numbers.Real)
            or isinstance(radius, bool)
            or not math.isfinite(radius)
            or radius < 0
        ):
            raise ValueError(
                "Invalid value for argument `eps`: expected finite numbers >= 0 "
                f"(L-infinity radii in pixel units of [0, 1]). Received: eps={radius!r}"
            )
        radii.append(float(radius))
    # Radii with the same key ("0.1" and 0.10) are one radius.
    radii = list({_eps_key(radius): radius for radius in radii}.values())
    if not radii:
        raise ValueError(
            "Invalid value for argument `eps`: expected at least one radius. "
            "Received: an empty sequence"
        )
    return tuple(radii)


def _check_options(pgd_steps, pgd_step_size, batch_size):
    if not isinstance(pgd_steps, numbers.Integral) or pgd_steps < 1:
        raise ValueError(
            "Invalid value for argument `pgd_steps`: expected an integer >= 1. "
            f"Received: pgd_steps={pgd_steps!r}"
        )
    if pgd_step_size is not None and not (
        isinstance(pgd_step_size, numbers.Real)
        and math.isfinite(pgd_step_size)
        and pgd_step_size > 0
    ):
        raise ValueError(
            "Invalid value for argument `pgd_step_size`: expected None (the rule "
            f"2.5 * eps / pgd_steps) or a number > 0. Received: "
            f"pgd_step_size={pgd_step_size!r}"
        )
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(
            "Invalid value for argument `batch_size`: expected an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )


def _check_data(images, labels):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.number):
        raise ValueError(
            "Invalid value for argument `images`: expected a numeric array "
            f"[N, H, W, C]. Received: shape {images.shape}, dtype {images.dtype}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Invalid value for argument `labels`: expected an integer array [N] "
            f"(class indices, not one-hot). Received: shape {labels.shape}, dtype "
            f"{labels.dtype}"
        )
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            "Invalid value for arguments `images` and `labels`: expected the same "
            f"number of examples, at least one. Received: {len(images)} images and "
            f"{len(labels)} labels"
        )
    images = images.astype(np.float32, copy=False)
    low, high = float(images.min()), float(images.max())
    if not (low >= 0.0 and high <= 1.0):
        raise ValueError(
            "Invalid value for argument `images`: expected values in [0, 1] (the "
            "attacks clip to that range). Received: values in "
            f"[{low:g}, {high:g}]; divide by 255 if they are 8-bit pixels"
        )
    return images, labels.astype(np.int64, copy=False)


def _check_labels(labels, num_classes):
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            "Invalid value for argument `labels`: expected class indices in "
            f"[0, {num_classes - 1}] for a model with {num_classes} logits. "
            f"Received: labels in [{low}, {high}]"
        )
