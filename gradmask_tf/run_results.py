"""The end of a training run: its regime files, final evaluation, model files and
`metrics.json` (METHOD.md section 6 for the regime's keys)."""

from gradmask_tf import data, runs
from gradmask_tf.callbacks import accuracy, best_epoch, predicted_classes
from gradmask_tf.training import MASK_METRIC_PREFIXES

LABEL_NOISE = "label_noise.json"  # the flipped examples: index, true, noisy label, part
SPLIT = "split.json"  # the original indices of the training and validation parts
BEST_WEIGHTS = "best.weights.h5"  # the weights of the best validation epoch


def write_regime(run_dir, regime, label_noise):
    """The validation and training parts' original indices, and the flipped labels."""
    if regime is None:
        return
    runs.atomic_write_json(
        run_dir / SPLIT,
        {
            "train_indices": regime.train_indices.tolist(),
            "validation_indices": regime.validation_indices.tolist(),
        },
    )
    if label_noise:
        runs.atomic_write_json(run_dir / LABEL_NOISE, regime.noise_records())


def regime_metrics(prepared, model, history_rows):
    """metrics.json's regime keys; the test accuracies are reported, never used to
    choose anything."""
    config, loaded = prepared.config, prepared.loaded
    metrics = {}
    if config.evaluates_each_epoch:
        end = [row["test_accuracy"] for row in history_rows[-3:]]
        metrics["test_accuracy_end"] = float(sum(end) / len(end))
    if loaded.validation is not None:
        epoch, value = best_epoch(history_rows)
        best = prepared.model()
        best.optimizer.build(best.trainable_variables)  # as saved with the weights
        best.load_weights(prepared.run_dir / BEST_WEIGHTS)
        metrics.update(
            best_validation_epoch=epoch,
            best_validation_accuracy=value,
            test_accuracy_best_validation=accuracy(best, loaded.test),
        )
    if config.label_noise:
        regime = loaded.regime
        memorisation, clean = data.noise_metrics(
            predicted_classes(model, loaded.train_eval),
            regime.train_true_labels,
            regime.train_labels,
        )
        metrics.update(memorisation=memorisation, clean_train_accuracy=clean)
    return metrics


def finalize(prepared, model, history_rows, train_seconds):
    """Evaluates on the test split, then writes the model, its export and metrics.json;
    returns the metrics."""
    config, run_dir, loaded = prepared.config, prepared.run_dir, prepared.loaded
    loss, test_accuracy = model.evaluate(loaded.test, verbose=0, return_dict=False)
    runs.save_keras_model(model, run_dir / runs.MODEL)
    runs.export_saved_model(model, run_dir / runs.SAVED_MODEL, loaded.info.image_shape)
    epoch_seconds = [row["epoch_seconds"] for row in history_rows]
    metrics = {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(loss),
        "num_test_examples": int(sum(1 for _ in loaded.test.unbatch())),
        "epochs": config.epochs,
        "train_seconds": train_seconds,
        "mean_epoch_seconds": float(sum(epoch_seconds) / max(len(epoch_seconds), 1)),
        "mask_rule": config.mask_rule,
        "seed": config.seed,
    }
    last = history_rows[-1] if history_rows else {}
    metrics.update(
        {key: value for key, value in last.items() if key.startswith(MASK_METRIC_PREFIXES)})
    metrics.update(regime_metrics(prepared, model, history_rows))
    runs.atomic_write_json(run_dir / runs.METRICS, metrics)
    print(
        f"Done: test accuracy {test_accuracy:.4f}, loss {loss:.4f}, "
        f"{train_seconds:.0f}s training ({metrics['mean_epoch_seconds']:.1f}s/epoch); "
        f"run in {run_dir}"
    )
    return metrics
