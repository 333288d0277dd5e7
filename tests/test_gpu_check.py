"""eval/gpu_check.py runs with JAX alone (TensorFlow blocked), here on the CPU, tiny."""

import json

from tests import backends

_RUN = r"""
import sys
from eval import gpu_check
sys.exit(gpu_check.main(["--architectures=cnn", "--batch_size=4", "--repeats=2", "--block=1",
                         "--reference_rules=mean"]))
"""


def test_gpu_check_runs_on_jax_alone():
    output = backends.run_other_backend(_RUN, "jax")
    result = json.loads(output.strip().splitlines()[-1])
    assert result["environment"]["backend"] == "jax"
    # mean's 16 cases of the grid (every rule's are tests/test_backend_ops.py's on JAX).
    assert result["reference"]["cases"] == 16 and result["reference"]["failures"] == []
    (step,) = result["steps"]
    assert step["architecture"] == "cnn" and step["batch_size"] == 4
    assert [row["name"] for row in step["rows"]] == ["none", "mean"]
    assert all(row["ms"] > 0 for row in step["rows"])
