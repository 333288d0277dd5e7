"""Accuracy under L-infinity adversarial attacks, exact gradients (METHOD.md §5.3).

Every attack is CleverHans's tf2 implementation, untargeted, with the true labels (no
label leaking), clipped to [0, 1], and differentiates `model(x, training=False)`, cast
to float32 so mixed-precision models are attacked in full precision. Gradient Mask
layers are exact identities at inference, so every attack sees the true gradients.
That is the point of the evaluation: a mask active at inference would hide gradients
from the attacker and fake robustness (gradient masking, Athalye et al. 2018).

The attacks: `fgsm` (one step), `pgd` (Madry's random start, then `pgd_steps` steps of
`min(2.5 * eps / pgd_steps, eps)` unless a step is given), `bim` (the same without
random start) and `mim` (with momentum). CleverHans quirks handled here: its iterative
attacks check `eps_iter <= eps` with a Python `assert` (so `eps` stays a Python number
when traced, and the step is capped at `eps`), and BIM and MIM default to
`sanity_checks=True`, which cannot run on tensors (so it is turned off).

References:
  Goodfellow, Shlens, Szegedy. "Explaining and Harnessing Adversarial Examples".
  ICLR 2015 (FGSM).
  Madry et al. "Towards Deep Learning Models Resistant to Adversarial Attacks".
  ICLR 2018 (PGD).
  Kurakin, Goodfellow, Bengio. "Adversarial Examples in the Physical World". ICLR
  workshop 2017 (BIM).
  Dong et al. "Boosting Adversarial Attacks with Momentum". CVPR 2018 (MIM).
  Athalye, Carlini, Wagner. "Obfuscated Gradients Give a False Sense of Security:
  Circumventing Defenses to Adversarial Examples". ICML 2018.
"""

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.basic_iterative_method import basic_iterative_method
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import (
    projected_gradient_descent,
)

from eval import checks
from eval.names import ATTACKS, PGD_STEP_SIZE_RULE
from gradmask_tf.versions import library_versions

DEFAULT_ATTACKS = ("fgsm", "pgd")
DEFAULT_EPS = (0.01, 0.03, 0.05, 0.1)
GRADIENTS = "exact (masks inactive at inference)"


def perturb(
    model, images, labels, attack, eps, *, pgd_steps=10, pgd_step_size=None, seed=0,
    batch_size=128,
):
    """Adversarial versions of `images` from one attack.

    Args:
      model: A Keras model whose outputs are logits.
      images: Float array `[N, H, W, C]` with values in [0, 1].
      labels: Integer array `[N]` of true labels.
      attack: A name from `ATTACKS`.
      eps: L-infinity radius, `>= 0`, in pixel units of [0, 1].
      pgd_steps: Iterations of `pgd`, `bim` and `mim`. Defaults to 10.
      pgd_step_size: Step of the iterative attacks, capped at `eps`. Defaults to
        None: `2.5 * eps / pgd_steps`.
      seed: Seed of PGD's random start; sets TensorFlow's global seed. Defaults to 0.
      batch_size: Examples per attack batch. Defaults to 128.

    Returns:
      Float32 array shaped like `images`, within `eps` of it and within [0, 1].

    Raises:
      ValueError: On an unknown attack, a negative or non-finite `eps`, or images,
        labels or options that do not fit the description above.
    """
    (attack,) = checks.names("attack", attack, ATTACKS)
    (eps,) = checks.floats("eps", eps, low=0.0)
    images, labels, pgd_steps, pgd_step_size, batch_size = _check(
        model, (images, labels), pgd_steps, pgd_step_size, batch_size
    )
    tf.random.set_seed(seed)
    run = _compiled_attack(model, attack, eps, images.shape[1:], pgd_steps, pgd_step_size)
    return np.concatenate(
        [run(*_batch(images, labels, batch))[0].numpy() for batch in _batches(images, batch_size)]
    )


def evaluate_adversarial(
    model, data, *, attacks=DEFAULT_ATTACKS, eps=DEFAULT_EPS, pgd_steps=10,
    pgd_step_size=None, batch_size=128, seed=0,
):
    """Accuracy of `model` under each attack at each radius.

    `evaluate_adversarial(model, (x_test[:1000], y_test[:1000]))["attacks"]["pgd"]
    ["0.03"]` is the accuracy under PGD-10 at eps 0.03.

    Args:
      model: A Keras model whose outputs are logits.
      data: `(images, labels)`: float images `[N, H, W, C]` in [0, 1] and integer
        labels `[N]`, typically the first N test examples.
      attacks: Names from `ATTACKS`. Defaults to `DEFAULT_ATTACKS` (FGSM and PGD).
      eps: L-infinity radii, each `>= 0` (0 is attacked too, and must give the clean
        accuracy). Defaults to `DEFAULT_EPS`.
      pgd_steps: Iterations of the iterative attacks. Defaults to 10.
      pgd_step_size: Step of the iterative attacks, capped at each `eps`. Defaults
        to None: `2.5 * eps / pgd_steps`.
      batch_size: Examples per batch. Defaults to 128.
      seed: Seed of PGD's random start; sets TensorFlow's global seed. Results are
        reproducible for a given seed and batch size. Defaults to 0.

    Returns:
      A JSON-able dict: `clean_accuracy`; `num_examples`; `attacks`, mapping each
      attack to `{format(eps, "g"): accuracy}`; `settings` (attacks, eps, pgd_steps,
      pgd_step_size or its rule, norm, clip, rand_init per attack, targeted, seed,
      batch_size, masks, gradients, library_versions).

    Raises:
      ValueError: On an unknown attack (the message lists the valid ones), a
        negative or non-finite eps, or data or options that do not fit.
    """
    attacks = checks.names("attacks", attacks, ATTACKS)
    radii = checks.floats("eps", eps, low=0.0)
    images, labels, pgd_steps, pgd_step_size, batch_size = _check(
        model, data, pgd_steps, pgd_step_size, batch_size
    )
    shape = images.shape[1:]
    clean_accuracy = _accuracy(_compiled_clean(model, shape), images, labels, batch_size)
    tf.random.set_seed(seed)
    accuracies = {
        attack: {
            checks.key(radius): _accuracy(
                _compiled_attack(model, attack, radius, shape, pgd_steps, pgd_step_size),
                images, labels, batch_size,
            )
            for radius in radii
        }
        for attack in attacks
    }
    return {
        "clean_accuracy": clean_accuracy,
        "num_examples": len(images),
        "attacks": accuracies,
        "settings": _settings(attacks, radii, pgd_steps, pgd_step_size, batch_size, seed),
    }


def _accuracy(run, images, labels, batch_size):
    """The share of examples `run` (an attack, or none) leaves correctly classified."""
    batches = _batches(images, batch_size)
    return sum(int(run(*_batch(images, labels, batch))[1]) for batch in batches) / len(images)


def _check(model, data, pgd_steps, pgd_step_size, batch_size):
    images, labels = checks.labelled_images(data, model)
    return (
        images,
        labels,
        checks.integer("pgd_steps", pgd_steps),
        None if pgd_step_size is None else checks.positive_float("pgd_step_size", pgd_step_size),
        checks.integer("batch_size", batch_size),
    )


def _settings(attacks, radii, pgd_steps, pgd_step_size, batch_size, seed):
    return {
        "attacks": list(attacks),
        "eps": list(radii),
        "pgd_steps": pgd_steps,
        "pgd_step_size": PGD_STEP_SIZE_RULE if pgd_step_size is None else pgd_step_size,
        "norm": "inf",
        "clip": [0.0, 1.0],
        "rand_init": {attack: attack == "pgd" for attack in attacks},
        "targeted": False,
        "seed": seed,
        "batch_size": batch_size,
        "masks": "inactive (exact gradients)",
        "gradients": GRADIENTS,
        "library_versions": library_versions("cleverhans"),
    }


def _logits_fn(model):
    """CleverHans's `model_fn`: float32 logits of the model at inference."""
    return lambda x: tf.cast(model(x, training=False), tf.float32)


def _attack_step(model_fn, attack, eps, pgd_steps, pgd_step_size):
    """`x, y -> adversarial x` for one attack at one radius."""
    eps_iter = 2.5 * eps / pgd_steps if pgd_step_size is None else pgd_step_size
    common = dict(norm=np.inf, clip_min=0.0, clip_max=1.0, targeted=False)
    if attack == "fgsm":
        return lambda x, y: fast_gradient_method(model_fn, x, eps, y=y, **common)
    iterative = dict(common, eps_iter=min(eps_iter, eps), nb_iter=pgd_steps)
    if attack == "pgd":
        return lambda x, y: projected_gradient_descent(
            model_fn, x, eps, y=y, rand_init=True, **iterative
        )
    method = basic_iterative_method if attack == "bim" else momentum_iterative_method
    return lambda x, y: method(model_fn, x, eps, y=y, sanity_checks=False, **iterative)


def _signature(image_shape):
    return (
        tf.TensorSpec([None, *image_shape], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )


def _compiled(model_fn, step, image_shape):
    """`step` traced once for any batch size: `x, y -> (step(x, y), correct)`.

    `get_concrete_function` traces once per attack and radius without tripping
    TensorFlow's retracing warning; graph mode saves the eager dispatch between
    PGD's steps.
    """

    def run(x, y):
        output = step(x, y)
        predictions = tf.argmax(model_fn(output), axis=-1)
        return output, tf.reduce_sum(tf.cast(predictions == y, tf.int64))

    return tf.function(run, autograph=False).get_concrete_function(*_signature(image_shape))


def _compiled_attack(model, attack, eps, image_shape, pgd_steps, pgd_step_size):
    model_fn = _logits_fn(model)
    step = _attack_step(model_fn, attack, eps, pgd_steps, pgd_step_size)
    return _compiled(model_fn, step, image_shape)


def _compiled_clean(model, image_shape):
    return _compiled(_logits_fn(model), lambda x, y: x, image_shape)


def _batches(images, batch_size):
    for start in range(0, len(images), batch_size):
        yield slice(start, start + batch_size)


def _batch(images, labels, batch):
    return tf.constant(images[batch]), tf.constant(labels[batch])
