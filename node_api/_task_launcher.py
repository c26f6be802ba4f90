"""The node's side of the task launcher (``_launcher.py``, the fork server).

:meth:`TaskLauncher.start` runs the launcher with a socketpair and waits until
it has loaded the runtime; :meth:`TaskLauncher.launch` asks it for one task
process and returns a :class:`LaunchedTask`: its pid (which is also its
process group), the pipe of its log, and an event set when it ends. One
reader thread per launcher dispatches the launcher's messages to the waiting
tasks. When the launcher dies, every task it started is marked lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["LaunchLost", "LaunchedTask", "LauncherUnavailable", "TaskLauncher"]

logger = logging.getLogger(__name__)

_SCRIPT = Path(__file__).with_name("_launcher.py")
_MAX_MESSAGE = 1 << 16
_READY_SECONDS = 60.0
_STOP_SECONDS = 5.0


class LauncherUnavailable(Exception):
    """The launcher could not start, or is gone: no task was started."""


class LaunchLost(Exception):
    """The launcher died after a request: whether the task started is unknown."""


class LaunchedTask:
    """A task process forked by the launcher."""

    def __init__(self, pid: int, stdout: IO[bytes]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self.lost = False
        self._ended = threading.Event()

    def wait_for(self, timeout: float | None) -> bool:
        """True once the process ended, or its launcher died."""
        return self._ended.wait(timeout)

    def _end(self, returncode: int | None) -> None:
        self.returncode = returncode
        self.lost = returncode is None
        self._ended.set()


@dataclass
class _Request:
    done: threading.Event = field(default_factory=threading.Event)
    task: LaunchedTask | None = None
    error: str | None = None


class TaskLauncher:
    """A running launcher process and the reader of its messages."""

    def __init__(self, process: subprocess.Popen[bytes], conn: socket.socket) -> None:
        self.process = process
        self._conn = conn
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._dead = False
        self._next_id = 0
        self._requests: dict[int, _Request] = {}
        self._tasks: dict[int, LaunchedTask] = {}
        self._reader = threading.Thread(
            target=self._read, name="task-launcher-reader", daemon=True
        )
        self._reader.start()

    @classmethod
    def start(cls, environment: dict[str, str]) -> TaskLauncher:
        """Run the launcher; raise LauncherUnavailable if it does not get ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-s", "-P", str(_SCRIPT), str(theirs.fileno())]
        try:
            process = subprocess.Popen(
                command,
                cwd="/",
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise LauncherUnavailable(str(exc)) from exc
        finally:
            theirs.close()
        launcher = cls(process, ours)
        if not launcher._ready.wait(_READY_SECONDS) or not launcher.alive:
            launcher.stop()
            raise LauncherUnavailable(
                f"the launcher was not ready (exit code {process.poll()})"
            )
        return launcher

    @property
    def alive(self) -> bool:
        return not self._dead and self.process.poll() is None

    def launch(
        self, workdir: str, config: dict[str, Any], environment: dict[str, str]
    ) -> LaunchedTask:
        """Fork a task process for ``workdir``; return it once it runs."""
        request = _Request()
        with self._lock:
            if self._dead:
                raise LauncherUnavailable("the launcher is gone")
            self._next_id += 1
            key = self._next_id
            self._requests[key] = request
        message = {
            "id": key,
            "workdir": workdir,
            "config": config,
            "environment": environment,
        }
        try:
            self._conn.send(json.dumps(message).encode())
        except OSError as exc:
            with self._lock:
                self._requests.pop(key, None)
            raise LauncherUnavailable(str(exc)) from exc
        request.done.wait()
        if request.task is not None:
            return request.task
        if request.error is not None:
            raise OSError(f"the task launcher could not fork: {request.error}")
        raise LaunchLost("the task launcher stopped while starting the task")

    def stop(self) -> None:
        """Close the launcher's socket: it kills the tasks it runs and exits."""
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_RDWR)
        try:
            self.process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._reader.join()
        self._conn.close()

    def _read(self) -> None:
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(
                    self._conn, _MAX_MESSAGE, 1, socket.MSG_CMSG_CLOEXEC
                )
                if not data:
                    break
                self._dispatch(json.loads(data), fds)
        except (OSError, ValueError):
            logger.debug("task launcher connection failed", exc_info=True)
        finally:
            self._lose_everything()

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        if "ready" in message:
            self._ready.set()
        elif "exit_code" in message:
            with self._lock:
                task = self._tasks.pop(int(message["pid"]), None)
            if task is not None:
                task._end(int(message["exit_code"]))
        else:
            with self._lock:
                request = self._requests.pop(int(message["id"]))
            if "pid" in message and fds:
                log = os.fdopen(fds[0], "rb")  # the executor's log reader closes it
                task = LaunchedTask(int(message["pid"]), log)
                with self._lock:
                    self._tasks[task.pid] = task
                request.task = task
            else:
                request.error = str(message.get("error", "no pipe received"))
                for fd in fds:
                    os.close(fd)
            request.done.set()

    def _lose_everything(self) -> None:
        with self._lock:
            self._dead = True
            requests, self._requests = list(self._requests.values()), {}
            tasks, self._tasks = list(self._tasks.values()), {}
        for request in requests:
            request.done.set()
        for task in tasks:
            task._end(None)
        self._ready.set()
        code = self.process.wait()
        logger.info("task launcher ended pid=%s exit_code=%s", self.process.pid, code)
