"""The warm interpreter of a pytest worker (tests/warm.py): imports the modules named
on its command line once, then forks a child for each command it is sent.

Run as `python tests/warm_server.py FD MODULES`: FD is its end of a socket pair, MODULES
the comma-separated modules to import. It reads a request (a JSON packet with the
child's stdout and stderr as file descriptors), forks, answers with the child's pid,
and reports each exit status. A child runs its command as `__main__`, and the `python`
commands that child starts in turn (a study's train.py) are forked from it too, where
a fork is safe (`forkable`).
"""

import atexit
import importlib
import inspect
import json
import os
import pathlib
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the project's root
# The environment variables the imports read, as this server imported with them.
IMPORTED_WITH = ("KERAS_BACKEND", "PYTHONPATH")

_execute_child = subprocess.Popen._execute_child
_SIGNATURE = inspect.signature(_execute_child)


def run_as_main(argv, module):
    """Runs `python argv` (`python -m argv` if `module`) here as `__main__`, then ends
    this process with its exit status, as the interpreter would."""
    code = 1
    try:
        sys.argv = list(argv)
        if module:
            sys.path[0] = ""  # the working directory, as `python -m` has it
            runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        if exit.code is not None and not isinstance(exit.code, int):
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # as an interpreter's exit would
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def forkable(args, executable, env, shell, imported_with):
    """`(argv, module)` of a `python` command line that may be forked from this process
    rather than started afresh, or None.

    Only the project's own commands (a script or module of `ROOT`; another program's
    `python` helpers start as that program expects), only from a process that has
    started nothing a fork would break (one thread, no JAX backend, no TensorFlow
    runtime: importing either makes none), and only for a command whose environment
    gives the imports what they were given here.
    """
    if shell or executable not in (None, sys.executable) or not isinstance(args, (list, tuple)):
        return None
    args = [os.fspath(arg) for arg in args]
    if len(args) < 2 or args[0] != sys.executable or threading.active_count() > 1:
        return None
    if args[1] == "-m" and len(args) > 2:
        argv, module = args[2:], True
        top = argv[0].split(".")[0]
        ours = (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file()
    elif args[1].endswith(".py"):
        argv, module = args[1:], False
        ours = ROOT in pathlib.Path(argv[0]).resolve().parents
    else:
        return None
    if not ours:
        return None  # another program's python (Ray's own processes, say)
    given = os.environ if env is None else env
    if any(given.get(name) != value for name, value in imported_with.items()):
        return None
    xla_bridge = sys.modules.get("jax._src.xla_bridge")  # Keras imports some of JAX
    if xla_bridge is not None and getattr(xla_bridge, "_backends", True):
        return None
    context = sys.modules.get("tensorflow.python.eager.context")
    made = context is not None and context.context_safe() is not None
    if made and context.context_safe()._context_handle is not None:
        return None
    return argv, module


def forking_execute_child(imported_with, handlers):
    """A `Popen._execute_child` that forks a `python` command from this process (where
    `forkable` allows) instead of starting a fresh interpreter.

    The fork sets up what `subprocess` would (standard streams, working directory,
    environment, session, `preexec_fn`) and drops what this process set up for itself
    (its `atexit` functions, its Python signal handlers: `handlers` are a fresh
    interpreter's).
    """

    def execute_child(self, *args, **kwargs):
        given = _SIGNATURE.bind(self, *args, **kwargs).arguments
        command = forkable(given["args"], given["executable"], given["env"], given["shell"],
                           imported_with)
        unusual = (given["uid"] not in (None, -1) or given["gid"] not in (None, -1)
                   or given["gids"] or given["umask"] not in (None, -1) or given["pass_fds"])
        if command is None or unusual:
            return _execute_child(self, *args, **kwargs)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                atexit._clear()
                for number, handler in handlers.items():
                    if signal.getsignal(number) is not handler:
                        signal.signal(number, handler)
                for name in ("p2cwrite", "c2pread", "errread"):  # the parent's ends
                    if given[name] != -1:
                        os.close(given[name])
                for name, target in (("p2cread", 0), ("c2pwrite", 1), ("errwrite", 2)):
                    if given[name] != -1:
                        os.dup2(given[name], target)
                if given["cwd"] is not None:
                    os.chdir(given["cwd"])
                if given["env"] is not None:
                    os.environ.clear()
                    os.environ.update(given["env"])
                if given["start_new_session"]:
                    os.setsid()
                if given.get("process_group", -1) not in (None, -1):
                    os.setpgid(0, given["process_group"])
                if given["preexec_fn"] is not None:
                    given["preexec_fn"]()
            except BaseException:
                traceback.print_exc()
                os._exit(255)
            run_as_main(*command)
        self.pid = pid
        self._child_created = True
        self._close_pipe_fds(given["p2cread"], given["p2cwrite"], given["c2pread"],
                             given["c2pwrite"], given["errread"], given["errwrite"])

    return execute_child


def child(channel, request, stdout, stderr, imported_with, handlers):
    """The forked child: becomes the command of `request`."""
    try:
        channel.close()
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["session"]:
            os.setsid()
        subprocess.Popen._execute_child = forking_execute_child(imported_with, handlers)
    except BaseException:
        traceback.print_exc()
        os._exit(255)
    run_as_main(request["argv"], request["module"])


def main(fd, modules):
    channel = socket.socket(fileno=fd)
    for module in modules:
        importlib.import_module(module)
    imported_with = {name: os.environ.get(name) for name in IMPORTED_WITH}
    # A fresh interpreter's Python signal handlers (importing sets none).
    handlers = {number: signal.getsignal(number) for number in signal.valid_signals()
                if signal.getsignal(number) is not None}
    children = set()
    while True:
        ready = select.select([channel], [], [], 0.01 if children else None)[0]
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            channel.send(json.dumps(
                {"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())
        if not ready:
            continue
        message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 2)
        if not message:
            break  # the pytest worker ended
        pid = os.fork()
        if pid == 0:
            child(channel, json.loads(message), *fds, imported_with, handlers)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        channel.send(json.dumps({"started": pid}).encode())


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","))
