"""The data of a training run: its splits, regime and epochs, from a `RunConfig`."""

import dataclasses

from gradmask_tf import data, quality
from gradmask_tf.config import ConfigError


@dataclasses.dataclass
class RunData:
    """What `load_data` returns: the datasets, the regime (None without one) and the
    steps of an epoch."""

    config: object
    info: object
    train: object
    test: object
    regime: object
    validation: object
    train_eval: object
    steps_per_epoch: int

    def split(self, split, **options):
        """`data.load` of the run's dataset: `split` with `options`."""
        return _load(self.config, split, **options)

    def gsnr_probe(self):
        """A fixed probe: the first examples of the training split, in their order."""
        return data.as_numpy(self.split("train", max_examples=quality.NUM_PROBE_EXAMPLES))


def _load(config, split, **options):
    return data.load(config.dataset, split, data_dir=config.data_dir, **options)


def load_data(config, jit_compile, initial_epoch):
    """A `RunData`; an unusable dataset or regime is a `ConfigError`.

    The training data holds the epochs still to run, epoch e drawn by (seed, e), so a
    resumed run sees the data an uninterrupted one would have. With a regime
    (`examples_per_class`, `validation_fraction`, `label_noise`) the training part, the
    validation part and their labels come from `data.regime`, drawn by the seed alone,
    so every arm of a seed sees the same ones.
    """
    multi_worker = config.strategy == "multi_worker"
    try:
        info = data.info(config.dataset, data_dir=config.data_dir)
        test = _load(config, "test", max_examples=config.max_test_examples or None,
                     batch_size=config.batch_size)
        regime, validation, train_eval, subset = _regime_parts(config, info)
        train = _load(
            config, "train", **subset, shuffle=True, seed=config.seed, augment=config.augment,
            epochs=range(initial_epoch, config.epochs),
            # The multi-worker loop shards and batches per worker itself; XLA
            # recompiles for a smaller last batch, so it gets full batches only.
            batch_size=None if multi_worker else config.batch_size,
            drop_remainder=jit_compile,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if info.image_shape is None or info.num_classes is None:
        raise ConfigError(f"--dataset={config.dataset} is not an image classification dataset")
    if regime is not None:
        num_train = len(regime.train_indices)
    elif info.num_train is not None:
        num_train = info.num_train
    else:  # unknown without reading it: count one epoch's examples
        num_train = sum(1 for _ in _load(config, "train"))
    if multi_worker or jit_compile:
        steps_per_epoch = num_train // config.batch_size
    else:
        steps_per_epoch = -(-num_train // config.batch_size)
    return RunData(config=config, info=info, train=train, test=test, regime=regime,
                   validation=validation, train_eval=train_eval,
                   steps_per_epoch=max(steps_per_epoch, 1))


def _regime_parts(config, info):
    """`(regime, validation, train_eval, subset)`: the regime's draws and datasets, or
    Nones and the whole split (`subset` is `{}`) without one."""
    if not config.uses_regime:
        return None, None, None, {}
    regime = data.regime(
        data.split_labels(config.dataset, "train", data_dir=config.data_dir),
        num_classes=info.num_classes,
        seed=config.seed,
        max_examples=config.max_train_examples,
        examples_per_class=config.examples_per_class,
        validation_fraction=config.validation_fraction,
        label_noise=config.label_noise,
    )
    subset = {"indices": regime.train_indices, "labels": regime.train_labels}
    train_eval = _load(config, "train", batch_size=config.batch_size, **subset)
    validation = None
    if len(regime.validation_indices):
        validation = _load(config, "train", indices=regime.validation_indices,
                           labels=regime.validation_labels, batch_size=config.batch_size)
    return regime, validation, train_eval, subset


__all__ = ["RunData", "load_data"]
