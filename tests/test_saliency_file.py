"""The saliency maps file: what `python -m eval` writes and `eval.compare` draws."""

import os

import numpy as np
import pytest

from eval import saliency_file


def test_saved_maps_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((3, 6, 6, 1)).astype(np.float32)
    labels = np.array([0, 2, 1])
    maps = {"saliency": rng.random((3, 6, 6)), "gradcam++": rng.random((3, 6, 6))}
    path = tmp_path / "eval" / saliency_file.FILE_NAME
    saliency_file.save_maps(path, images, labels, maps)
    saved = np.load(path)
    assert sorted(saved.files) == ["gradcam++", "images", "labels", "saliency"]
    np.testing.assert_array_equal(saved["images"], images)
    np.testing.assert_array_equal(saved["labels"], labels)
    assert saved["saliency"].dtype == np.float32
    np.testing.assert_array_equal(saved["saliency"], maps["saliency"].astype(np.float32))
    assert os.listdir(path.parent) == ["saliency_maps.npz"]  # No temporary file left.
    with pytest.raises(ValueError, match="method names"):
        saliency_file.save_maps(path, images, labels, {"gradcam": maps["saliency"]})
