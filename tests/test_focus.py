"""Foreground focus on hand-made maps: the share of each map's mass on the object."""

import numpy as np
import pytest

from eval import focus


def test_foreground_focus_of_hand_made_maps():
    images = np.zeros((3, 4, 4, 3), np.float32)
    images[:, :, :2, 1] = 0.5  # The left half is object (one channel > 0 counts).
    on_object = np.zeros((4, 4))
    on_object[1, 0] = 2.0
    on_background = np.zeros((4, 4))
    on_background[:, 3] = 1.0
    uniform = np.ones((4, 4))
    maps = np.stack([on_object, on_background, uniform])
    np.testing.assert_allclose(focus.foreground_focus(maps, images), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(focus.object_share(images), [0.5, 0.5, 0.5])
    split = np.zeros((4, 4))
    split[0, 0], split[0, 3] = 3.0, 1.0
    assert focus.foreground_focus(split[None], images[:1])[0] == pytest.approx(0.75)


def test_all_zero_maps_have_no_focus_and_negative_ones_are_refused():
    images = np.ones((2, 4, 4, 1), np.float32)
    assert np.all(np.isnan(focus.foreground_focus(np.zeros((2, 4, 4)), images)))
    with pytest.raises(ValueError, match="non-negative"):
        focus.foreground_focus(-np.ones((2, 4, 4)), images)
    with pytest.raises(ValueError, match="matching the images"):
        focus.foreground_focus(np.ones((2, 3, 4)), images)


def test_summary_leaves_out_the_maps_without_focus_and_counts_them():
    images = np.zeros((3, 4, 4, 1), np.float32)
    images[:, :, :2] = 1.0
    left = np.zeros((4, 4))
    left[:, 0] = 1.0
    maps = {"a": np.stack([left, np.ones((4, 4)), np.zeros((4, 4))]), "b": np.zeros((3, 4, 4))}
    summary = focus.summary(maps, images)
    assert summary["foreground_focus"] == {"a": pytest.approx(0.75), "b": None}
    assert summary["foreground_focus_std"] == {"a": pytest.approx(0.25), "b": None}
    assert summary["num_excluded"] == {"a": 1, "b": 3}
