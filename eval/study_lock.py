"""One study per directory: the lock file `DIR/study.lock`.

Two `eval.study` processes on one study directory would train the same runs into the
same run directories. The study takes the lock before it writes anything and removes it
when it ends, also on an error. The lock file holds the host, the process id, its start
(the kernel's, where there is one: a reused process id is not taken for the holder) and
the time; it is written whole under a temporary name and linked to `study.lock`, which
fails if the file exists, so two studies never both take it. A lock whose process is
gone, on this host, is taken over (one line says so); one held from another host cannot
be checked from here and is taken only with `--break_lock`.

A Ray engine's trials are parts of the study that holds the lock: they take none.
"""

import datetime
import json
import os
import pathlib
import socket
import tempfile

LOCK = "study.lock"


class LockHeld(Exception):
    """Another study holds the directory; the one-line message names its host and process."""


def _process_start(pid):
    """The process's start in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder):
    """Whether the holder's process (on this host) still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _read(path):
    """The lock's contents, or None if it is unreadable (damaged)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder):
    return (f"process {holder.get('pid')} on host {holder.get('host')} "
            f"(started {holder.get('started', '?')})")


def _link(path, record):
    """Creates `path` holding `record`, whole, or raises FileExistsError."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(record, file)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)


def acquire(directory, *, break_lock=False, warn=print):
    """Takes the lock of study directory `directory` (which exists) for this process.

    Args:
      directory: The study directory.
      break_lock: Whether a lock held from another host, or unreadable, is taken.
        Defaults to False.
      warn: Called with one line when a lock is taken over.

    Returns:
      The lock's path, for `release`.

    Raises:
      LockHeld: Another study holds it (one line naming its host and process and what
        to do).
    """
    path = pathlib.Path(directory) / LOCK
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "process_start": _process_start(os.getpid()),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    for _ in range(3):  # a lock that vanishes while it is looked at: try again
        try:
            _link(path, record)
            return path
        except FileExistsError:
            pass
        holder = _read(path)
        if holder is not None and holder.get("host") == record["host"] and not _alive(holder):
            warn(f"taking over the lock {path} of {_describe(holder)}, which is gone")
        elif holder is None and break_lock:
            warn(f"taking over the unreadable lock {path} (--break_lock)")
        elif holder is not None and holder.get("host") != record["host"] and break_lock:
            warn(f"taking over the lock {path} of {_describe(holder)} (--break_lock)")
        else:
            raise LockHeld(_held(path, holder, record["host"]))
        _take(path, holder)
    raise LockHeld(f"{path}: another study took the lock while this one looked at it")


def _held(path, holder, host):
    """The one line of a lock that is not taken."""
    if holder is None:
        return (f"{path} is unreadable; if no study runs on this directory, pass "
                "--break_lock")
    if holder.get("host") == host:
        return (f"another study runs on {path.parent}: {_describe(holder)}; wait for it, "
                "or stop it")
    return (f"another study runs on {path.parent}: {_describe(holder)}, which cannot be "
            "checked from here; if it is no longer running, pass --break_lock")


def _take(path, holder):
    """Moves the stale lock aside, unless another study replaced it meanwhile."""
    stale = path.with_name(f".{LOCK}.stale-{os.getpid()}")
    try:
        os.replace(path, stale)
    except FileNotFoundError:
        return
    if _read(stale) != holder:  # another study's fresh lock: put it back
        try:
            os.link(stale, path)
        except FileExistsError:
            pass
    os.unlink(stale)


def release(path):
    """Removes the lock at `path` if this process holds it."""
    holder = _read(pathlib.Path(path))
    if holder is not None and holder.get("pid") == os.getpid() and (
            holder.get("host") == socket.gethostname()):
        pathlib.Path(path).unlink(missing_ok=True)
