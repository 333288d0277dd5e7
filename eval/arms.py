"""The arms of a study: runs grouped by configuration, paired by seed, primaries judged.

An *arm* is the runs of one configuration: all flags but the seed, `mask_control`
telling a rule's matched control from the rule. Arms are paired by seed (METHOD.md
section 5): a masked rule (not `none` or `random`, not a control) is compared with the
`none` arm of the same data, model and budget and with its matched control (the same
flags and `mask_control`). A *primary* is a (rule, metric, direction) comparison
declared before the runs, at most three per regime; only primaries get a verdict
(`eval.stats.judge`).
"""

import dataclasses
import json
import re

import numpy as np

from eval import stats

BASELINE = "none"
# Rules that mask nothing or nothing chosen: no matched control, never judged.
UNMASKED = ("none", "random")
MAX_PRIMARIES = 3
# Flags that do not change what a run measures: runs differing only in these group.
NOT_CONFIGURATION = {
    "seed", "output_dir", "overwrite", "data_dir", "num_cpu_devices", "mask_metrics_every"
}


@dataclasses.dataclass
class Arm:
    """The runs of one configuration, one per seed, and what each measured."""

    label: str
    configuration: dict  # the flags that define the arm, `mask_control` included
    runs: list  # sorted by seed
    measures: dict  # seed -> {metric: value}

    @property
    def rule(self):
        return self.configuration.get("mask_rule", "?")

    @property
    def control(self):
        return self.configuration["mask_control"]

    @property
    def masked(self):
        """A masked rule: judged against `none` and its matched control."""
        return not self.control and self.rule not in UNMASKED

    def values(self, metric):
        """`{seed: value}` of one metric, finite values only."""
        values = {seed: measured.get(metric) for seed, measured in self.measures.items()}
        return {seed: v for seed, v in values.items() if v is not None and np.isfinite(v)}


def group_runs(runs, measure):
    """The arms: runs grouped by configuration (all flags but the seed), in given order.

    An arm is labelled by its rule, "control" for a matched control, and the flags
    that tell it apart from other arms of the same rule.

    Args:
      runs: Objects with `config` (the run's flags), `seed` and `path`.
      measure: A function from a run to `{metric: value}`.

    Returns:
      A list of `Arm`.

    Raises:
      ValueError: If two runs share a configuration and a seed.
    """
    groups = {}
    for run in runs:
        configuration = {k: v for k, v in run.config.items() if k not in NOT_CONFIGURATION}
        configuration["mask_control"] = bool(configuration.get("mask_control", False))
        groups.setdefault(json.dumps(configuration, sort_keys=True), []).append(run)
    configurations = [json.loads(key) for key in groups]
    arms = []
    for configuration, members in zip(configurations, groups.values()):
        by_seed = {}
        for run in members:
            if run.seed in by_seed:
                raise ValueError(
                    f"runs {by_seed[run.seed].path} and {run.path} have the same "
                    f"configuration and seed {run.seed}; give one of them"
                )
            by_seed[run.seed] = run
        members = [by_seed[seed] for seed in sorted(by_seed)]
        arms.append(
            Arm(_label(configuration, configurations), configuration, members,
                {run.seed: measure(run) for run in members})
        )
    return arms


def _label(configuration, configurations):
    rule, control = configuration.get("mask_rule", "?"), configuration["mask_control"]
    siblings = [
        c for c in configurations if c.get("mask_rule") == rule and c["mask_control"] == control
    ]
    varying = sorted(
        name
        for name in set().union(*siblings) - {"mask_control"}
        if len({json.dumps(c.get(name)) for c in siblings}) > 1
    )
    extra = [f"{name}={configuration.get(name)}" for name in varying]
    return rule + (" control" if control else "") + (f" ({', '.join(extra)})" if extra else "")


def flags_but_mask(configuration):
    """The flags of a configuration that are not the mask's (`none` ignores those)."""
    return {k: v for k, v in configuration.items() if not k.startswith("mask_")}


def baseline_of(arm, arms):
    """The `none` arm of the same data, model and budget (mask flags do nothing there)."""
    wanted = flags_but_mask(arm.configuration)
    return next(
        (o for o in arms if o.rule == BASELINE and flags_but_mask(o.configuration) == wanted),
        None,
    )


def control_of(arm, arms):
    """The arm's matched control: the same flags and `mask_control`."""
    wanted = {**arm.configuration, "mask_control": True}
    return next((other for other in arms if other.configuration == wanted), None)


def pairings(arms):
    """`[(masked arm, its none arm or None, its control arm or None)]`."""
    return [(arm, baseline_of(arm, arms), control_of(arm, arms)) for arm in arms if arm.masked]


def paired(arm, other, metric):
    """`stats.describe` of `arm - other` by seed, or None under two shared seeds."""
    values, other_values = arm.values(metric), other.values(metric)
    if len(set(values) & set(other_values)) < 2:
        return None
    return stats.describe(stats.paired_differences(values, other_values))


@dataclasses.dataclass(frozen=True)
class Primary:
    """A primary comparison declared before the runs: a rule, a metric, a direction.

    `where` narrows the rule to the arm whose flags have these values (a study with
    several arms of one rule, e.g. two placements and two optimizers); `name` is the
    arm's name in a plan, shown in the report. Written `rule[flag=value;...]:metric:
    direction` on the command line.
    """

    rule: str
    metric: str
    direction: str  # which is better: "higher" or "lower"
    where: tuple = ()  # ((flag, value), ...): the arm's flags
    name: str = None

    def __str__(self):
        return f"{self.name or self.subject}:{self.metric}:{self.direction}"

    @property
    def subject(self):
        """The rule, with the flags that narrow it: `mean[optimizer=sgd]`."""
        if not self.where:
            return self.rule
        return f"{self.rule}[{';'.join(f'{k}={_text(v)}' for k, v in self.where)}]"

    def selects(self, arm):
        """Whether `arm` is this primary's masked arm."""
        return arm.masked and arm.rule == self.rule and all(
            same_value(arm.configuration.get(flag), value) for flag, value in self.where
        )


def _text(value):
    return value.lower() if isinstance(value, str) else json.dumps(value).lower()


def same_value(a, b):
    """Whether two flag values match: `True` and `"true"`, `1`, `1.0` and `"1.0"` do."""
    if isinstance(a, bool) or isinstance(b, bool):  # a bool is no number here
        return _text(a) == _text(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return _text(a) == _text(b)


def parse_primaries(values):
    """`rule:metric:direction` strings (or `Primary`s) as `Primary`s, at most three.

    Raises:
      ValueError: With a one-line message naming the flag `--primary`.
    """
    from gradmask_tf.mask_params import RULES

    masked = [rule for rule in RULES if rule not in UNMASKED]
    values = list(values)
    if len(values) > MAX_PRIMARIES:
        raise ValueError(
            f"flag --primary: at most {MAX_PRIMARIES} primary comparisons per regime "
            f"(METHOD.md section 5); received {len(values)}: {','.join(map(str, values))}"
        )
    primaries = []
    for value in values:
        primary = value if isinstance(value, Primary) else _parse_primary(str(value))
        value = str(value)
        if primary.rule not in masked:
            raise ValueError(
                f"flag --primary: {primary.rule!r} in {value!r} is not a masked rule; "
                f"expected one of {', '.join(masked)}"
            )
        if primary.direction not in stats.DIRECTIONS:
            raise ValueError(
                f"flag --primary: direction {primary.direction!r} in {value!r}; expected "
                f"{' or '.join(stats.DIRECTIONS)} (which is better)"
            )
        if any((p.subject, p.metric) == (primary.subject, primary.metric) for p in primaries):
            raise ValueError(f"flag --primary: {primary.subject}:{primary.metric} is given twice")
        primaries.append(primary)
    return primaries


_SUBJECT = re.compile(r"^([^\[\]]+)(?:\[([^\[\]]*)\])?$")


def _parse_primary(value):
    """`rule:metric:direction` or `rule[flag=value;...]:metric:direction`."""
    parts = [part.strip() for part in value.split(":")]
    match = _SUBJECT.match(parts[0]) if parts else None
    where = []
    if match and match.group(2) is not None:
        for item in match.group(2).split(";"):
            flag, equals, setting = (piece.strip() for piece in item.partition("="))
            if not (flag and equals and setting):
                match = None
                break
            where.append((flag, setting))
    if len(parts) != 3 or not all(parts) or not match or (match.group(2) is not None and not where):
        raise ValueError(
            "flag --primary: expected rule:metric:direction or rule[flag=value;...]:metric:"
            f"direction, e.g. mean:test_accuracy:higher; received {value!r}"
        )
    return Primary(match.group(1).strip(), parts[1], parts[2], tuple(sorted(where)))


def judge_primaries(primaries, arms):
    """`[(primary, Verdict or why it was not measured)]`, Holm over all declared."""
    pairs, outcomes = [], []
    for primary in primaries:
        found = _primary_arms(primary, arms)
        if isinstance(found, str):
            outcomes.append(found)
            continue
        rule, baseline, control = (arm.values(primary.metric) for arm in found)
        pairs.append(
            dict(rule=primary.rule, metric=primary.metric, direction=primary.direction,
                 rule_values=rule, none_values=baseline, control_values=control)
        )
        outcomes.append(None)
    verdicts = iter(stats.judge(pairs, family_size=len(primaries)))
    return [
        (primary, next(verdicts) if outcome is None else outcome)
        for primary, outcome in zip(primaries, outcomes)
    ]


def _primary_arms(primary, arms):
    """The rule, `none` and control arms of a primary, or why it cannot be measured."""
    candidates = [arm for arm in arms if primary.selects(arm)]
    if not candidates:
        return f"not measured: no `{primary.subject}` arm"
    if len(candidates) > 1:
        labels = ", ".join(arm.label for arm in candidates)
        return (
            f"not measured: {len(candidates)} `{primary.subject}` arms ({labels}); "
            "name one: rule[flag=value;...]"
        )
    (rule,) = candidates
    baseline, control = baseline_of(rule, arms), control_of(rule, arms)
    if baseline is None:
        return "not measured: no `none` arm with the same data, model and budget"
    if control is None:
        return "not measured: no matched control arm (`--mask_control`)"
    if not rule.values(primary.metric):
        return f"not measured: the `{rule.label}` runs have no `{primary.metric}`"
    for other in (baseline, control):
        shared = set(rule.values(primary.metric)) & set(other.values(primary.metric))
        if len(shared) < 2:
            return (
                f"not measured: {len(shared)} seed(s) with `{primary.metric}` shared by "
                f"`{rule.label}` and `{other.label}`; pairing needs 2"
            )
    return rule, baseline, control
