"""`MaskConfig`, the op's validated parameters, and the `topk` budget `num_kept`.

The fields, their order, defaults and checks are those of `gradmask_tf.mask_params`,
declared there once. No TensorFlow here: a configuration is plain Python.
"""

import dataclasses
import math

from gradmask_tf import mask_params


def _check_and_store(self):
    # Store plain Python numbers so configs compare and serialize cleanly.
    values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
    for name, value in mask_params.check_all(values).items():
        object.__setattr__(self, name, value)


def _to_dict(self):
    return dataclasses.asdict(self)


def _annotation(parameter):
    return parameter.type if parameter.default is not None else parameter.type | None


MaskConfig = dataclasses.make_dataclass(
    "MaskConfig",
    [
        (parameter.name, _annotation(parameter), dataclasses.field(default=parameter.default))
        for parameter in mask_params.PARAMETERS
    ],
    namespace={
        "__module__": __name__,
        "__doc__": (
            "Validated parameters of the op; see `gradient_mask` for their meaning.\n\n"
            "    One field for each of `mask_params.PARAMETERS`, in that order (so `rule`\n"
            "    is the one to pass by position), with its default; invalid values raise\n"
            "    `InvalidArgumentError` (a `ValueError`) at construction.\n"
        ),
        "__post_init__": _check_and_store,
        "to_dict": _to_dict,
    },
    frozen=True,
)


def num_kept(keep_fraction, size):
    """How many entries the `topk` rule keeps in a neighbourhood of `size`.

    `ceil(keep_fraction * size)`, rounded first so that 0.1 * 10 keeps 1, not 2.
    """
    return max(1, int(math.ceil(round(keep_fraction * size, 9))))
