"""The op's parameters, declared once in `mask_params`, and every signature held to them.

`MaskConfig` is built from the declarations; the layer and `gradient_mask` keep
explicit signatures, so these tests are what keeps their names and defaults in step.
"""

import ast
import dataclasses
import inspect
import re
import sys

import keras
import numpy as np
import pytest

from gradmask_tf import GradientMask, MaskConfig, gradient_mask, mask_params
from gradmask_tf.errors import InvalidArgumentError
from gradmask_tf.ops import gradient

NAMES = [parameter.name for parameter in mask_params.PARAMETERS]
# One valid value other than the default for each parameter (with the default rule).
NON_DEFAULTS = {
    "rule": "topk",
    "scope": "channel",
    "alpha": 2.5,
    "kernel_size": 5,
    "keep_fraction": 0.25,
    "soft": True,
    "rescale": True,
    "control": True,
    "zone_size": 3,
    "inhibition_base": 0.3,
    "inhibition_strength": 0.4,
    "sigma": 2.0,
    "seed": 7,
}


def test_every_parameter_is_declared_once_with_a_valid_default():
    assert NAMES == list(NON_DEFAULTS)
    assert len(set(NAMES)) == len(NAMES)
    assert list(mask_params.BY_NAME) == NAMES
    assert dict(mask_params.DEFAULTS) == {p.name: p.default for p in mask_params.PARAMETERS}
    for parameter in mask_params.PARAMETERS:
        assert parameter.check(parameter.default) == parameter.default, parameter.name
        assert parameter.check(NON_DEFAULTS[parameter.name]) != parameter.default
        assert parameter.help and "\n" not in parameter.help, parameter.name
        assert parameter.help.endswith("."), parameter.name
    assert mask_params.BY_NAME["rule"].choices == mask_params.RULES
    assert mask_params.BY_NAME["scope"].choices == mask_params.SCOPES


def test_flags_are_mask_names_but_the_run_seed():
    for parameter in mask_params.PARAMETERS:
        expected = "seed" if parameter.name == "seed" else f"mask_{parameter.name}"
        assert parameter.flag == expected
    assert [p.name for p in mask_params.FLAG_PARAMETERS] == NAMES[:-1]


def test_mask_params_imports_only_the_standard_library():
    # Read from the source, so that no other module's imports hide or add one.
    for module in (mask_params, sys.modules["gradmask_tf.errors"]):
        tree = ast.parse(inspect.getsource(module))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
        outside = {
            name for name in imported
            if name.split(".")[0] not in sys.stdlib_module_names
            and name != "gradmask_tf.errors"
        }
        assert not outside, (module.__name__, outside)


def test_mask_config_fields_are_the_declarations():
    fields = dataclasses.fields(MaskConfig)
    assert [field.name for field in fields] == NAMES
    assert {field.name: field.default for field in fields} == dict(mask_params.DEFAULTS)
    assert MaskConfig().to_dict() == dict(mask_params.DEFAULTS)
    assert MaskConfig("topk") == MaskConfig(rule="topk")  # the rule by position


def _signature_defaults(function, skip):
    """`{name: default}` of `function`'s parameters after the first `skip`."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    named = [p for p in parameters if p.kind is not p.VAR_KEYWORD]
    assert named[0].name == "rule" and named[0].kind is named[0].POSITIONAL_OR_KEYWORD
    assert all(p.kind is p.KEYWORD_ONLY for p in named[1:])
    return {p.name: p.default for p in named}


def test_layer_and_op_signatures_match_the_declarations():
    expected = dict(mask_params.DEFAULTS)
    layer_defaults = _signature_defaults(GradientMask.__init__, skip=1)  # self
    op_defaults = _signature_defaults(gradient_mask, skip=1)  # x
    assert list(layer_defaults) == list(op_defaults) == NAMES
    for defaults in (layer_defaults, op_defaults):
        for name in NAMES:
            # The same value and type (1.0, not 1; False, not 0).
            assert (defaults[name], type(defaults[name])) == (
                expected[name], type(expected[name])), name
    assert "kwargs" in inspect.signature(GradientMask.__init__).parameters


def _documented_defaults(function):
    """`{argument: default as written}` from the "Defaults to X." of a docstring's Args."""
    args = inspect.getdoc(function).split("Args:\n", 1)[1]
    found = {}
    for entry in re.split(r"\n(?=  \w[\w, ]*:)", args):
        match = re.match(r"\s*(\w+):(.*)", entry, re.S)
        # "Defaults to X." or "Defaults to X (a gloss)."
        default = (
            re.search(r"Defaults to (.+?)(?: \(.*\))?\.(?:\s|$)", match.group(2), re.S)
            if match else None
        )
        if default:
            found[match.group(1)] = default.group(1).strip("`")
    return found


@pytest.mark.parametrize("function", [gradient_mask, GradientMask])
def test_documented_defaults_match_the_declarations(function):
    documented = _documented_defaults(function)
    assert "rule" in documented and "seed" in documented
    for name, written in documented.items():
        default = mask_params.DEFAULTS[name]
        assert written == (f'"{default}"' if isinstance(default, str) else repr(default)), name


def test_default_layer_config_holds_every_parameter_at_its_default():
    layer = GradientMask()
    config = layer.get_config()
    base = set(keras.layers.Layer().get_config())
    assert set(config) - base == set(NAMES)
    assert {name: config[name] for name in NAMES} == dict(mask_params.DEFAULTS)
    assert layer.mask_config == MaskConfig()


@pytest.mark.parametrize("name", NAMES)
def test_each_argument_reaches_the_config_by_its_name(name, monkeypatch):
    value = NON_DEFAULTS[name]
    expected = MaskConfig(**{name: value})
    assert getattr(expected, name) == value
    layer = GradientMask(**{name: value})
    assert layer.mask_config == expected
    assert layer.get_config()[name] == value
    assert GradientMask.from_config(layer.get_config()).mask_config == expected
    configs = []
    monkeypatch.setattr(
        gradient, "masked_identity", lambda x, config: configs.append(config) or x
    )
    gradient_mask(np.ones((2, 3), np.float32), **{name: value})
    assert configs == [expected]


def test_check_stores_plain_python_values():
    by_name = mask_params.BY_NAME
    assert type(by_name["alpha"].check(np.float32(0.5))) is float
    assert type(by_name["alpha"].check(2)) is float
    assert type(by_name["zone_size"].check(np.int64(5))) is int
    assert type(by_name["soft"].check(np.bool_(True))) is bool
    assert type(by_name["seed"].check(np.uint32(3))) is int
    assert by_name["seed"].check(None) is None
    assert by_name["rule"].check("log") == "log"
    config = MaskConfig(alpha=np.float64(2), kernel_size=np.int32(5), rescale=np.bool_(True))
    assert (type(config.alpha), type(config.kernel_size), type(config.rescale)) == (
        float, int, bool)


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("rule", "median", "one of none, mean, local, topk, lateral, log, random"),
        ("scope", "pixel", "one of spatial, channel"),
        ("alpha", -0.1, "a finite float >= 0"),
        ("alpha", float("inf"), "a finite float >= 0"),
        ("alpha", True, "a finite float >= 0"),
        ("kernel_size", 4, "a positive odd integer"),
        ("kernel_size", 3.0, "a positive odd integer"),
        ("keep_fraction", 0, "a float in (0, 1]"),
        ("keep_fraction", float("nan"), "a float in (0, 1]"),
        ("soft", 1, "a bool"),
        ("zone_size", -1, "a positive odd integer"),
        ("inhibition_strength", "0.9", "a finite float >= 0"),
        ("sigma", 0.0, "a finite float > 0"),
        ("seed", 1.0, "an integer or None"),
        ("seed", False, "an integer or None"),
    ],
)
def test_check_raises_the_one_line_argument_error(name, value, expected):
    with pytest.raises(InvalidArgumentError) as raised:
        mask_params.BY_NAME[name].check(value)
    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.name, error.expected, error.value) == (name, expected, value)
    assert str(error) == (
        f"Invalid value for argument `{name}`: expected {expected}. Received: {name}={value!r}"
    )
    assert mask_params.BY_NAME[name].expected == expected
    with pytest.raises(InvalidArgumentError, match=re.escape(str(error))):
        MaskConfig(**{name: value})


@pytest.mark.parametrize(
    "values,name",
    [
        (dict(rule="lateral", soft=True), "soft"),
        (dict(rule="log", soft=True), "soft"),
        (dict(rule="none", control=True), "control"),
        (dict(rule="random", control=True), "control"),
        (dict(rule="mean", soft=True, control=True), "control"),
    ],
)
def test_combinations_are_checked_together(values, name):
    with pytest.raises(InvalidArgumentError) as raised:
        mask_params.check_all(values)
    assert raised.value.name == name
    with pytest.raises(InvalidArgumentError, match=re.escape(str(raised.value))):
        MaskConfig(**values)


def test_check_all_fills_defaults_and_rejects_unknown_names():
    checked = mask_params.check_all({"rule": "topk", "keep_fraction": 1})
    assert list(checked) == NAMES
    assert checked == {**mask_params.DEFAULTS, "rule": "topk", "keep_fraction": 1.0}
    assert checked == MaskConfig("topk", keep_fraction=1).to_dict()
    with pytest.raises(InvalidArgumentError, match="keep_fractoin"):
        mask_params.check_all({"keep_fractoin": 0.3})
