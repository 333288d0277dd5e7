"""A study's damaged result files: checked when read, moved aside, healed (eval.result_files).

Synthetic run directories and a fake of the commands a run executes: nothing trains.
"""

import pathlib
import shutil
import sys

import numpy as np
import pytest

from eval import result_files, study_runs
from gradmask_tf import files
from tests.helpers import ROOT

NAMES = ["config.json", "metrics.json", "history.csv", "eval/quality.json",
         "eval/saliency_maps.npz"]
DAMAGES = ["truncated", "empty", "invalid"]
EPOCHS = 3


def _write_finished(directory):
    """A finished, evaluated run's result files, as train.py and `python -m eval` leave them."""
    files.atomic_write_json(directory / "config.json", {"flags": {"mask_rule": "none", "seed": 0}})
    files.atomic_write_json(directory / "metrics.json", {"epochs": EPOCHS, "test_accuracy": 0.5})
    rows = [{"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.1 * epoch}
            for epoch in range(1, EPOCHS + 1)]
    files.atomic_write_text(directory / "history.csv", files.history_csv(rows))
    _write_evaluation(directory, "quality")
    _write_evaluation(directory, "saliency")


def _write_evaluation(directory, name):
    files.atomic_write_json(directory / "eval" / f"{name}.json", {"gsnr": 0.25, "name": name})
    if name == "saliency":  # stored, not compressed: a changed byte is a changed CRC
        np.savez(directory / "eval" / "saliency_maps.npz", maps=np.arange(256.0))


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif path.suffix == ".json":
        path.write_bytes(b"[1, 2]\n" if "eval" in path.parts else b"\xff\xfe{garbage\n")
    elif path.suffix == ".csv":
        path.write_text(data.decode().replace("0.5", "n/a", 1).replace("\n2,", "\n7,", 1))
    else:  # one byte changed inside the maps
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])


class FakeCommands:
    """Stands in for `study_runs.execute`: train.py and `python -m eval` write their files."""

    def __init__(self, run_dir):
        self.run_dir, self.commands = run_dir, []

    def __call__(self, command, log_path, env=None):
        self.commands.append("evaluate" if "-m" in command else "train")
        if "-m" in command:
            names = next(arg for arg in command if arg.startswith("--evals="))[8:].split(",")
            for name in names:
                _write_evaluation(self.run_dir, name)
        else:
            _write_finished(self.run_dir)
            for path in (self.run_dir / "eval").iterdir():  # train.py evaluates nothing
                path.unlink()


@pytest.fixture
def run(tmp_path, monkeypatch):
    run_dir = tmp_path / "study" / "runs" / "none-seed0"
    fake = FakeCommands(run_dir)
    monkeypatch.setattr(study_runs, "execute", fake)
    study_run = study_runs.StudyRun(
        what="none, seed 0", name="none-seed0", run_dir=run_dir,
        results=tmp_path / "results" / "none-seed0", log=tmp_path / "log",
        train_command=(sys.executable, "train.py"), evals=("quality", "saliency"))
    object.__setattr__(study_run, "fake", fake)  # the test's handle on its commands
    return study_run


def _finish(run, where=("run_dir", "results")):
    for place in where:
        _write_finished(getattr(run, place))


def _line(capsys):
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python -m eval.study: results of none, seed 0 are damaged (")
    return line


@pytest.mark.parametrize("damaged, intact", [("results", "run_dir"), ("run_dir", "results")])
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", NAMES)
def test_a_damaged_copy_is_put_back_from_the_intact_one(run, capsys, name, how, damaged, intact):
    _finish(run)
    bad, good = getattr(run, damaged) / name, getattr(run, intact) / name
    _damage(bad, how)
    damaged_bytes = bad.read_bytes()
    run.train()
    run.evaluate()
    assert run.fake.commands == [], "nothing runs again"
    line = _line(capsys)
    assert f"({bad}: " in line and f"restored from {getattr(run, intact)}" in line
    assert bad.read_bytes() == good.read_bytes()
    assert bad.with_name(bad.name + ".damaged").read_bytes() == damaged_bytes, "never deleted"
    assert result_files.damage(run.run_dir) == {} == result_files.damage(run.results)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", NAMES)
def test_a_run_without_an_intact_copy_is_done_again(run, capsys, name, how):
    _finish(run)
    for place in (run.run_dir, run.results):
        _damage(place / name, how)
    run.train()
    run.evaluate()
    line = _line(capsys)
    if name.startswith("eval/"):  # only its evaluation runs again
        assert run.fake.commands == ["evaluate"]
        assert line.endswith("; running its evaluation saliency again" if name.endswith(".npz")
                             else "; running its evaluation quality again")
    else:
        assert run.fake.commands == ["train"]
        assert line.endswith("; running it again")
    if name in ("config.json", "history.csv"):  # train.py starts the run directory anew
        aside = run.run_dir.with_name("none-seed0.damaged")
        assert (aside / f"{name}.damaged").is_file() and f", {aside};" in line
    assert (run.results / f"{name}.damaged").is_file()
    assert result_files.damage(run.run_dir) == {} == result_files.damage(run.results)
    assert run.is_complete() and set(result_files.result_names(run.results)) == {*NAMES, "eval/saliency.json"}
    capsys.readouterr()
    assert not run.heal(), "healed once"


@pytest.mark.parametrize("name", NAMES)
def test_damaged_committed_results_are_done_again_where_no_run_directory_is(run, capsys, name):
    _finish(run, ["results"])
    _damage(run.results / name, "truncated")
    run.train()
    run.evaluate()
    assert "running" in _line(capsys)
    # The model is not among the results: an evaluation to do again needs the run trained.
    assert run.fake.commands == (["train", "evaluate"] if name.startswith("eval/") else ["train"])
    assert result_files.damage(run.results) == {} and run.is_complete()


def test_a_history_cut_at_a_line_is_told_by_the_epochs_metrics_counts(tmp_path):
    _write_finished(tmp_path)
    lines = (tmp_path / "history.csv").read_text().splitlines(keepends=True)
    (tmp_path / "history.csv").write_text("".join(lines[:-1]))
    assert result_files.damage(tmp_path) == {"history.csv": "2 epochs, metrics.json says 3"}


def test_a_manifest_checksum_is_checked_where_there_is_one(tmp_path):
    _write_finished(tmp_path)
    files.write_manifest(tmp_path)
    files.atomic_write_json(tmp_path / "metrics.json", {"epochs": EPOCHS, "test_accuracy": 0.9})
    assert result_files.damage(tmp_path) == {"metrics.json": "checksum differs from its manifest"}


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ["config.json", "metrics.json", "history.csv", "eval/quality.json"])
def test_compare_names_a_damaged_file_in_one_line(tmp_path, name, how):
    from eval import compare

    _write_finished(tmp_path)
    assert compare.load_run(tmp_path).metrics["test_accuracy"] == 0.5
    _damage(tmp_path / name, how)
    with pytest.raises(ValueError, match=rf"^results of {tmp_path} are damaged \({name}: ") as caught:
        compare.load_run(tmp_path)
    assert "\n" not in str(caught.value)


def test_a_damaged_study_record_is_moved_aside(tmp_path, capsys):
    from eval import study_report

    (tmp_path / "study.json").write_text('{"wall_seconds_total": 1')
    engine = {"engine": "local"}
    study_report.write_record(tmp_path, {}, engine, None, 0, 0.0, "eval.study")
    assert "study.json is damaged (not JSON" in capsys.readouterr().err
    assert (tmp_path / "study.json.damaged").read_text() == '{"wall_seconds_total": 1'
    assert files.read_json(tmp_path / "study.json")["command"] == "eval.study"


def test_a_truncated_committed_result_no_longer_stops_the_study(tmp_path, monkeypatch, capsys):
    """The issue's case: one committed metrics.json truncated, the study run on the
    committed results; the run is done again (its train.py faked: a copy of the
    committed files) and every report is written."""
    from eval import study

    committed = ROOT / "docs" / "results" / "regimes"
    results = tmp_path / "results"
    shutil.copytree(committed / "small-data", results / "small-data")
    metrics = results / "small-data" / "lateral-seed0" / "metrics.json"
    _damage(metrics, "truncated")
    trained = []

    def fake_train(command, log_path, env=None):
        run_dir = pathlib.Path(next(arg for arg in command if arg.startswith("--output_dir="))[13:])
        shutil.copytree(committed / "small-data" / run_dir.name, run_dir)
        trained.append(run_dir.name)

    monkeypatch.setattr(study_runs, "execute", fake_train)
    code = study.main(["eval.study", "--plan=regimes", "--regimes=small-data",
                       f"--results_dir={results}", f"--output_dir={tmp_path / 'study'}"])
    assert code == 0 and trained == ["lateral-seed0"]
    line = next(line for line in capsys.readouterr().err.splitlines() if "damaged" in line)
    assert line.startswith(f"python -m eval.study: results of small-data: lateral, seed 0 are "
                           f"damaged ({metrics}: not JSON: ")
    assert line.endswith(f"moved aside to {metrics}.damaged; running it again")
    assert metrics.read_bytes() == (committed / "small-data" / "lateral-seed0" /
                                    "metrics.json").read_bytes()
    assert (tmp_path / "study" / "small-data" / "report.md").is_file()
    assert not (tmp_path / "study" / "study.lock").exists()


def test_the_temporary_file_of_a_write_cut_short_is_not_a_result(tmp_path):
    from eval import compare

    _write_finished(tmp_path)
    (tmp_path / "eval" / ".quality.json.x1y2.json").write_text('{"gsnr": ')  # atomic_write's
    assert result_files.damage(tmp_path) == {}
    assert sorted(compare.load_run(tmp_path).evals) == ["quality", "saliency"]


def test_a_copy_to_the_results_removes_what_a_killed_copy_left(tmp_path):
    """A study killed while it copied a run's results left a temporary beside them; the
    next copy of that file (the study started again) removes it."""
    run_dir, results = tmp_path / "run", tmp_path / "results"
    _write_finished(run_dir)
    results.mkdir()
    (results / ".config.json.vagoi0jt").write_text('{"fl')  # copy_file's, cut short
    (results / ".configs.json.keep").write_text("another name's")
    study_runs.copy_results(run_dir, results)
    assert sorted(path.name for path in results.iterdir() if path.is_file()) == [
        ".configs.json.keep", "config.json", "history.csv", "metrics.json"]
