"""The task launchers: what a task process holds, and the warm fork server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from airfed.node_api._executor import ExecutionOutcome, Launcher, Limits, execute
from tests.node_api.workdirs import make_workdir

LIMITS = Limits(
    cpu_seconds=60, memory_bytes=2 * 1024**3, wall_seconds=120, max_output_bytes=10**8
)
REPORT = [{"identifier": "report", "kind": "model"}]
LAUNCHERS = pytest.mark.parametrize("launcher", ["fork", "exec"])

# Writes what the task process is to outputs/report.
REPORTING = """
    import ctypes, json, os, sys, time
    def open_fds():
        targets = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # the listing's own descriptor, closed by now
                pass
        return targets
    def train(ctx):
        lines = open("/proc/self/status").read().splitlines()
        status = dict(line.split(":\\t", 1) for line in lines)
        report = {
            "status": {k: v for k, v in status.items() if k.startswith("Cap")},
            "securebits": ctypes.CDLL(None).prctl(27, 0, 0, 0, 0),
            "fds": open_fds(),
            "numpy_loaded": "numpy" in sys.modules,
            "parent": os.getppid(),
            "pid": os.getpid(),
            "threads": len(os.listdir("/proc/self/task")),
        }
        report.update(EXTRA(ctx))
        ctx.output_path("report").write_text(json.dumps(report))
    def EXTRA(ctx):
        return {}
"""


def _run(
    tmp_path: Path, code: str = REPORTING, launcher: Launcher = "fork", **kw: object
) -> tuple[ExecutionOutcome, dict[str, object]]:
    workdir = make_workdir(tmp_path, code, outputs=REPORT, **kw)
    outcome = execute(workdir, LIMITS, launcher=launcher)
    assert outcome.status == "done", outcome.log
    report: dict[str, object] = json.loads((workdir / "outputs" / "report").read_text())
    return outcome, report


@LAUNCHERS
def test_task_process_has_no_capabilities(tmp_path: Path, launcher: Launcher) -> None:
    outcome, report = _run(tmp_path, launcher=launcher)

    assert report["status"] == {
        "CapInh": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapBnd": "0000000000000000",
        "CapAmb": "0000000000000000",
    }
    # SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED, all locked
    assert report["securebits"] == 0b101111
    assert "capabilities dropped" in outcome.log


@LAUNCHERS
def test_task_process_holds_only_its_stdin_and_log(
    tmp_path: Path, launcher: Launcher
) -> None:
    _, report = _run(tmp_path, launcher=launcher)

    fds = report["fds"]
    assert isinstance(fds, dict)
    assert sorted(fds) == ["0", "1", "2"]
    assert fds["0"] == "/dev/null"
    assert fds["1"].startswith("pipe:") and fds["1"] == fds["2"]


def test_numpy_is_loaded_once_by_the_launcher(tmp_path: Path) -> None:
    code = REPORTING.replace(
        "    def EXTRA(ctx):\n        return {}\n",
        """
    def EXTRA(ctx):
        import numpy
        return {
            "dot": float(numpy.dot(numpy.arange(4.0), numpy.arange(4.0))),
            "draw": float(numpy.random.random()),
            "threads_after_numpy": len(os.listdir("/proc/self/task")),
        }
""",
    )
    _, first = _run(tmp_path / "1", code)
    _, second = _run(tmp_path / "2", code)

    assert first["numpy_loaded"] is True  # before the function imported it
    assert first["dot"] == 14.0
    assert first["threads"] == first["threads_after_numpy"] == 1
    assert first["draw"] != second["draw"]  # each task has its own random stream
    assert first["parent"] == second["parent"]  # the same warm launcher


def test_exec_launcher_starts_a_fresh_interpreter(tmp_path: Path) -> None:
    _, report = _run(tmp_path, launcher="exec")

    assert report["numpy_loaded"] is False
    assert report["parent"] == os.getpid()


def test_launcher_is_started_again_after_it_was_killed(tmp_path: Path) -> None:
    _, first = _run(tmp_path / "1")
    launcher = first["parent"]
    assert isinstance(launcher, int) and launcher != os.getpid()

    os.kill(launcher, signal.SIGKILL)
    _wait_until_dead(launcher)
    outcome, second = _run(tmp_path / "2")

    assert outcome.exit_code == 0
    assert second["parent"] not in (launcher, os.getpid())


def test_task_fails_and_is_killed_when_its_launcher_dies(tmp_path: Path) -> None:
    code = """
        import os, time
        def train(ctx):
            (ctx.scratch_dir / "launcher").write_text(str(os.getppid()))
            (ctx.scratch_dir / "pid").write_text(str(os.getpid()))
            time.sleep(600)
    """
    workdir = make_workdir(tmp_path, code)
    scratch = workdir / "scratch"
    finished = threading.Event()

    def kill_launcher_once_started() -> None:
        while not (scratch / "pid").exists() and not finished.wait(0.05):
            pass
        if not finished.is_set():
            os.kill(int((scratch / "launcher").read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_launcher_once_started, daemon=True)
    killer.start()
    outcome = execute(workdir, LIMITS)
    finished.set()
    killer.join()

    assert outcome.status == "failed"
    assert outcome.exit_code is None
    assert outcome.error == (
        "the task launcher stopped while the task ran; submit the task again"
    )
    _wait_until_dead(int((scratch / "pid").read_text()))


def test_two_tasks_run_at_once(tmp_path: Path) -> None:
    code = REPORTING.replace(
        "    def EXTRA(ctx):\n        return {}\n",
        """
    def EXTRA(ctx):
        started = time.time()
        time.sleep(1.0)
        return {"started": started, "ended": time.time()}
""",
    )
    reports: dict[str, dict[str, object]] = {}

    def run(name: str) -> None:
        reports[name] = _run(tmp_path / name, code)[1]

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    a, b = reports["a"], reports["b"]
    assert a["pid"] != b["pid"]
    assert a["parent"] == b["parent"]
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"])


def _wait_until_dead(pid: int, timeout: float = 30.0) -> None:
    """Until ``pid`` is gone or a zombie (a test guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still alive")
