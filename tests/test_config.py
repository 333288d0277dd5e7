"""gradmask_tf.config: the run configuration, its checks, and train.py's flags built from it."""

import subprocess
import sys

import pytest
from absl import flags

import train
from gradmask_tf import mask_params
from gradmask_tf.config import FIELD_NAMES, FIELDS, ConfigError, RunConfig
from tests.helpers import ROOT


def test_the_mask_parameters_agree_with_the_configuration_and_the_flags():
    fields = {field.name: field for field in FIELDS}
    defined = train.define_flags(flags.FlagValues())
    for parameter in mask_params.PARAMETERS:
        field = fields[parameter.flag]  # --seed for the seed, --mask_<name> for the rest
        if parameter.name != "seed":
            assert (field.default, field.kind) == (parameter.default, parameter.type)
            assert field.help == parameter.help
        assert defined[parameter.flag].default == field.default
    assert sorted(defined) == sorted(FIELD_NAMES)
    config = RunConfig()
    assert config.mask_options == {p.name: p.default for p in mask_params.PARAMETERS
                                   if p.name not in ("rule", "seed")}


def test_train_py_s_flags_make_the_same_configuration_as_python():
    argv = ["train.py", "--mask_rule=topk", "--mask_keep_fraction=0.25", "--label_noise=0.4",
            "--optimizer=sgd", "--momentum=0.5", "--noaugment"]
    assert train.config_from_argv(argv) == RunConfig(
        mask_rule="topk", mask_keep_fraction=0.25, label_noise=0.4, optimizer="sgd",
        momentum=0.5).checked()


@pytest.mark.parametrize("settings, named", [
    (dict(epochs=0), "--epochs"),
    (dict(epochs=2.5), "--epochs"),
    (dict(mask_rule="median"), "--mask_rule"),
    (dict(mask_keep_fraction=0.0), "--mask_keep_fraction"),
    (dict(mask_rule="lateral", mask_soft=True), "--mask_soft"),
    (dict(mask_rule="none", mask_control=True), "--mask_control"),
    (dict(model="alexnet"), "--model"),
    (dict(label_noise=1.0), "--label_noise"),
    (dict(examples_per_class=5, max_train_examples=100), "--examples_per_class"),
    (dict(momentum=0.5), "--momentum"),
    (dict(num_cpu_devices=2), "--num_cpu_devices"),
])
def test_a_bad_setting_is_one_line_naming_its_flag(settings, named):
    with pytest.raises(ConfigError, match=named) as error:
        RunConfig(**settings).checked()
    assert "\n" not in str(error.value)


def test_a_checked_configuration_round_trips_through_its_dictionary():
    config = RunConfig(label_noise=0.4, seed=3).checked()
    assert (config.validation_fraction, config.momentum) == (0.1, 0.9)
    assert RunConfig.from_dict(config.to_dict()).checked() == config
    assert list(config.to_dict()) == sorted(FIELD_NAMES)
    assert config.replace(seed=4).seed == 4
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        RunConfig.from_dict({"epoch": 3})


def test_reading_a_configuration_loads_no_tensorflow():
    code = ("import sys; import gradmask_tf.config, eval.plans; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
