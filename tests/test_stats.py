"""Paired statistics (eval/stats.py) on synthetic result sets whose verdict is known."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from eval import stats

SEEDS = range(5)


def _arm(values):
    return dict(zip(SEEDS, values))


# Seed effects shared by every arm (the pairing removes them), plus small noise.
_SEED_EFFECT = np.array([0.00, 0.02, -0.015, 0.01, -0.005])
_NOISE = np.array([0.001, -0.002, 0.0015, -0.001, 0.0005])


def _pair(rule_shift, control_shift, metric="test_accuracy", direction="higher"):
    base = 0.80 + _SEED_EFFECT
    return {
        "rule": "mean",
        "metric": metric,
        "direction": direction,
        "rule_values": _arm(base + rule_shift + _NOISE),
        "none_values": _arm(base),
        "control_values": _arm(base + control_shift - _NOISE[::-1]),
    }


def test_a_clear_gain_is_better():
    (verdict,) = stats.judge([_pair(rule_shift=0.03, control_shift=0.0)])
    assert verdict.verdict == stats.BETTER
    assert verdict.versus_none.low > 0 and verdict.versus_control.low > 0


def test_a_null_is_no_difference_with_its_detectable_size():
    (verdict,) = stats.judge([_pair(rule_shift=0.0, control_shift=0.0)])
    assert verdict.verdict == stats.NO_DIFFERENCE
    assert verdict.versus_none.low < 0 < verdict.versus_none.high
    # The paired spread is about 0.0015: five seeds detect a few thousandths, not less.
    assert 0.001 < verdict.detectable < 0.02


def test_a_gain_against_none_only_is_not_a_win():
    # The control gains as much as the rule: what the rule knows adds nothing.
    (verdict,) = stats.judge([_pair(rule_shift=0.03, control_shift=0.03)])
    assert verdict.versus_none.low > 0
    assert verdict.verdict == stats.NO_DIFFERENCE


def test_a_loss_is_worse():
    (verdict,) = stats.judge([_pair(rule_shift=-0.03, control_shift=0.0)])
    assert verdict.verdict == stats.WORSE


def test_lower_is_better_metrics_are_judged_in_their_direction():
    (verdict,) = stats.judge([_pair(-0.03, 0.0, metric="memorisation", direction="lower")])
    assert verdict.verdict == stats.BETTER


def test_holm_adjusts_across_the_regimes_primaries():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    # A gain that clears 0.05 alone but not after adjustment over three pairs.
    lone = _pair(rule_shift=0.003, control_shift=0.0)
    (alone,) = stats.judge([lone])
    family = stats.judge([lone, _pair(0.0, 0.0), _pair(0.0, 0.0)])
    assert alone.p_value < 0.05 and alone.verdict == stats.BETTER
    assert family[0].adjusted_p_value > 0.05 and family[0].verdict == stats.NO_DIFFERENCE


def test_p_values_and_intervals_match_scipy():
    rng = np.random.default_rng(0)
    differences = rng.normal(0.01, 0.02, 7)
    expected = scipy_stats.ttest_1samp(differences, 0.0, alternative="greater").pvalue
    assert stats.one_sided_p(differences, "higher") == pytest.approx(expected)
    assert stats.one_sided_p(differences, "lower") == pytest.approx(1 - expected)
    interval = scipy_stats.t.interval(
        0.95, 6, loc=differences.mean(), scale=scipy_stats.sem(differences)
    )
    described = stats.describe(differences)
    assert (described.low, described.high) == pytest.approx(interval)


def test_detectable_difference_approaches_the_normal_formula():
    normal = (scipy_stats.norm.ppf(0.95) + scipy_stats.norm.ppf(0.8)) / math.sqrt(2000)
    assert stats.detectable_difference(1.0, 2000, 0.05) == pytest.approx(normal, rel=0.01)
    # Few pairs: the t distribution's tails ask for more.
    assert stats.detectable_difference(1.0, 5, 0.05) > 1.15 * (
        (scipy_stats.norm.ppf(0.95) + scipy_stats.norm.ppf(0.8)) / math.sqrt(5)
    )


def test_pairs_need_two_shared_seeds():
    with pytest.raises(ValueError, match="seeds"):
        stats.paired_differences({0: 1.0, 1: 2.0}, {1: 1.0, 2: 2.0})


def test_a_declared_pair_not_measured_still_counts_in_the_family():
    lone = _pair(rule_shift=0.003, control_shift=0.0)
    (alone,) = stats.judge([lone])
    (declared_three,) = stats.judge([lone], family_size=3)
    assert declared_three.adjusted_p_value == pytest.approx(min(1.0, 3 * alone.p_value))
    assert declared_three.verdict == stats.NO_DIFFERENCE
    assert declared_three.detectable > alone.detectable  # tested at 0.05 / 3
    with pytest.raises(ValueError, match="family_size"):
        stats.judge([lone, lone], family_size=1)
