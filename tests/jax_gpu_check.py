"""eval/gpu_check.py on JAX alone (TensorFlow blocked), here on the CPU, tiny.

Not a `test_*` file: pytest's TensorFlow workers do not collect it; the JAX half
(`tests/test_jax_half.py`, which lists it in `backends.JAX_FILES`) runs it in its
process, where TensorFlow cannot be imported.
"""

import json

import keras


def test_gpu_check_runs_on_jax_alone(capsys):
    from eval import gpu_check

    assert keras.backend.backend() == "jax"
    assert gpu_check.main(["--architectures=cnn", "--batch_size=4", "--repeats=2",
                           "--block=1", "--reference_rules=mean"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["environment"]["backend"] == "jax"
    # mean's 16 cases of the grid (every rule's are tests/test_backend_ops.py's on JAX).
    assert result["reference"]["cases"] == 16 and result["reference"]["failures"] == []
    (step,) = result["steps"]
    assert step["architecture"] == "cnn" and step["batch_size"] == 4
    assert [row["name"] for row in step["rows"]] == ["none", "mean"]
    assert all(row["ms"] > 0 for row in step["rows"])
