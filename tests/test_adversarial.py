"""Adversarial evaluation: properties of the attacks on tiny fixed-weight models."""

import importlib.metadata
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from eval import adversarial
from eval.adversarial import ATTACKS, PGD_STEP_SIZE_RULE, evaluate_adversarial, perturb
from gradmask_tf import GradientMask

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3
# Float32 rounding of x + eps; anything larger is a real escape from the ball.
TOLERANCE = 1e-6


def tiny_model(masked=False):
    """Conv and dense layers with seeded weights, optionally with top-10% masks."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(
        4,
        3,
        padding="same",
        kernel_initializer=keras.initializers.GlorotUniform(seed=1),
        bias_initializer=keras.initializers.Constant(0.05),
        name="conv",
    )(inputs)
    x = keras.layers.ReLU()(x)
    if masked:
        x = GradientMask("topk", keep_fraction=0.1, name="mask1")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(
        16,
        kernel_initializer=keras.initializers.GlorotUniform(seed=2),
        bias_initializer=keras.initializers.Constant(0.05),
        name="dense",
    )(x)
    x = keras.layers.ReLU()(x)
    if masked:
        x = GradientMask("topk", keep_fraction=0.1, name="mask2")(x)
    outputs = keras.layers.Dense(
        NUM_CLASSES,
        kernel_initializer=keras.initializers.GlorotUniform(seed=3),
        name="logits",
    )(x)
    return keras.Model(inputs, outputs)


def random_data(count, seed=0):
    """Images in [0, 1] with a fifth of the pixels at exactly 0 or 1 (clipping)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(count, *IMAGE_SHAPE)).astype("float32")
    edge = rng.uniform(size=images.shape) < 0.2
    images[edge] = np.round(images[edge])
    return images, rng.integers(0, NUM_CLASSES, count)


def separable_data(count, seed=0):
    """Noise with a bright band of rows whose position is the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count)
    images = rng.uniform(0.0, 0.5, size=(count, *IMAGE_SHAPE)).astype("float32")
    for label in range(NUM_CLASSES):
        images[labels == label, 3 * label : 3 * label + 2] += 0.5
    return images, labels


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def trained_model():
    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*separable_data(256, seed=1), batch_size=64, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def evaluation(trained_model):
    """FGSM and PGD-10 on the trained model."""
    return evaluate_adversarial(
        trained_model,
        separable_data(200, seed=2),
        attacks=("fgsm", "pgd"),
        eps=(0.1, 0.15, 0.2),
        pgd_steps=10,
        batch_size=64,
    )


def accuracy(model, images, labels):
    return float(np.mean(np.argmax(model(images), axis=-1) == labels))


@pytest.mark.parametrize("attack", ATTACKS)
def test_eps_zero_leaves_images_and_accuracy_unchanged(model, attack):
    images, labels = random_data(16)
    # A fixed step of the iterative attacks must be capped at eps = 0 too.
    for step in (None,) if attack == "fgsm" else (None, 0.01):
        adversarial_images = perturb(
            model, images, labels, attack, 0.0, pgd_steps=2, pgd_step_size=step
        )
        np.testing.assert_array_equal(adversarial_images, images)
    # The eps=0 row is measured by attacking, like any other radius, so it is the
    # clean accuracy only if the attack leaves the images alone.
    results = evaluate_adversarial(
        model, (images, labels), attacks=[attack], eps=[0], pgd_steps=2
    )
    assert results["clean_accuracy"] == accuracy(model, images, labels)
    assert results["attacks"][attack]["0"] == results["clean_accuracy"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_perturbations_stay_in_the_ball_and_in_range(model, attack):
    images, labels = random_data(24)
    for eps in (0.03, 0.5):
        # A fixed step larger than eps 0.03: it must be capped, not escape the ball.
        adversarial_images = perturb(
            model, images, labels, attack, eps, pgd_steps=2, pgd_step_size=0.2
        )
        assert adversarial_images.dtype == np.float32
        assert adversarial_images.shape == images.shape
        distance = np.max(np.abs(adversarial_images - images))
        assert distance <= eps + TOLERANCE
        # The attack did move the images (a no-op would pass the bounds).
        assert distance >= 0.5 * eps
        assert adversarial_images.min() >= 0.0
        assert adversarial_images.max() <= 1.0


def test_pgd_is_never_weaker_than_fgsm(evaluation):
    results = evaluation
    assert results["clean_accuracy"] >= 0.9, "the trained model must be accurate"
    fgsm, pgd = results["attacks"]["fgsm"], results["attacks"]["pgd"]
    for eps in fgsm:
        assert pgd[eps] <= fgsm[eps], eps
    # Both attacks bite, and PGD strictly beats FGSM somewhere: an iterative attack
    # that took one step, or went the wrong way, would not.
    assert fgsm["0.2"] < results["clean_accuracy"]
    assert any(pgd[eps] < fgsm[eps] for eps in fgsm)


def test_fgsm_follows_its_definition_with_the_true_labels(model):
    images, labels = random_data(32)
    # Labels the untrained model mostly does not predict: label leaking (attacking
    # the predicted class) would go another way.
    assert accuracy(model, images, labels) < 0.6
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(x))
    step = 0.1 * np.sign(tape.gradient(loss, x).numpy())
    expected = np.clip(images + step, 0.0, 1.0)
    np.testing.assert_allclose(
        perturb(model, images, labels, "fgsm", 0.1), expected, atol=TOLERANCE
    )


def test_attacks_see_exact_gradients_through_masks(model):
    images, labels = random_data(16)
    masked = tiny_model(masked=True)
    for layer in model.layers:
        if layer.weights:
            masked.get_layer(layer.name).set_weights(layer.get_weights())
    # The check is sensitive: masks active (training=True) change the gradients.
    x = tf.constant(images)

    def input_gradient(network, training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = keras.losses.sparse_categorical_crossentropy(
                labels, network(x, training=training), from_logits=True
            )
        return tape.gradient(loss, x).numpy()

    assert not np.allclose(input_gradient(masked, True), input_gradient(model, True))
    for attack in ATTACKS:
        np.testing.assert_array_equal(
            perturb(masked, images, labels, attack, 0.1, pgd_steps=2),
            perturb(model, images, labels, attack, 0.1, pgd_steps=2),
            err_msg=attack,
        )


def test_pgd_random_start_follows_the_seed(model):
    images, labels = random_data(16)
    first, again, other = (
        perturb(model, images, labels, "pgd", 0.1, pgd_steps=2, seed=seed)
        for seed in (0, 0, 1)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_results_have_the_documented_shape(model):
    images, labels = random_data(10)
    results = evaluate_adversarial(
        model,
        (images, labels),
        attacks=("fgsm", "pgd"),
        eps=(0.01, 0.1),
        pgd_steps=2,
        batch_size=4,  # 4 + 4 + 2: the last batch is short.
        seed=3,
    )
    assert json.loads(json.dumps(results)) == results
    assert set(results) == {"clean_accuracy", "num_examples", "attacks", "settings"}
    assert results["num_examples"] == 10
    assert results["clean_accuracy"] == accuracy(model, images, labels)
    assert list(results["attacks"]) == ["fgsm", "pgd"]
    for by_eps in results["attacks"].values():
        assert list(by_eps) == ["0.01", "0.1"]
        assert all(0.0 <= value <= 1.0 for value in by_eps.values())
    # FGSM is deterministic: the counted accuracy is that of its images.
    fgsm_images = perturb(model, images, labels, "fgsm", 0.1)
    assert results["attacks"]["fgsm"]["0.1"] == accuracy(model, fgsm_images, labels)
    settings = results["settings"]
    expected = {
        "attacks": ["fgsm", "pgd"],
        "eps": [0.01, 0.1],
        "pgd_steps": 2,
        "pgd_step_size": PGD_STEP_SIZE_RULE,
        "norm": "inf",
        "clip": [0.0, 1.0],
        "rand_init": {"fgsm": False, "pgd": True},
        "targeted": False,
        "seed": 3,
        "batch_size": 4,
    }
    assert {key: settings[key] for key in expected} == expected
    assert "exact" in settings["gradients"] and "inactive" in settings["masks"]
    versions = settings["library_versions"]
    assert versions["cleverhans"] == importlib.metadata.version("cleverhans")
    assert {"tensorflow", "keras", "numpy"} <= set(versions)


def test_eps_keys_and_a_fixed_step_are_recorded(model):
    images, labels = random_data(4)
    results = evaluate_adversarial(
        model,
        (images, labels),
        attacks="fgsm",
        eps=[0.1, 0.10, 1e-5],
        pgd_step_size=0.02,
    )
    assert list(results["attacks"]["fgsm"]) == ["0.1", "1e-05"]
    assert results["settings"]["eps"] == [0.1, 1e-5]
    assert results["settings"]["pgd_step_size"] == 0.02


@pytest.mark.parametrize(
    "arguments,message",
    [
        (dict(attacks=["fgsm", "cw"]), "fgsm, pgd, bim, mim. Received: attacks='cw'"),
        (dict(attacks=[]), "fgsm, pgd, bim, mim. Received: attacks=\\[\\]"),
        (dict(eps=[0.1, -0.01]), "eps=-0.01"),
        (dict(eps=[float("nan")]), "eps=nan"),
        (dict(pgd_steps=0), "pgd_steps=0"),
        (dict(pgd_step_size=0.0), "pgd_step_size=0.0"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_invalid_options_fail_with_a_message(model, arguments, message):
    images, labels = random_data(4)
    with pytest.raises(ValueError, match=message):
        evaluate_adversarial(model, (images, labels), **arguments)


def test_invalid_data_fails_with_a_message(model):
    images, labels = random_data(4)
    with pytest.raises(ValueError, match="divide by 255"):
        evaluate_adversarial(model, (images * 255, labels))
    with pytest.raises(ValueError, match=r"\[0, 2\] .* Received: labels='labels in \[5, 7\]'"):
        evaluate_adversarial(model, (images, labels + 5))
    with pytest.raises(ValueError, match="not one-hot"):
        evaluate_adversarial(model, (images, np.eye(3)[labels]))
    with pytest.raises(ValueError, match="`data`: expected a pair"):
        evaluate_adversarial(model, images)
    with pytest.raises(ValueError, match="3 labels for 4 images"):
        perturb(model, images, labels[:3], "fgsm", 0.1)
    message = "fgsm, pgd, bim, mim. Received: attack='deepfool'"
    with pytest.raises(ValueError, match=message):
        perturb(model, images, labels, "deepfool", 0.1)


def mixed_precision_model():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        return tiny_model()
    finally:
        keras.config.set_dtype_policy(policy)


def test_mixed_precision_model_is_attacked_in_float32():
    images, labels = random_data(8)
    model = mixed_precision_model()
    assert model.output.dtype == "float16"
    for attack in ("fgsm", "pgd"):
        adversarial_images = perturb(model, images, labels, attack, 0.1, pgd_steps=2)
        assert adversarial_images.dtype == np.float32
        assert np.max(np.abs(adversarial_images - images)) <= 0.1 + TOLERANCE
        assert np.max(np.abs(adversarial_images - images)) >= 0.05


def test_logits_reach_the_attack_as_float32():
    model = mixed_precision_model()
    logits = adversarial._logits_fn(model)(tf.constant(random_data(2)[0]))
    assert logits.dtype == tf.float32
