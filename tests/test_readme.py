"""The README's usage example runs as written."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example(name):
    text = README.read_text()
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no example marked {name!r}"
    return match.group(1)


def test_usage_example_trains():
    code = _example("usage").replace("epochs=10", "epochs=1")
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.random((32, 28, 28, 1)).astype("float32"),
        "y_train": rng.integers(0, 10, 32),
    }
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.history.history["loss"], "fit ran"
    masks = [layer for layer in model.layers if type(layer).__name__ == "GradientMask"]
    assert len(masks) == 2


def test_run_example_trains_a_run_directory(tmp_path, idx_dir, monkeypatch):
    code = _example("run")
    for default, small in (("epochs=10", "epochs=1"),
                           ('output_dir="runs/mean-seed0"',
                            f'output_dir="{tmp_path / "run"}", data_dir="{idx_dir}", '
                            "batch_size=16, max_train_examples=32, max_test_examples=16")):
        assert default in code
        code = code.replace(default, small)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["metrics"]["epochs"] == 1
    assert (tmp_path / "run" / "metrics.json").is_file()


def _quick_start_commands():
    text = README.read_text()
    section = text[text.index("## Quick start") : text.index("## Usage")]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_quick_start_runs_as_root_and_with_sudo_and_ci_runs_its_test_command():
    train, test = _quick_start_commands()
    setup = train.rsplit(" && ", 1)[0]
    assert train == setup + " && .venv/bin/python train.py"
    # The tests also install Ray (the --engine=ray tests) and JAX (the JAX backend
    # tests), in the same pip command.
    requirements = "pip install -r requirements.txt"
    optional = "-r requirements-ray.txt -r requirements-jax.txt"
    assert setup.count(requirements) == 1
    test_setup = setup.replace(requirements, f"{requirements} {optional}")
    assert test == test_setup + " && .venv/bin/python -m pytest -q"
    # As root without sudo (CI, these machines) and as a user with it.
    assert setup.count("apt-get") == setup.count("$(command -v sudo) apt-get") == 2
    assert "sudo" not in setup.replace("$(command -v sudo)", "")
    ci = (README.parent / ".ci" / "run").read_text()
    apt_packages = re.search(r"apt-get install -y (.*?) &&", setup).group(1).split()
    assert f"apt-get install -y -q {' '.join(apt_packages)}" in ci
    assert f"pip install -q -r requirements.txt {optional}" in ci
    assert ci.rstrip().splitlines()[-1] == ".venv/bin/python -m pytest -q"
