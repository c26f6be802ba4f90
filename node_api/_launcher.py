"""The task launcher: a warm process that forks one sandboxed process per task.

``python -s -P _launcher.py FD`` is started once per node by the executor,
with the same clean environment that a task gets (thread caps included, so
that numpy starts no threads) and its own session. It imports the standard
library, the task runtime and numpy, then serves requests on FD, one end of
an ``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair whose other end the node holds.
It never reads the node's configuration, database or keys: a request carries
everything a task needs.

Messages are JSON, one per packet. The launcher says ``{"ready": PID}`` once
its imports are done. For each request ``{"id", "workdir", "config",
"environment"}`` it forks a task process and answers ``{"id", "pid"}`` with
the read end of the pipe that carries the task's stdout and stderr, or
``{"id", "error"}`` when it cannot fork; when the task process ends it sends
``{"pid", "exit_code"}``, the code as ``subprocess`` reports it (negative
signal number or exit status). It stays single-threaded: a select loop,
woken by SIGCHLD through ``signal.set_wakeup_fd``, reaps its children. When
the node's end closes, it kills the process groups of the tasks still
running and exits.

A forked task process, before any of the task's code runs:

1. leads a new session (its own process group, which the node kills on
   timeout or cancel);
2. sends stdout and stderr to its pipe, reads stdin from /dev/null and closes
   every other file descriptor: the socketpair, the wakeup pipe, whatever the
   launcher held;
3. moves to the task workdir and takes the task's environment (HOME, TMPDIR
   and MPLCONFIGDIR inside the workdir);
4. restores the signal handlers and mask that a fresh interpreter has, and
   reseeds numpy's global random state (Python's ``random`` reseeds itself
   after a fork), so that no two tasks share a random stream;
5. confines itself with :func:`airfed.node_api._sandbox.confine`, the steps
   that the ``exec`` launcher applies, including clearing its capabilities;
6. runs the task runtime in-process, then exits with its status.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from airfed.node_api import _sandbox, runtime

with contextlib.suppress(ImportError):  # a node may run functions without numpy
    import numpy  # noqa: F401 - loaded once here, inherited by every task

_MAX_MESSAGE = 1 << 20
_REAP_SECONDS = 1.0
# What a fresh interpreter sets; every other signal has its default action.
_PYTHON_SIGNALS: dict[int, Callable[[int, FrameType | None], Any] | int] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGPIPE: signal.SIG_IGN,
    signal.SIGXFSZ: signal.SIG_IGN,
}


def main(argv: list[str]) -> int:
    conn = socket.socket(fileno=int(argv[1]))
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    _send(conn, {"ready": os.getpid()})
    running: set[int] = set()
    try:
        _serve(conn, wake_read, running)
    finally:
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    return 0


def _serve(conn: socket.socket, wake_read: int, running: set[int]) -> None:
    while True:
        ready, _, _ = select.select([conn.fileno(), wake_read], [], [], _REAP_SECONDS)
        if wake_read in ready:
            os.read(wake_read, 4096)
        if conn.fileno() in ready:
            data, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 1)
            for fd in fds:
                os.close(fd)
            if not data:
                return  # the node closed its end
            _start(conn, json.loads(data), running)
        _reap(conn, running)


def _start(conn: socket.socket, request: dict[str, Any], running: set[int]) -> None:
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        _send(conn, {"id": request["id"], "error": str(exc)})
        return
    if pid == 0:
        conn.detach()  # closed below with every other descriptor
        _task_process(write_end, request)
    os.close(write_end)
    running.add(pid)
    try:
        _send(conn, {"id": request["id"], "pid": pid}, read_end)
    finally:
        os.close(read_end)


def _reap(conn: socket.socket, running: set[int]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        running.discard(pid)
        _send(conn, {"pid": pid, "exit_code": os.waitstatus_to_exitcode(status)})


def _send(conn: socket.socket, message: dict[str, Any], fd: int | None = None) -> None:
    data = json.dumps(message).encode()
    socket.send_fds(conn, [data], [] if fd is None else [fd])


def _task_process(log: int, request: dict[str, Any]) -> None:
    """Steps 1 to 6 of the module docstring, in the forked child; never returns."""
    code = 1
    try:
        os.setsid()

        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))

        workdir = str(request["workdir"])
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(request["environment"])
        tempfile.tempdir = None  # computed again from TMPDIR
        sys.argv = [str(runtime.__file__), workdir]

        _default_signals()
        _reseed_numpy()

        _sandbox.confine(request["config"])

        code = runtime.main([workdir])
        _finish_like_an_interpreter()
    except BaseException:  # the task process reports anything, then exits
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _default_signals() -> None:
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, _PYTHON_SIGNALS.get(signum, signal.SIG_DFL))
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _reseed_numpy() -> None:
    random = sys.modules.get("numpy.random")
    if random is not None:
        random.seed()


def _finish_like_an_interpreter() -> None:
    """Wait for the function's non-daemon threads and run its atexit hooks."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
