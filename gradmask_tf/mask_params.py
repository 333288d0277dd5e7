"""The Gradient Mask op's parameters, each declared once: name, flag, default, check, help.

Standard library only, so that a command line or a run configuration can list, default
and check them without importing TensorFlow. `ops.MaskConfig` takes its fields, defaults
and checks from here and `gradient_mask` its defaults; the `GradientMask` layer keeps
its explicit signature, and tests/test_mask_params.py holds both signatures to these
declarations.

Example, a flag for each parameter that has one of its own:

```python
for parameter in mask_params.FLAG_PARAMETERS:
    define_flag(parameter.flag, parameter.default, parameter.help)
values = mask_params.check_all({p.name: flag_value(p.flag) for p in PARAMETERS})
```
"""

import dataclasses
import math
import sys
import types
from typing import Any, Callable

from gradmask_tf.errors import invalid

RULES = ("none", "mean", "local", "topk", "lateral", "log", "random")
SCOPES = ("spatial", "channel")
# The rules that mask whole positions, one spatial mask shared by all channels.
POSITION_RULES = ("lateral", "log")


def _numpy_types(*names):
    """NumPy's scalar types of these names, or () while NumPy is not imported.

    A value can only be a NumPy scalar once NumPy is imported: so the checks accept
    NumPy scalars, as the op always has, without importing NumPy here.
    """
    numpy = sys.modules.get("numpy")
    return () if numpy is None else tuple(getattr(numpy, name) for name in names)


def _is_real_number(value):
    """A Python or NumPy int or float, not a bool."""
    number_types = (int, float, *_numpy_types("integer", "floating"))
    return isinstance(value, number_types) and not isinstance(value, bool)


def _is_integer(value):
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, *_numpy_types("integer"))) and not isinstance(value, bool)


def _is_bool(value):
    return isinstance(value, (bool, *_numpy_types("bool_")))


def _is_finite_at_least_zero(value):
    return _is_real_number(value) and value >= 0 and not math.isinf(value)


def _is_positive_finite(value):
    return _is_real_number(value) and value > 0 and not math.isinf(value)


def _is_in_unit_interval(value):
    return _is_real_number(value) and 0 < value <= 1


def _is_positive_odd(value):
    return _is_integer(value) and value > 0 and value % 2 == 1


def _is_integer_or_none(value):
    return value is None or _is_integer(value)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter of the op.

    Attributes:
      name: Its argument name in `gradient_mask`, `MaskConfig` and `GradientMask`.
      flag: The command-line flag that sets it, without dashes: `mask_<name>`, but
        `seed` for `seed`, which the run's `--seed` sets (it seeds weights and data
        order too, so a command line defines that flag itself).
      default: Its default value.
      type: The Python type of its values: `str` (`rule`, `scope`), `float`, `int` or
        `bool`; `seed` is an `int` or None.
      help: One line saying what it does, for a flag's help.
      expected: What it allows, in words, as its error message says.
      choices: The allowed values of `rule` and `scope`; None for the others.
    """

    name: str
    flag: str
    default: Any
    type: type
    help: str
    expected: str
    accepts: Callable[[Any], bool] = dataclasses.field(repr=False, compare=False)
    choices: tuple[str, ...] | None = None

    def check(self, value):
        """Checks one value of the parameter on its own.

        Returns:
          The value as `MaskConfig` stores it: numbers and switches as plain Python
          `float`, `int` or `bool`; rules, scopes and a None seed as given.

        Raises:
          InvalidArgumentError: (a `ValueError`) where `value` is not allowed, naming
            the parameter, what it allows and what it received.
        """
        if not self.accepts(value):
            raise invalid(self.name, self.expected, value)
        if self.choices is not None or value is None:
            return value
        return self.type(value)


def _choice(name, default, choices, help_):
    return Parameter(
        name=name, flag=f"mask_{name}", default=default, type=str, help=help_,
        expected=f"one of {', '.join(choices)}", accepts=lambda value: value in choices,
        choices=choices,
    )


# In the order of the op's signature, which `MaskConfig` keeps: `rule` comes first.
PARAMETERS = (
    _choice("rule", "mean", RULES, "Gradient Mask rule ('none' = baseline)."),
    _choice("scope", "spatial", SCOPES, "Neighbourhood of mean and topk."),
    Parameter(
        name="alpha", flag="mask_alpha", default=1.0, type=float,
        help="Threshold factor of mean and local.",
        expected="a finite float >= 0", accepts=_is_finite_at_least_zero,
    ),
    Parameter(
        name="kernel_size", flag="mask_kernel_size", default=3, type=int,
        help="Window of local (odd).",
        expected="a positive odd integer", accepts=_is_positive_odd,
    ),
    Parameter(
        name="keep_fraction", flag="mask_keep_fraction", default=0.5, type=float,
        help="Share kept by topk and random, in (0, 1].",
        expected="a float in (0, 1]", accepts=_is_in_unit_interval,
    ),
    Parameter(
        name="soft", flag="mask_soft", default=False, type=bool,
        help="Shrink by the threshold instead of cutting.",
        expected="a bool", accepts=_is_bool,
    ),
    Parameter(
        name="rescale", flag="mask_rescale", default=False, type=bool,
        help="Restore each neighbourhood's L1 norm.",
        expected="a bool", accepts=_is_bool,
    ),
    Parameter(
        name="control", flag="mask_control", default=False, type=bool,
        help="The rule's matched control: as many entries, the same L1 mass, "
        "uniformly random places.",
        expected="a bool", accepts=_is_bool,
    ),
    Parameter(
        name="zone_size", flag="mask_zone_size", default=7, type=int,
        help="Zone of lateral and window of log (odd).",
        expected="a positive odd integer", accepts=_is_positive_odd,
    ),
    Parameter(
        name="inhibition_base", flag="mask_inhibition_base", default=0.1, type=float,
        help="Base inhibition of lateral.",
        expected="a finite float >= 0", accepts=_is_finite_at_least_zero,
    ),
    Parameter(
        name="inhibition_strength", flag="mask_inhibition_strength", default=0.9,
        type=float, help="Neighbour inhibition of lateral.",
        expected="a finite float >= 0", accepts=_is_finite_at_least_zero,
    ),
    Parameter(
        name="sigma", flag="mask_sigma", default=1.0, type=float,
        help="Scale of log's Laplacian of Gaussian (> 0).",
        expected="a finite float > 0", accepts=_is_positive_finite,
    ),
    Parameter(
        name="seed", flag="seed", default=None, type=int,
        help="Seed of the draws of random and of the matched control (None: fresh "
        "draws).",
        expected="an integer or None", accepts=_is_integer_or_none,
    ),
)
# The parameters with a `--mask_<name>` flag of their own: all but `seed`.
FLAG_PARAMETERS = tuple(p for p in PARAMETERS if p.flag == f"mask_{p.name}")
BY_NAME = types.MappingProxyType({p.name: p for p in PARAMETERS})
DEFAULTS = types.MappingProxyType({p.name: p.default for p in PARAMETERS})


def check_combination(rule, soft, control):
    """The checks that involve several parameters, each already valid on its own.

    Raises:
      InvalidArgumentError: for `soft` with `lateral` or `log`, `control` with `none`
        or `random`, or `control` with `soft`.
    """
    if soft and rule in POSITION_RULES:
        raise invalid(
            "soft", f"False with rule={rule!r} (soft mode is not defined for it)", soft
        )
    if control and rule in ("none", "random"):
        raise invalid(
            "control",
            f"False with rule={rule!r} (the matched control exists for "
            "mean, local, topk, lateral and log)",
            control,
        )
    if control and soft:
        raise invalid(
            "control", "False with soft=True (the control keeps whole entries)", control
        )


def check_all(values):
    """Every parameter checked, on its own and together, as `MaskConfig` stores it.

    Args:
      values: A mapping from parameter names to values; a missing name takes its
        default.

    Returns:
      A dict of every parameter, in the order of `PARAMETERS`.

    Raises:
      InvalidArgumentError: for the first invalid parameter (in the order of
        `PARAMETERS`, then the combinations), or for an unknown name in `values`.
    """
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise invalid("values", f"names among {', '.join(BY_NAME)}", unknown)
    checked = {p.name: p.check(values.get(p.name, p.default)) for p in PARAMETERS}
    check_combination(checked["rule"], checked["soft"], checked["control"])
    return checked
