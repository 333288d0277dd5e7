"""A training run as a Python call (gradmask_tf.trainer.run): the same run as train.py.

Started from Python in a subprocess and killed after its first epoch, then resumed by
`run` in this process, it ends where train.py's uninterrupted run with the same settings
ends: the same config.json, history.csv and weights (`deterministic` on the CPU).
"""

import json
import signal
import textwrap
import time

import numpy as np
import pytest

from eval.plans import flag_arguments
from tests.helpers import finish, read_history, start

SETTINGS = dict(mask_rule="mean", epochs=2, batch_size=16, max_train_examples=64,
                max_test_examples=16, deterministic=True, seed=3)


def _history(run_dir):
    rows = read_history(run_dir)
    for row in rows:
        row.pop("epoch_seconds")
    return rows


@pytest.fixture(scope="module")
def runs(idx_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    settings = dict(SETTINGS, data_dir=str(idx_dir))
    by_train_py = start([*flag_arguments(settings), f"--output_dir={root / 'train_py'}"])
    script = root / "run_from_python.py"
    script.write_text(textwrap.dedent(f"""
        from gradmask_tf.config import RunConfig
        from gradmask_tf.trainer import run
        run(RunConfig(**{settings!r}, output_dir={str(root / 'python')!r}))
    """))
    process = start([], str(script))
    deadline = time.time() + 300
    while not (root / "python" / "checkpoints" / "epoch-0001").exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (root / "python" / "metrics.json").exists()

    import keras

    from gradmask_tf.config import RunConfig
    from gradmask_tf.trainer import run

    policy = keras.mixed_precision.global_policy().name
    metrics = run(RunConfig(**settings, output_dir=str(root / "python")))
    assert keras.mixed_precision.global_policy().name == policy  # put back
    result = finish(by_train_py)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, metrics


def test_a_run_from_python_resumes_to_the_end_of_train_py_s_run(runs):
    root, metrics = runs
    python, train_py = root / "python", root / "train_py"
    assert metrics == json.loads((python / "metrics.json").read_text())
    configs = [json.loads((d / "config.json").read_text())["flags"] for d in (python, train_py)]
    for config in configs:
        config.pop("output_dir")
    assert configs[0] == configs[1]
    assert _history(python) == _history(train_py) and len(_history(python)) == 2
    import keras

    got, want = (keras.models.load_model(d / "model.keras") for d in (python, train_py))
    for a, b in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_bad_configuration_is_one_line_before_anything_is_written(tmp_path):
    from gradmask_tf.config import ConfigError, RunConfig
    from gradmask_tf.trainer import run

    with pytest.raises(ConfigError, match="mask_keep_fraction"):
        run(RunConfig(mask_keep_fraction=1.5, output_dir=str(tmp_path / "run")))
    with pytest.raises(ConfigError, match="--model=keras.applications.NoSuchNet"):
        run(RunConfig(model="keras.applications.NoSuchNet", output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
