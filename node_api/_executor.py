"""Run a task's function in an isolated subprocess.

:func:`execute` runs the task runtime for workdir W in a new process, confined
by the sandbox (``_sandbox.py``), and waits for it. The process comes from one
of two launchers:

- ``fork`` (the default): a warm task launcher per node (``_launcher.py``),
  started on first use and again if it died, with the runtime and numpy
  already loaded, forks the task process, which confines itself and runs the
  runtime in-process. If the launcher cannot start, tasks use ``exec``, and a
  warning says so once;
- ``exec``: ``python _sandbox.py CONFIG -- python -m airfed.node_api.runtime
  W``, which confines itself and execs a fresh interpreter. Tasks that ask for
  more than one thread use it too: the launcher's numpy has one.

Either way:

- the environment is rebuilt from an allowlist (PATH, LANG, HOME=W, TMPDIR
  inside W, PYTHONHASHSEED, thread caps): nothing of the node's environment,
  such as ``AIRFED_*`` settings, database URLs or keys, reaches the function;
- the working directory is W, the process leads a new session (its own
  process group), and stdout and stderr go to one bounded log;
- hard resource limits: CPU seconds (``RLIMIT_CPU``), memory
  (``RLIMIT_AS``), size of any file written (``RLIMIT_FSIZE``), open files,
  no core dumps. ``RLIMIT_AS`` counts address space, not resident memory:
  ``import torch`` maps about 600 MB, so a limit under 1 GiB breaks torch
  functions; the node's default is 4 GiB;
- Landlock confines file access to reading the interpreter, its libraries
  and airfed's code, and reading and writing W; it also forbids TCP
  connections. As root, the task gets an empty network namespace and runs
  without capabilities;
- wall time is enforced, and a cancel honoured, by killing the process group.

The two launchers give a task the same environment, limits, confinement and
log; a task of the ``fork`` launcher starts in about a millisecond instead of
two interpreter start-ups, and finds numpy imported.

The caller deletes the workdir with :func:`cleanup` when it has collected the
outputs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from airfed.node_api._task_launcher import (
    LauncherUnavailable,
    LaunchLost,
    TaskLauncher,
)
from airfed.node_api.errors import TaskFailed

__all__ = ["ExecutionOutcome", "Launcher", "Limits", "cleanup", "execute"]

logger = logging.getLogger(__name__)

_SANDBOX = Path(__file__).with_name("_sandbox.py")
_POLL_SECONDS = 0.05
_GROUP_EXIT_SECONDS = 2.0
_AIRFED_PACKAGES = ("sdk", "node_api", "ledger", "operators", "plugins", "dags")
_SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/ssl/certs",
    "/usr/share/zoneinfo",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
)

Status = Literal["done", "failed", "canceled"]
Launcher = Literal["fork", "exec"]
_LAUNCHER_THREADS = 1
_LOST = "the task launcher stopped while the task ran; submit the task again"


@dataclass(frozen=True)
class Limits:
    """Resources one task may use."""

    cpu_seconds: int
    memory_bytes: int
    wall_seconds: float
    max_output_bytes: int
    max_log_bytes: int = 1024 * 1024
    max_open_files: int = 1024
    threads: int = 1


@dataclass(frozen=True)
class ExecutionOutcome:
    """How a task's run ended; ``result`` is the parsed result.json, if any."""

    status: Status
    exit_code: int | None
    log: str
    result: dict[str, Any] | None
    duration_s: float
    error: str | None = None


class _TaskProcess(Protocol):
    """A started task process, whichever launcher started it."""

    @property
    def pid(self) -> int: ...
    @property
    def stdout(self) -> IO[bytes]: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def lost(self) -> bool: ...

    def wait_for(self, timeout: float | None) -> bool: ...


def execute(
    workdir: Path,
    limits: Limits,
    cancel: threading.Event | None = None,
    *,
    launcher: Launcher = "fork",
) -> ExecutionOutcome:
    """Run the task prepared in ``workdir`` in a sandboxed subprocess."""
    workdir = Path(workdir).resolve()
    if not (workdir / "task.json").is_file():
        raise TaskFailed(f"task workdir {workdir} has no task.json")
    (workdir / "result.json").unlink(missing_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        process = _start(workdir, limits, launcher)
    except LaunchLost:
        return _lost_at_start(limits, started)
    log = _BoundedLog(limits.max_log_bytes)
    reader = threading.Thread(target=log.consume, args=(process.stdout,), daemon=True)
    reader.start()
    stop_reason = _wait(process, limits, cancel)
    leftovers = _kill_group(process.pid)
    reader.join()
    if leftovers:
        _wait_until_group_dead(process.pid)
    outcome = _outcome(workdir, process, stop_reason, log, limits, started)
    logger.info(
        "task process ended workdir=%s status=%s exit_code=%s duration_s=%.3f",
        workdir.name,
        outcome.status,
        outcome.exit_code,
        outcome.duration_s,
    )
    return outcome


def cleanup(workdir: Path) -> None:
    """Delete a task workdir: the function's code, inputs and leftovers."""
    shutil.rmtree(workdir, onerror=_retry_writable)
    if Path(workdir).exists():
        logger.warning("task workdir left behind workdir=%s", workdir)


def _retry_writable(function: Any, path: str, _: Any) -> None:
    """A function may leave read-only folders; make them writable and retry."""
    with contextlib.suppress(OSError):
        Path(path).parent.chmod(0o700)
        Path(path).chmod(0o700)
        function(path)


def _start(workdir: Path, limits: Limits, launcher: Launcher) -> _TaskProcess:
    if launcher == "fork" and limits.threads == _LAUNCHER_THREADS:
        config = _config(workdir, limits)
        environment = _environment(workdir, limits)
        for _ in range(2):  # a launcher found dead is replaced once
            task_launcher = _task_launcher()
            if task_launcher is None:
                break
            try:
                return task_launcher.launch(str(workdir), config, environment)
            except LauncherUnavailable:
                continue
    return _ExecProcess(
        subprocess.Popen(
            _command(workdir, limits),
            cwd=workdir,
            env=_environment(workdir, limits),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    )


class _ExecProcess:
    """A task process of the ``exec`` launcher: the executor's own child."""

    lost = False

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._process = process
        self.pid = process.pid
        self.stdout: IO[bytes] = process.stdout

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def wait_for(self, timeout: float | None) -> bool:
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


_launcher_lock = threading.Lock()
_launcher: TaskLauncher | None = None
_launcher_unavailable = False


def _task_launcher() -> TaskLauncher | None:
    """The node's task launcher, started if needed; None if it cannot start."""
    global _launcher, _launcher_unavailable
    with _launcher_lock:
        if _launcher is not None and _launcher.alive:
            return _launcher
        if _launcher_unavailable:
            return None
        if _launcher is not None:
            logger.warning(
                "task launcher stopped, starting another pid=%s exit_code=%s",
                _launcher.process.pid,
                _launcher.process.poll(),
            )
            _launcher.stop()
        try:
            _launcher = TaskLauncher.start(_launcher_environment())
        except LauncherUnavailable as exc:
            logger.warning(
                "task launcher unavailable, tasks start with exec error=%s", exc
            )
            _launcher, _launcher_unavailable = None, True
            return None
        logger.info("task launcher started pid=%s", _launcher.process.pid)
        return _launcher


def _lost_at_start(limits: Limits, started: float) -> ExecutionOutcome:
    error = "the task launcher stopped while starting the task; submit it again"
    log = _BoundedLog(limits.max_log_bytes)
    log.write(f"airfed: {error}\n".encode())
    return ExecutionOutcome(
        status="failed",
        exit_code=None,
        log=log.text(),
        result=None,
        duration_s=time.monotonic() - started,
        error=error,
    )


def _command(workdir: Path, limits: Limits) -> list[str]:
    config = _config(workdir, limits)
    python = sys.executable
    runtime = [python, "-s", "-P", "-m", "airfed.node_api.runtime", str(workdir)]
    return [python, "-s", "-P", str(_SANDBOX), json.dumps(config), "--", *runtime]


def _config(workdir: Path, limits: Limits) -> dict[str, Any]:
    """What the sandbox applies: limits, network, readable and writable paths."""
    return {
        "rlimits": {
            "RLIMIT_CPU": limits.cpu_seconds,
            "RLIMIT_AS": limits.memory_bytes,
            "RLIMIT_FSIZE": limits.max_output_bytes,
            "RLIMIT_NOFILE": limits.max_open_files,
            "RLIMIT_CORE": 0,
        },
        "isolate_network": True,
        "read": _readable_paths(),
        "write": [str(workdir), "/dev/null"],
    }


def _readable_paths() -> list[str]:
    """What a task may read besides its workdir: Python, libraries, airfed."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(sysconfig.get_paths().values())
    paths.add(str(Path(sys.executable).resolve().parent))
    for package in _AIRFED_PACKAGES:
        spec = importlib.util.find_spec(f"airfed.{package}")
        if spec is not None and spec.submodule_search_locations:
            paths.update(spec.submodule_search_locations)
    paths.update(_SYSTEM_READ)
    return sorted(paths)


def _environment(workdir: Path, limits: Limits) -> dict[str, str]:
    return {
        **_shared_environment(limits.threads),
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "MPLCONFIGDIR": str(workdir / "tmp"),
    }


def _launcher_environment() -> dict[str, str]:
    """The task environment without its workdir: each task process sets that."""
    return _shared_environment(_LAUNCHER_THREADS)


def _shared_environment(thread_count: int) -> dict[str, str]:
    threads = str(thread_count)
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "NUMEXPR_NUM_THREADS": threads,
        "JOBLIB_MULTIPROCESSING": "0",  # its semaphores live in /dev/shm, not W
    }


def _wait(
    process: _TaskProcess, limits: Limits, cancel: threading.Event | None
) -> str | None:
    """Wait for the process; kill its group on cancel or timeout and say why."""
    deadline = time.monotonic() + limits.wall_seconds
    while True:
        if process.wait_for(_POLL_SECONDS):
            return "lost" if process.lost else None
        if cancel is not None and cancel.is_set():
            reason = "canceled"
        elif time.monotonic() > deadline:
            reason = "wall"
        else:
            continue
        _kill_group(process.pid)
        process.wait_for(None)
        return reason


def _kill_group(pgid: int) -> bool:
    """Kill every process of the group; False if it had none left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # all of them already exited
        return False
    return True


def _wait_until_group_dead(pgid: int) -> None:
    """Wait, a little, until the killed processes of the group have exited.

    A killed process closes its files, so the log ends, a moment before it
    is a zombie; the task is over only once none of its processes runs.
    """
    deadline = time.monotonic() + _GROUP_EXIT_SECONDS
    while _group_runs(pgid) and time.monotonic() < deadline:
        time.sleep(0.005)


def _group_runs(pgid: int) -> bool:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
            return True
    return False


def _outcome(
    workdir: Path,
    process: _TaskProcess,
    stop_reason: str | None,
    log: _BoundedLog,
    limits: Limits,
    started: float,
) -> ExecutionOutcome:
    result = _read_result(workdir)
    code = process.returncode
    status: Status
    if stop_reason == "canceled":
        status, error = "canceled", "the task was canceled"
    elif stop_reason == "wall":
        status = "failed"
        error = f"the task exceeded its wall time limit of {limits.wall_seconds:g} s"
    elif stop_reason == "lost":
        status, error = "failed", _LOST
    elif code == 0 and result is not None and result.get("status") == "done":
        status, error = "done", None
    else:
        status = "failed"
        error = _failure(code, result, limits)
    if error is not None and (result is None or result.get("error") != error):
        log.write(f"airfed: {error}\n".encode())
    return ExecutionOutcome(
        status=status,
        exit_code=code,
        log=log.text(),
        result=result,
        duration_s=time.monotonic() - started,
        error=error,
    )


def _failure(code: int | None, result: dict[str, Any] | None, limits: Limits) -> str:
    if result is not None and result.get("error"):
        return str(result["error"])
    if code == -signal.SIGXCPU:
        return f"the task exceeded its CPU time limit of {limits.cpu_seconds} s"
    if code == -signal.SIGKILL:
        return (
            "the task's process was killed: it exceeded its CPU time limit "
            f"of {limits.cpu_seconds} s or the machine ran out of memory"
        )
    if code is not None and code < 0:
        return f"the task's process was killed by {signal.Signals(-code).name}"
    return f"the task's process exited with status {code} without a result"


def _read_result(workdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((workdir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _BoundedLog:
    """Keeps the head and the tail of a stream, dropping the middle."""

    def __init__(self, limit: int) -> None:
        self._half = max(limit // 2, 1)
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0

    def consume(self, stream: Any) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            self.write(chunk)
        stream.close()

    def write(self, data: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        excess = len(self._tail) - self._half
        if excess > 0:
            del self._tail[:excess]
            self._dropped += excess

    def text(self) -> str:
        middle = b""
        if self._dropped:
            middle = f"\n[... {self._dropped} bytes of log dropped ...]\n".encode()
        return (bytes(self._head) + middle + bytes(self._tail)).decode(
            "utf-8", errors="replace"
        )
