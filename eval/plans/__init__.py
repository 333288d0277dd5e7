"""Study plans: a small JSON file naming a study's arms, regimes, primaries and seeds.

  python -m eval.study --plan=claims                 # eval/plans/claims.json
  python -m eval.study --plan=path/to/plan.json --results_dir=docs/results/plan

A plan (every key but `arms` and `regimes` optional):

  {"notes": "free text: how the learning rates were chosen, ...",
   "seeds": 5,                      # a count (0 .. n-1) or a list of seeds
   "controls": true,                # each masked arm also gets its matched control
   "arms": [{"name": "mean-block-sgd", "rule": "mean",
             "options": {"mask_placement": "block", "optimizer": "sgd"},
             "control": false}],    # a matched control of its own (with controls: false)
   "regimes": [{"name": "noise", "flags": {"label_noise": 0.4, "epochs": 30},
                "arms": ["none", "mean-block-sgd"],   # default: every arm
                "evals": ["quality"],                 # default: every evaluation
                "primary": ["mean-block-sgd:memorisation:lower"]}]}

A primary is `ARM:metric:direction`, ARM a masked arm of the plan (judged against the
`none` arm with the same options, mask options aside, and against ARM's control), or
`rule:metric:direction` where the regime runs one arm of that rule.

`options` and `flags` are train.py flags, which are the fields of
`gradmask_tf.config.RunConfig` (`{"augment": true}` is `--augment`, false
`--noaugment`). Their names are checked here; their values when the study builds each
run's `RunConfig`, before anything runs. With `controls: true` the control of
masked arm `NAME` is the arm `NAME-control`, run wherever `NAME` runs.

Everything is checked before anything runs; a bad plan is one `ValueError` line naming
the file and the key.
"""

import json
import pathlib
import re

from eval import EVALUATIONS
from eval.arms import (
    MAX_PRIMARIES, UNMASKED, Primary, flags_but_mask, parse_primaries, same_value,
)
from gradmask_tf.config import FIELD_NAMES
from gradmask_tf.mask_params import RULES

PLANS = pathlib.Path(__file__).resolve().parent  # the plan files beside this module
# Set by the study for every run: never by a plan.
STUDY_FLAGS = {"mask_rule", "mask_control", "seed", "output_dir", "overwrite", "dataset",
               "model", "data_dir"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_PLAN_KEYS = {"notes", "seeds", "controls", "arms", "regimes"}
_ARM_KEYS = {"name", "rule", "options", "control"}
_REGIME_KEYS = {"name", "flags", "arms", "evals", "primary", "notes"}


def resolve(name):
    """The plan file of `--plan=NAME`: eval/plans/NAME.json, or a path to a .json file."""
    if name.endswith(".json"):
        return pathlib.Path(name)
    return PLANS / f"{name}.json"


def flag_arguments(values):
    """`{"augment": True, "epochs": 3}` as `["--augment", "--epochs=3"]`."""
    arguments = []
    for name, value in values.items():
        if isinstance(value, bool):
            arguments.append(f"--{'' if value else 'no'}{name}")
        elif isinstance(value, list):
            arguments.append(f"--{name}={','.join(str(v) for v in value)}")
        else:
            arguments.append(f"--{name}={value}")
    return arguments


def load(name):
    """Reads and checks a plan; returns it expanded (see `check`).

    Raises:
      ValueError: One line naming the file and the bad key.
    """
    path = resolve(name)
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PLANS.glob("*.json")))
        raise ValueError(f"flag --plan: no plan {path} (in eval/plans: {available})")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"plan {path}: not JSON: {error}") from None
    return check(plan, path)


def check(plan, path="<plan>"):
    """Checks a plan, before anything runs; returns it expanded.

    Returns:
      `{"name", "path", "notes", "seeds": [int], "arms": {name: {"rule", "options",
      "control"}}, "regimes": [{"name", "flags", "arms": [name], "evals", "primary"}]}`,
      the controls of `controls: true` among the arms.
    """
    _known(path, "plan", plan, _PLAN_KEYS)
    for key in ("arms", "regimes"):
        if key not in plan:
            _fail(path, key, "missing")
    seeds = _seeds(path, plan.get("seeds", 5))
    controls = plan.get("controls", False)
    if not isinstance(controls, bool):
        _fail(path, "controls", f"expected true or false, received {controls!r}")
    arms = _arms(path, plan["arms"], controls)
    if not isinstance(plan["regimes"], list) or not plan["regimes"]:
        _fail(path, "regimes", "expected a non-empty list")
    regimes = []
    for index, regime in enumerate(plan["regimes"]):
        regimes.append(_regime(path, f"regimes[{index}]", regime, arms, controls, regimes))
    notes = plan.get("notes", "")
    if not isinstance(notes, str):
        _fail(path, "notes", "expected free text")
    return dict(name=pathlib.Path(path).stem, path=str(path), notes=notes, seeds=seeds,
                arms=arms, regimes=regimes)


def _fail(path, key, message):
    raise ValueError(f"plan {path}: {key}: {message}")


def _known(path, where, mapping, keys):
    """Fails unless `mapping` is an object of `keys` only."""
    if not isinstance(mapping, dict):
        _fail(path, where, f"expected an object, received {json.dumps(mapping)}")
    unknown = sorted(set(mapping) - keys)
    if unknown:
        _fail(path, f"{where}.{unknown[0]}", f"unknown key; valid: {', '.join(sorted(keys))}")


def _named(path, where, mapping):
    """The `name` of an arm or regime, checked."""
    name = mapping.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(path, f"{where}.name",
              f"expected a name of letters, digits, _.+-, received {name!r}")
    return name


def _flags(path, where, values):
    """An object of train.py flags that a plan may set, as a new dict."""
    if not isinstance(values, dict):
        _fail(path, where, "expected an object of train.py flags")
    for flag in values:
        if flag in STUDY_FLAGS:
            _fail(path, f"{where}.{flag}", "set by the study itself, not by a plan")
        if flag not in FIELD_NAMES:
            _fail(path, f"{where}.{flag}", "not a train.py flag")
    return dict(values)


def _seeds(path, seeds):
    """`seeds`, a count or a list of distinct seeds, as the list of seeds."""
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        return list(range(seeds))
    if (isinstance(seeds, list) and seeds
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        return list(seeds)
    _fail(path, "seeds",
          f"expected a count >= 1 or a list of distinct seeds >= 0, received {seeds!r}")


def _arms(path, plan_arms, controls):
    """The plan's `arms` as `{name: {"rule", "options", "control"}}`, with the matched
    controls of `controls: true`."""
    if not isinstance(plan_arms, list) or not plan_arms:
        _fail(path, "arms", "expected a non-empty list")
    arms = {}
    for index, arm in enumerate(plan_arms):
        where = f"arms[{index}]"
        _known(path, where, arm, _ARM_KEYS)
        name = _named(path, where, arm)
        rule = arm.get("rule")
        if rule not in RULES:
            _fail(path, f"{where}.rule", f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
        control = arm.get("control", False)
        if not isinstance(control, bool):
            _fail(path, f"{where}.control", f"expected true or false, received {control!r}")
        if control and rule in UNMASKED:
            _fail(path, f"{where}.control", f"{rule} has no matched control")
        options = _flags(path, f"{where}.options", arm.get("options", {}))
        entries = [(name, dict(rule=rule, options=options, control=control))]
        if controls and rule not in UNMASKED and not control:
            entries.append((f"{name}-control", dict(rule=rule, options=options, control=True)))
        for entry_name, entry in entries:
            if entry_name in arms:
                _fail(path, f"{where}.name", f"arm {entry_name!r} is given twice")
            arms[entry_name] = entry
    return arms


def _regime(path, where, regime, arms, controls, earlier):
    """One regime of the plan, checked against its arms and the `earlier` regimes."""
    _known(path, where, regime, _REGIME_KEYS)
    name = _named(path, where, regime)
    if name in {r["name"] for r in earlier}:
        _fail(path, f"{where}.name", f"regime {name!r} is given twice")
    flags = _flags(path, f"{where}.flags", regime.get("flags", {}))
    chosen = _regime_arms(path, where, regime.get("arms", list(arms)), arms, controls)
    evals = regime.get("evals", list(EVALUATIONS))
    if not isinstance(evals, list) or any(e not in EVALUATIONS for e in evals):
        _fail(path, f"{where}.evals",
              f"expected a list of {', '.join(EVALUATIONS)}, received {evals!r}")
    primaries = _regime_primaries(path, where, regime.get("primary", []), arms, chosen)
    return dict(name=name, flags=flags, arms=chosen, evals=list(dict.fromkeys(evals)),
                primary=[str(p) for p in primaries])


def _regime_arms(path, where, names, arms, controls):
    """The arms a regime runs: those it names, each with its matched control."""
    if not isinstance(names, list) or not names:
        _fail(path, f"{where}.arms", "expected a non-empty list of arm names")
    chosen = []
    for arm_name in names:
        if arm_name not in arms:
            _fail(path, f"{where}.arms", f"no arm {arm_name!r}; arms: {', '.join(arms)}")
        chosen.append(arm_name)
        if controls and f"{arm_name}-control" in arms:
            chosen.append(f"{arm_name}-control")
    return list(dict.fromkeys(chosen))


def _regime_primaries(path, where, primary, arms, chosen):
    """A regime's `primary` as `Primary`s, each judged by arms the regime runs."""
    if not isinstance(primary, list):
        _fail(path, f"{where}.primary", "expected a list of rule:metric:direction")
    if len(primary) > MAX_PRIMARIES:
        _fail(path, f"{where}.primary", f"at most {MAX_PRIMARIES} primaries per regime "
                                        f"(METHOD.md section 5); received {len(primary)}")
    try:
        primaries = parse_primaries(
            [_arm_primary(value, arms) if isinstance(value, str) else value
             for value in primary]
        )
    except ValueError as error:
        _fail(path, f"{where}.primary", str(error).removeprefix("flag --primary: "))
    for p in primaries:
        _judged(path, f"{where}.primary", p, arms, chosen)
    return primaries


def _judged(path, where, p, arms, chosen):
    """Fails unless the regime's arms `chosen` run exactly one masked arm of primary `p`,
    its matched control and a `none` arm with its options (its mask options aside)."""
    masked = [n for n in chosen if arms[n]["rule"] == p.rule and not arms[n]["control"]
              and _has(arms[n], p.where)]
    if not masked:
        _fail(path, where, f"{p} names {p.subject}, which no arm of the regime runs")
    if len(masked) > 1:
        _fail(path, where, f"{p} matches {len(masked)} arms ({', '.join(masked)}); "
                           "name one arm: ARM:metric:direction")
    (arm_name,) = masked
    options = arms[arm_name]["options"]
    if f"{arm_name}-control" not in chosen and not any(
            arms[n]["control"] and arms[n]["rule"] == p.rule and arms[n]["options"] == options
            for n in chosen):
        _fail(path, where, f"{p}: the regime runs no matched control of {arm_name}")
    if not any(arms[n]["rule"] == "none"
               and flags_but_mask(arms[n]["options"]) == flags_but_mask(options)
               for n in chosen):
        _fail(path, where, f"{p}: the regime runs no `none` arm with the options "
                           f"of {arm_name} (its mask options aside)")


def primaries(plan, regime):
    """The `eval.arms.Primary`s of a checked plan's regime (its `primary`, parsed again:
    an arm's name resolves to that arm)."""
    return parse_primaries([_arm_primary(value, plan["arms"]) for value in regime["primary"]])


def _arm_primary(value, arms):
    """`ARM:metric:direction`, ARM a masked arm of the plan, as that arm's `Primary`;
    anything else is left to `parse_primaries` (`rule:metric:direction`)."""
    name, _, rest = value.partition(":")
    arm = arms.get(name.strip())
    if arm is None or arm["control"] or arm["rule"] in UNMASKED or rest.count(":") != 1:
        return value
    metric, direction = (part.strip() for part in rest.split(":"))
    return Primary(arm["rule"], metric, direction, tuple(sorted(arm["options"].items())),
                   name=name.strip())


def _has(arm, where):
    options = arm["options"]
    return all(flag in options and same_value(options[flag], value) for flag, value in where)
