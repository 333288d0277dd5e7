"""`.keras` files saved by every earlier layout of `GradientMask` load and predict the same.

tests/fixtures holds one tiny model (a conv and a dense mask point, the first one
disabled) per layout, each saved by the code of its time with the inputs' predictions
beside it: `v1_scalar_probe` by the commit before 53ee5e4 (a scalar gradient probe),
`v2_pair_probe` by today's code (the `[kept_fraction, kept_l1]` probe), which guards
the next change of the layer's saved state. On both backends: tests/test_jax_half.py
runs this file on JAX too.
"""

import pathlib

import keras
import numpy as np
import pytest

import gradmask_tf  # noqa: F401  (registers the layer)
from gradmask_tf.layers import GradientMask

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
LAYOUTS = ("mask_layout_v1_scalar_probe", "mask_layout_v2_pair_probe")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_saved_layout_loads_and_predicts_the_same(layout):
    model = keras.models.load_model(FIXTURES / f"{layout}.keras", safe_mode=True)
    images = np.random.default_rng(0).random((5, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(model.predict(images, verbose=0),
                               np.load(FIXTURES / f"{layout}.npy"), rtol=1e-6, atol=1e-7)
    masks = [layer for layer in model.layers if isinstance(layer, GradientMask)]
    assert [bool(layer.enabled.numpy()) for layer in masks] == [False, True]
    assert all(tuple(layer.gradient_probe.shape) == (2,) for layer in masks)
