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
