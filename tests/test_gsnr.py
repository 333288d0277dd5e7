"""The `quality` evaluation: GSNR on a probe batch, with its settings and logged curve."""

import keras
import numpy as np
import pytest

from eval.gsnr import evaluate_gsnr
from gradmask_tf import quality


def test_evaluate_gsnr_records_settings_errors_and_the_logged_curve():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="logits")])
    rng = np.random.default_rng(5)
    data = (rng.random((16, 4)).astype("float32"), rng.integers(0, 3, 16))
    history = [{"epoch": 1, "gsnr": 0.5}, {"epoch": 2, "gsnr": float("nan")}, {"epoch": 3}]
    result = evaluate_gsnr(model, data, num_micro_batches=4, history=history)
    expected = quality.gsnr(model, *data, num_micro_batches=4)
    for name in ("gsnr", "gsnr_standard_error", "gsnr_mean_of_layer_medians",
                 "gsnr_mean_of_layer_medians_standard_error"):
        assert result[name] == pytest.approx(expected[name])
    assert (result["num_examples"], result["micro_batches"], result["micro_batch_size"]) == (16, 4, 4)
    assert set(result["per_layer"]) == set(result["per_layer_mean"]) == {"logits"}
    assert result["per_layer_share_without_gradient"] == {"logits": 0.0}
    assert result["training_curve"] == {"1": 0.5}  # Epochs without a finite GSNR left out.
    settings = result["settings"]
    assert "(mu^2 - s2 / m) / (b * s2)" in settings["estimator"]
    assert "jackknife" in settings["standard_error"] and "secondary" in settings["role"]
    assert settings["masks"].startswith("active")
    assert {"python", "tensorflow", "keras", "numpy", "gradmask_tf"} <= set(
        settings["library_versions"]
    )
    assert "training_curve" not in evaluate_gsnr(model, data, num_micro_batches=4)


def test_evaluate_gsnr_writes_none_where_no_parameter_has_a_gsnr():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="linear")(inputs))
    data = (np.zeros((8, 2), np.float32), np.zeros(8))
    result = evaluate_gsnr(model, data, num_micro_batches=2)
    assert result["share_without_gradient"] == 1.0
    assert result["gsnr"] is None and result["per_layer"] == {"linear": None}
