"""A run's result files, checked as they are read, and a study's damaged run healed.

A run's results are `config.json`, `metrics.json`, `history.csv`, `eval/*.json` and
`eval/saliency_maps.npz`, in its run directory and, with `eval.study --results_dir`, in a
copy there. A full disk, a copy or checkout cut short, a network filesystem's glitch or a
slip can leave one truncated, emptied or garbled. Each is checked by reading it whole:
a JSON file must parse to an object (`config.json` with its `flags`); `history.csv` must
end with a newline, name `epoch` first, give every row a value or an empty cell for each
column, number its epochs 1..N and, beside an intact `metrics.json`, hold as many epochs
as that says; the saliency maps file must pass its zip's CRC check; and where the
directory holds a `manifest.json` (`gradmask_tf.files.write_manifest`), each file it names
must match its sha256.

`heal` checks both copies of a run before a study decides what the run needs. A damaged
file is moved aside (renamed to `NAME.damaged`, never deleted); where the other copy of
it is intact it is put back from there, else the run is done again: train.py resumes
the run directory after its last checkpoint for a damaged `metrics.json`, starts it anew
(the directory moved aside whole) for a damaged `config.json` or `history.csv`, and only
the evaluation runs again for a damaged evaluation file. Standard library only.
"""

import csv
import glob
import json
import os
import pathlib
import shutil
import tempfile
import zipfile

from gradmask_tf import files
from gradmask_tf.files import CONFIG, HISTORY, MANIFEST, METRICS, file_sha256

# The files every finished run has, that a report needs (the rest are evaluations').
CORE_FILES = (CONFIG, METRICS, HISTORY)
SALIENCY_MAPS = "eval/saliency_maps.npz"


class DamagedFile(ValueError):
    """A result file that cannot be read as what it should be; the message says why."""


def _text(path):
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        raise DamagedFile(f"unreadable ({error.strerror or type(error).__name__})") from None
    if not data:
        raise DamagedFile("empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedFile("not UTF-8 text") from None


def read_json(path):
    """The JSON object in `path` (a `config.json` with its `flags`).

    Raises:
      DamagedFile: Empty, not JSON, not an object, or a config without its flags.
    """
    try:
        value = json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise DamagedFile(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"not a JSON object but {type(value).__name__}")
    if pathlib.Path(path).name == CONFIG and not isinstance(value.get("flags"), dict):
        raise DamagedFile("no flags")
    return value


def read_history(path):
    """The rows of a `history.csv`, as `gradmask_tf.files.read_history` gives them.

    Raises:
      DamagedFile: Empty, cut short (no final newline), a row with too few or too many
        values, a value that is not a number, or epochs that are not 1..N.
    """
    text = _text(path)
    if not text.endswith("\n"):
        raise DamagedFile("truncated (no final newline)")
    lines = list(csv.reader(text.splitlines()))
    header = lines[0]
    if not header or header[0] != "epoch":
        raise DamagedFile("no epoch column first")
    rows = []
    for number, line in enumerate(lines[1:], 1):
        if len(line) != len(header):
            raise DamagedFile(f"row {number}: {len(line)} values, expected {len(header)}")
        try:
            row = {key: int(value) if key == "epoch" else float(value)
                   for key, value in zip(header, line) if value != ""}
        except ValueError:
            raise DamagedFile(f"row {number}: not a number") from None
        if row.get("epoch") != number:
            raise DamagedFile(f"row {number}: epoch {line[0]!r}, expected {number}")
        rows.append(row)
    return rows


def check_epochs(metrics, history):
    """Raises `DamagedFile` unless the history holds as many epochs as `metrics` says (a
    history cut at the end of a line still parses)."""
    epochs = metrics.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and len(history) != epochs:
        raise DamagedFile(f"{len(history)} epochs, metrics.json says {epochs}")


def check_zip(path):
    """Raises `DamagedFile` unless every member of the zip (`.npz`) file matches its CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        raise DamagedFile(f"not a whole zip file ({error})") from None
    if bad is not None:
        raise DamagedFile(f"{bad}: CRC differs")


def _check(path):
    """Why the result file `path` is damaged, or None."""
    try:
        if path.suffix == ".json":
            read_json(path)
        elif path.suffix == ".csv":
            read_history(path)
        else:
            check_zip(path)
    except DamagedFile as error:
        return str(error)
    return None


def evaluation_files(directory):
    """A run directory's evaluation results, `eval/*.json`, in order; not the hidden
    temporary files of a write that was cut short."""
    return [path for path in sorted((pathlib.Path(directory) / "eval").glob("*.json"))
            if not path.name.startswith(".")]


def result_names(directory):
    """The result files in `directory`, relative to it: the core ones, then eval/'s."""
    directory = pathlib.Path(directory)
    names = [name for name in CORE_FILES if (directory / name).is_file()]
    names += [f"eval/{path.name}" for path in evaluation_files(directory)]
    return names + ([SALIENCY_MAPS] if (directory / SALIENCY_MAPS).is_file() else [])


def _checksums(directory):
    """`{name: sha256}` of the directory's manifest, or `{}` without a readable one."""
    try:
        entries = json.loads((directory / MANIFEST).read_text())["files"]
        return {name: entry["sha256"] for name, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def damage(directory):
    """`{name: reason}` of the damaged result files in `directory` (`{}`: none, or no
    such directory); names relative to it, e.g. `metrics.json`, `eval/pruning.json`."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return {}
    checksums = _checksums(directory)
    found = {}
    for name in result_names(directory):
        reason = _check(directory / name)
        if reason is None and name in checksums and file_sha256(directory / name) != checksums[name]:
            reason = "checksum differs from its manifest"
        if reason is not None:
            found[name] = reason
    if not {METRICS, HISTORY} & set(found) and (directory / METRICS).is_file() and (
            directory / HISTORY).is_file():
        try:
            check_epochs(read_json(directory / METRICS), read_history(directory / HISTORY))
        except DamagedFile as error:
            found[HISTORY] = str(error)
    return found


def move_aside(path):
    """Renames `path` (a file or a directory) to a free `NAME.damaged[-N]` beside it;
    returns the new path."""
    return files.move_aside(path, suffix=".damaged")


def copy_file(source, target):
    """Copies `source` to `target` through a temporary file renamed into place, so a copy
    cut short never leaves half a file under the result's name.

    The temporaries a copy to `target` cut short left (`.NAME.*`: a study killed while
    it copied) are removed first; a study's lock makes it the one writer of its results.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(descriptor)
    try:
        shutil.copy2(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _evaluation(name):
    """The evaluation whose result `name` is (`eval/pruning.json`: pruning)."""
    return "saliency" if name == SALIENCY_MAPS else pathlib.PurePosixPath(name).stem


def heal(run_dir, results, what, warn):
    """Checks a run's result files in both places and heals what is damaged.

    Args:
      run_dir: The run directory.
      results: Its copy under `--results_dir`, or None.
      what: How the line names the run, e.g. `small-data: mean, seed 0`.
      warn: Called with one line for a run with damaged files.

    Returns:
      Whether anything was damaged.
    """
    places = [pathlib.Path(run_dir)] + ([pathlib.Path(results)] if results is not None else [])
    found = {place: damage(place) for place in places}
    if not any(found.values()):
        return False
    said, moved, outcomes, evaluations = [], [], [], set()
    for place, twin in zip(places, places[1:] + places[:1]):
        for name, reason in found[place].items():
            said.append(f"{place / name}: {reason}")
            moved.append(move_aside(place / name))
            if twin != place and (twin / name).is_file() and name not in found[twin]:
                copy_file(twin / name, place / name)
                outcomes.append(f"{name} restored from {twin}")
            elif name not in CORE_FILES:
                evaluations.add(_evaluation(name))
    outcomes += _redo(places, found, evaluations, moved)
    warn(f"results of {what} are damaged ({'; '.join(said)}); moved aside to "
         f"{', '.join(map(str, moved))}; {'; '.join(outcomes)}")
    return True


def _redo(places, found, evaluations, moved):
    """Leaves the places so that what could not be put back is done again; says what."""
    run_dir, outcomes = places[0], []
    for name in sorted(evaluations):
        for place in places:  # the evaluation runs again only if neither place has it
            if (place / "eval" / f"{name}.json").is_file():
                moved.append(move_aside(place / "eval" / f"{name}.json"))
    lost = {name for place in places for name in found[place]
            if name in CORE_FILES and not (place / name).is_file()}
    if {CONFIG, HISTORY} & lost and run_dir.is_dir():  # train.py starts it anew
        kept = [path for path in moved if not path.is_relative_to(run_dir)]
        moved[:] = [*kept, move_aside(run_dir)]
    if lost:
        outcomes.append("running it again")
    elif evaluations:
        outcomes.append(f"running its evaluation {', '.join(sorted(evaluations))} again")
    return outcomes
