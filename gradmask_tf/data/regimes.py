"""Data regimes: subset, validation hold-out, label noise (METHOD.md section 6).

Plain NumPy, on the labels of a training split. Each data step draws from its own
stream, a function of the run's seed only: every arm of one seed (whatever its mask
rule) sees the same subset, split and noise. `noise_metrics` measures, on a noisy
training part, how much of the noise a model has learned.
"""

import dataclasses

import numpy as np

from gradmask_tf.errors import invalid

# The purposes of the data steps' streams.
_SUBSET_DRAWS = 11
_VALIDATION_DRAWS = 12
_NOISE_DRAWS = 13


@dataclasses.dataclass(frozen=True)
class Regime:
    """The data steps' outcome; every index refers to the original training split.

    Attributes:
        train_indices: The training part, ascending.
        train_labels: Its labels, noisy where flipped.
        validation_indices: The validation part, ascending (empty without one).
        validation_labels: Its labels, noisy where flipped.
        train_true_labels: The original labels of the training part.
        validation_true_labels: The original labels of the validation part.
    """

    train_indices: np.ndarray
    train_labels: np.ndarray
    validation_indices: np.ndarray
    validation_labels: np.ndarray
    train_true_labels: np.ndarray
    validation_true_labels: np.ndarray

    @property
    def train_flipped(self):
        """Boolean mask over the training part: the examples whose label was flipped."""
        return self.train_labels != self.train_true_labels

    def noise_records(self):
        """One dict per flipped example: index, true and noisy label, part."""
        records = []
        for part, indices, labels, true in (
            ("train", self.train_indices, self.train_labels, self.train_true_labels),
            ("validation", self.validation_indices, self.validation_labels,
             self.validation_true_labels),
        ):
            for index, label, true_label in zip(indices, labels, true):
                if label != true_label:
                    records.append(
                        {"index": int(index), "true_label": int(true_label),
                         "noisy_label": int(label), "part": part}
                    )
        return records


def _stream(seed, purpose):
    return np.random.default_rng([int(seed), purpose])


def _stratified_count(counts, fraction, rng):
    """Per class, how many to hold out: round(fraction * total) in all, shared by
    largest remainder (ties drawn), so each class gives its share."""
    quotas = fraction * counts.astype(np.float64)
    taken = np.floor(quotas).astype(np.int64)
    remaining = int(round(fraction * counts.sum())) - int(taken.sum())
    if remaining > 0:
        remainders = quotas - taken
        tie_break = rng.random(len(counts))
        order = np.lexsort((tie_break, -remainders))
        taken[order[:remaining]] += 1
    return taken


def _flip(labels, rate, num_classes, rng):
    """Exactly round(rate * n) labels, drawn without replacement, each replaced by a
    uniformly drawn different label."""
    labels = labels.copy()
    count = int(round(rate * len(labels)))
    if count:
        chosen = rng.choice(len(labels), size=count, replace=False)
        shift = rng.integers(1, num_classes, size=count)
        labels[chosen] = (labels[chosen] + shift) % num_classes
    return labels


def _subset(labels, num_classes, seed, max_examples, examples_per_class):
    """Step (1): the ascending indices of the subset."""
    if examples_per_class:
        subset_rng = _stream(seed, _SUBSET_DRAWS)
        chosen = []
        for label in range(num_classes):
            members = np.flatnonzero(labels == label)
            if len(members) < examples_per_class:
                raise ValueError(
                    f"examples_per_class={examples_per_class}: class {label} has only "
                    f"{len(members)} training examples"
                )
            chosen.append(subset_rng.choice(members, size=examples_per_class, replace=False))
        return np.sort(np.concatenate(chosen))
    if max_examples and max_examples < len(labels):
        subset_rng = _stream(seed, _SUBSET_DRAWS)
        return np.sort(subset_rng.choice(len(labels), size=max_examples, replace=False))
    return np.arange(len(labels))


def _held_out(subset_labels, seed, validation_fraction):
    """Step (2): a boolean mask over the subset, true where held out for validation."""
    held_out = np.zeros(len(subset_labels), bool)
    if validation_fraction:
        validation_rng = _stream(seed, _VALIDATION_DRAWS)
        classes = np.unique(subset_labels)
        counts = np.array([np.sum(subset_labels == c) for c in classes])
        for label, count in zip(classes, _stratified_count(counts, validation_fraction, validation_rng)):
            members = np.flatnonzero(subset_labels == label)
            held_out[validation_rng.choice(members, size=count, replace=False)] = True
        if not held_out.any():
            raise ValueError(
                f"validation_fraction={validation_fraction} of {len(subset_labels)} "
                "examples holds out none"
            )
    return held_out


def regime(
    labels,
    *,
    num_classes,
    seed,
    max_examples=0,
    examples_per_class=0,
    validation_fraction=0.0,
    label_noise=0.0,
):
    """The data steps of METHOD.md section 6, in order, from the labels of a split.

    (1) the subset: `max_examples` drawn uniformly without replacement, or
    `examples_per_class` drawn per class (balanced); (2) the validation hold-out:
    `validation_fraction` of the subset, stratified by class (round(fraction * n) in
    all); (3) the label noise: exactly round(label_noise * n) examples of each part get
    a uniformly drawn different label. Each step draws from its own stream keyed by
    `seed` alone.

    Args:
        labels: Integer labels of the whole original training split.
        num_classes: Number of label values.
        seed: The run's seed.
        max_examples: Draw N (0, or N at least the split's size: all). Exclusive with
            `examples_per_class`.
        examples_per_class: Draw N of each class (0: off).
        validation_fraction: Share of the subset held out, in [0, 1).
        label_noise: Share of each part relabelled, in [0, 1).

    Returns:
        A `Regime`.

    Raises:
        ValueError: If an option is out of range, a class has fewer than
            `examples_per_class` examples, or a part would be empty.
    """
    labels = np.asarray(labels).astype(np.int64)
    if max_examples and examples_per_class:
        raise ValueError("max_examples and examples_per_class are exclusive")
    if not 0 <= validation_fraction < 1:
        raise invalid("validation_fraction", "a number in [0, 1)", validation_fraction)
    if not 0 <= label_noise < 1:
        raise invalid("label_noise", "a number in [0, 1)", label_noise)
    subset = _subset(labels, num_classes, seed, max_examples, examples_per_class)
    held_out = _held_out(labels[subset], seed, validation_fraction)
    train_indices, validation_indices = subset[~held_out], subset[held_out]
    if len(train_indices) == 0:
        raise ValueError("no training examples are left")
    # (3) The label noise, in each part.
    noise_rng = _stream(seed, _NOISE_DRAWS)
    train_true, validation_true = labels[train_indices], labels[validation_indices]
    train_labels = _flip(train_true, label_noise, num_classes, noise_rng)
    validation_labels = _flip(validation_true, label_noise, num_classes, noise_rng)
    return Regime(
        train_indices=train_indices,
        train_labels=train_labels,
        validation_indices=validation_indices,
        validation_labels=validation_labels,
        train_true_labels=train_true,
        validation_true_labels=validation_true,
    )


def noise_metrics(predictions, true_labels, noisy_labels):
    """`(memorisation, clean_accuracy)` of predicted classes on a noisy training part.

    memorisation: the share of the flipped examples whose noisy label is predicted;
    clean_accuracy: the accuracy on the correctly labelled examples. Each is None where
    its set is empty.
    """
    predictions = np.asarray(predictions)
    true_labels, noisy_labels = np.asarray(true_labels), np.asarray(noisy_labels)
    flipped = noisy_labels != true_labels
    memorisation = float(np.mean(predictions[flipped] == noisy_labels[flipped])) if flipped.any() else None
    clean = ~flipped
    clean_accuracy = float(np.mean(predictions[clean] == true_labels[clean])) if clean.any() else None
    return memorisation, clean_accuracy
