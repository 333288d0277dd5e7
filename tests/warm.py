"""The tests' processes forked from a warm interpreter: one that imported TensorFlow.

A fresh interpreter spends about 4.5 s of CPU importing TensorFlow, Keras, the package
and tensorflow-datasets, most of a tiny run's time. Each pytest worker starts one server
process that imports them once (and starts nothing: TensorFlow's runtime is made in each
child, on its first op), then forks a child for each command it is sent. A child is a
real process: its own pid, environment, working directory, exit status (a negative
signal number if killed, as `subprocess` reports it), stdout and stderr; `send_signal`
reaches it, and it runs `python script args` as `__main__`, as a fresh interpreter
would; the `python` commands it starts (a study's train.py and `python -m eval`) are
forked from it in turn (`tests/warm_server.py`). What differs: what the interpreter
prints while importing (not in its stderr; `helpers.start(..., fresh=True)` shows that),
and the environment the imports read, which is the server's (`helpers.environment()`): a
command that needs another `KERAS_BACKEND` or `PYTHONPATH` gets a fresh interpreter.
"""

import json
import os
import pathlib
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

PRELOAD = ("gradmask_tf.trainer", "tensorflow_datasets")

SERVER = str(pathlib.Path(__file__).with_name("warm_server.py"))  # its program


class _Server:
    """The warm interpreter of this pytest worker and what it has reported."""

    def __init__(self, env, cwd):
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, SERVER, str(theirs.fileno()), ",".join(PRELOAD)],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self._lock = threading.Lock()
        self.codes = {}

    def _receive(self, timeout):
        """Reads one report (None if none came within `timeout` s)."""
        if not select.select([self._channel], [], [], timeout)[0]:
            if self._process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"the warm server died: {self._log.read()[-3000:]!r}")
            return None
        message = json.loads(self._channel.recv(1 << 16))
        if "exited" in message:
            self.codes[message["exited"]] = message["code"]
        return message

    def fork(self, request, stdout, stderr):
        with self._lock:
            socket.send_fds(self._channel, [json.dumps(request).encode()],
                            [stdout.fileno(), stderr.fileno()])
            while True:
                message = self._receive(60)
                if message and "started" in message:
                    return message["started"]

    def wait(self, pid, timeout):
        """The exit status of `pid`, or None if it has not ended within `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                while self._receive(0) is not None:
                    pass
                if pid in self.codes:
                    return self.codes[pid]
                left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._receive(left)


_servers = {}


def _server(env, cwd):
    """This pytest process's server, started with `env` on first use."""
    key = os.getpid()  # a forked pytest process would not share the channel
    if key not in _servers:
        _servers[key] = _Server(env, cwd)
    return _servers[key]


class WarmProcess:
    """A `subprocess.Popen` look-alike (text mode, stdout and stderr captured) whose
    process is forked from the warm interpreter."""

    def __init__(self, argv, module, env, cwd, server_env, start_new_session=False):
        """`env`: the child's environment; `server_env`: the one the warm interpreter
        imports with, if it is not yet started (the same for every command);
        `start_new_session`: the child leads a process group of its own, as with
        `Popen(start_new_session=True)`."""
        self.args = [sys.executable, *(["-m"] if module else []), *argv]
        self._outputs = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
        self._server = _server(server_env, cwd)
        request = dict(argv=argv, module=module, env=env, cwd=str(cwd),
                       session=start_new_session)
        self.pid = self._server.fork(request, *self._outputs)
        self.returncode = None

    def poll(self):
        return self.wait(timeout=0)

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = self._server.wait(self.pid, timeout)
            if self.returncode is None and timeout is not None and timeout > 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout=None):
        self.wait(timeout)
        texts = []
        for output in self._outputs:
            output.seek(0)
            texts.append(output.read().decode(errors="replace"))
        return tuple(texts)

    def send_signal(self, signal_number):
        if self.returncode is None:
            os.kill(self.pid, signal_number)

    def kill(self):
        self.send_signal(9)
