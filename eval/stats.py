"""Paired statistics of a study (METHOD.md section 5): intervals, verdicts, power.

Arms are paired by seed: every arm of one seed saw the same data, initial weights and
data order, so a rule is judged by its per-seed differences to the baseline (`none`)
and to its matched control. For a primary (rule, metric, direction) pair:

- two one-sided paired t-tests in the claimed direction, against `none` and against
  the control; the pair's p-value is the larger of the two (both must hold);
- Holm-Bonferroni over the regime's primary pairs, family-wise level 0.05 (a pair
  declared but not measured counts with p = 1);
- **better** where the adjusted p-value is below the level; **worse** where the
  opposite one-sided test against `none`, adjusted the same way, is; otherwise
  **no difference detected**, reported with the smallest difference the design detects
  with 80% power at the Holm-adjusted level of the family's first step (level / m),
  from the observed spread of the paired differences.

Everything else is secondary: mean differences with unadjusted 95% t-intervals,
never a verdict.

References:
  Holm, "A simple sequentially rejective multiple test procedure", Scandinavian
  Journal of Statistics 6(2), 1979.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize, stats

from gradmask_tf.errors import invalid

LEVEL = 0.05
POWER = 0.8
DIRECTIONS = ("higher", "lower")
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference detected"


@dataclasses.dataclass(frozen=True)
class Difference:
    """The paired differences `a - b` of one metric: mean, spread and 95% t-interval."""

    mean: float
    std: float
    num_pairs: int
    low: float
    high: float


def paired_differences(a, b):
    """Per-seed differences `a - b` of two arms; both map seed -> value.

    Only seeds present in both count. Raises ValueError when fewer than two pairs.
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise invalid("seeds", "at least two seeds present in both arms", seeds)
    return np.array([a[seed] - b[seed] for seed in seeds], dtype=np.float64)


def describe(differences, confidence=0.95):
    """Mean, standard deviation (ddof 1) and two-sided t-interval of the differences."""
    differences = np.asarray(differences, np.float64)
    count = len(differences)
    mean = float(differences.mean())
    std = float(differences.std(ddof=1))
    half = stats.t.ppf(0.5 + confidence / 2, count - 1) * std / math.sqrt(count)
    return Difference(mean, std, count, mean - half, mean + half)


def one_sided_p(differences, direction):
    """p-value of a one-sided paired t-test that the mean difference lies in `direction`.

    `direction` is "higher" (H1: mean > 0) or "lower" (H1: mean < 0). With no spread,
    the p-value is 0 where every difference lies in the direction and 1 otherwise.
    """
    if direction not in DIRECTIONS:
        raise invalid("direction", f"one of {', '.join(DIRECTIONS)}", direction)
    differences = np.asarray(differences, np.float64)
    sign = 1.0 if direction == "higher" else -1.0
    mean, std, count = differences.mean(), differences.std(ddof=1), len(differences)
    if std == 0:
        return 0.0 if sign * mean > 0 else 1.0
    statistic = sign * mean / (std / math.sqrt(count))
    return float(stats.t.sf(statistic, count - 1))


def holm(p_values):
    """Holm-Bonferroni adjusted p-values, in the order given."""
    p_values = np.asarray(p_values, np.float64)
    count = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(count)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def detectable_difference(std, num_pairs, level, power=POWER):
    """Smallest true mean difference a one-sided paired t-test finds with `power`.

    Exact, from the noncentral t distribution, for differences of standard deviation
    `std` over `num_pairs` pairs at significance `level`. 0 where `std` is 0.
    """
    if std == 0:
        return 0.0
    freedom = num_pairs - 1
    critical = stats.t.ppf(1 - level, freedom)

    def shortfall(noncentrality):
        return stats.nct.sf(critical, freedom, noncentrality) - power

    noncentrality = optimize.brentq(shortfall, 0.0, 100.0)
    return float(noncentrality * std / math.sqrt(num_pairs))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judgement of one primary (rule, metric, direction) pair."""

    rule: str
    metric: str
    direction: str
    versus_none: Difference
    versus_control: Difference
    p_value: float  # the larger of the two one-sided p-values, before adjustment
    adjusted_p_value: float
    worse_adjusted_p_value: float
    verdict: str
    detectable: float  # smallest difference the design detects (80% power)


def judge(primaries, level=LEVEL, power=POWER, family_size=None):
    """Verdicts of a regime's primary pairs, Holm-adjusted together.

    Args:
      primaries: A list of dicts with `rule`, `metric`, `direction` ("higher" or
        "lower" is better), and `rule_values`, `none_values`, `control_values`
        (each mapping seed -> the metric's value).
      level: The family-wise significance level. Defaults to 0.05.
      power: The power at which the detectable difference is reported.
      family_size: How many primary pairs were declared, at least `len(primaries)`.
        Those declared but not measured count in the adjustment with p = 1, so a
        missing pair never makes the others easier to pass. Defaults to None
        (`len(primaries)`).

    Returns:
      A list of `Verdict`, in the order given.

    Raises:
      ValueError: If `family_size` is below the number of pairs given.
    """
    family_size = len(primaries) if family_size is None else family_size
    if family_size < len(primaries):
        raise invalid("family_size", f"at least the {len(primaries)} pairs given", family_size)
    if not primaries:
        return []
    rows = []
    for pair in primaries:
        to_none = paired_differences(pair["rule_values"], pair["none_values"])
        to_control = paired_differences(pair["rule_values"], pair["control_values"])
        opposite = "lower" if pair["direction"] == "higher" else "higher"
        rows.append(
            (
                pair,
                to_none,
                to_control,
                max(one_sided_p(to_none, pair["direction"]),
                    one_sided_p(to_control, pair["direction"])),
                one_sided_p(to_none, opposite),
            )
        )
    unmeasured = [1.0] * (family_size - len(rows))
    adjusted = holm([row[3] for row in rows] + unmeasured)[: len(rows)]
    adjusted_worse = holm([row[4] for row in rows] + unmeasured)[: len(rows)]
    first_step_level = level / family_size
    verdicts = []
    for (pair, to_none, to_control, p_value, _), better_p, worse_p in zip(
        rows, adjusted, adjusted_worse
    ):
        if better_p < level:
            verdict = BETTER
        elif worse_p < level:
            verdict = WORSE
        else:
            verdict = NO_DIFFERENCE
        detectable = max(
            detectable_difference(np.std(d, ddof=1), len(d), first_step_level, power)
            for d in (to_none, to_control)
        )
        verdicts.append(
            Verdict(
                rule=pair["rule"],
                metric=pair["metric"],
                direction=pair["direction"],
                versus_none=describe(to_none),
                versus_control=describe(to_control),
                p_value=p_value,
                adjusted_p_value=float(better_p),
                worse_adjusted_p_value=float(worse_p),
                verdict=verdict,
                detectable=detectable,
            )
        )
    return verdicts
