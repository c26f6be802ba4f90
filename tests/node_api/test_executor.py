"""Running a task in an isolated subprocess: real processes, real limits."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from airfed.node_api._executor import ExecutionOutcome, Limits, cleanup, execute
from airfed.node_api.errors import TaskFailed
from tests.node_api.workdirs import make_workdir

LIMITS = Limits(
    cpu_seconds=60, memory_bytes=2 * 1024**3, wall_seconds=120, max_output_bytes=10**8
)

GOOD = """
    def train(ctx):
        print("training on", ctx.worker)
        ctx.output_path("model").write_bytes(b"weights")
        ctx.record_performance("accuracy", 0.875)
"""

REPORT = {"outputs": [{"identifier": "report", "kind": "model"}]}


def _run(
    tmp_path: Path, code: str, limits: Limits = LIMITS, **kw: object
) -> ExecutionOutcome:
    workdir = make_workdir(tmp_path, code, **kw)  # type: ignore[arg-type]
    return execute(workdir, limits)


def _report(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (tmp_path / "task" / "outputs" / "report").read_text()
    )
    return data


def test_function_succeeds(tmp_path: Path) -> None:
    outcome = _run(tmp_path, GOOD)

    assert outcome.status == "done", outcome.log
    assert outcome.exit_code == 0
    assert outcome.error is None
    assert outcome.result == {
        "status": "done",
        "outputs": {"model": "outputs/model"},
        "performances": {"accuracy": 0.875},
        "error": None,
    }
    assert (tmp_path / "task" / "outputs" / "model").read_bytes() == b"weights"
    assert "training on a" in outcome.log
    assert "files confined (Landlock" in outcome.log
    assert outcome.duration_s > 0


def test_function_that_raises_fails_with_its_traceback_in_the_log(
    tmp_path: Path,
) -> None:
    outcome = _run(tmp_path, "def train(ctx):\n    raise KeyError('label')\n")

    assert outcome.status == "failed"
    assert outcome.exit_code == 1
    assert outcome.error == "KeyError: 'label'"
    assert outcome.result is not None and outcome.result["status"] == "failed"
    assert "Traceback (most recent call last)" in outcome.log


def test_cpu_limit_stops_a_busy_function(tmp_path: Path) -> None:
    limits = Limits(cpu_seconds=1, memory_bytes=2 * 1024**3, wall_seconds=120,
                    max_output_bytes=10**8)  # fmt: skip
    outcome = _run(tmp_path, "def train(ctx):\n    while True:\n        pass\n", limits)

    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error == "the task exceeded its CPU time limit of 1 s"
    assert outcome.error in outcome.log


def test_memory_limit_stops_a_greedy_function(tmp_path: Path) -> None:
    limits = Limits(cpu_seconds=60, memory_bytes=512 * 1024**2, wall_seconds=120,
                    max_output_bytes=10**8)  # fmt: skip
    code = "def train(ctx):\n    block = bytearray(1024 ** 3)\n"

    outcome = _run(tmp_path, code, limits)

    assert outcome.status == "failed"
    assert outcome.error == "MemoryError"


def test_default_memory_limit_lets_torch_import(tmp_path: Path) -> None:
    code = """
        def train(ctx):
            import torch
            weights = torch.nn.Linear(4, 1).state_dict()
            torch.save(weights, ctx.output_path("model"))
            ctx.record_performance("accuracy", 1.0)
    """
    limits = Limits(cpu_seconds=120, memory_bytes=2 * 1024**3, wall_seconds=300,
                    max_output_bytes=10**8)  # fmt: skip
    outcome = _run(tmp_path, code, limits)
    assert outcome.status == "done", outcome.log


def test_wall_time_limit_kills_a_sleeping_function(tmp_path: Path) -> None:
    code = "import time\ndef train(ctx):\n    time.sleep(600)\n"
    limits = Limits(cpu_seconds=60, memory_bytes=2 * 1024**3, wall_seconds=1,
                    max_output_bytes=10**8)  # fmt: skip

    outcome = _run(tmp_path, code, limits)

    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error == "the task exceeded its wall time limit of 1 s"
    assert outcome.error in outcome.log


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    code = """
        import subprocess, sys, time
        def train(ctx):
            sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
            child = subprocess.Popen(sleeper)
            (ctx.scratch_dir / "child.pid").write_text(str(child.pid))
            (ctx.scratch_dir / "started").write_text("yes")
            time.sleep(600)
    """
    workdir = make_workdir(tmp_path, code)
    cancel = threading.Event()
    started = workdir / "scratch" / "started"

    finished = threading.Event()

    def cancel_once_started() -> None:
        while not started.exists() and not finished.wait(0.05):
            pass
        cancel.set()

    canceller = threading.Thread(target=cancel_once_started, daemon=True)
    canceller.start()
    outcome = execute(workdir, LIMITS, cancel)
    finished.set()
    canceller.join()

    assert outcome.status == "canceled"
    assert outcome.result is None
    assert outcome.error == "the task was canceled"
    assert not _alive(int((workdir / "scratch" / "child.pid").read_text()))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_function_cannot_see_the_nodes_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFED_NODE_DATABASE_URL", "postgresql://node:s3cret@db/node")
    monkeypatch.setenv("NODE_API_TOKEN", "afn_topsecret")
    key_file = tmp_path / "a" / "identity.key"
    key_file.parent.mkdir()
    key_file.write_text("PRIVATE KEY MATERIAL")
    code = f"""
        import json, os
        def attempt(read):
            try:
                return read()
            except OSError as exc:
                return type(exc).__name__
        def train(ctx):
            parent = f"/proc/{{os.getppid()}}/environ"
            report = {{
                "environ": dict(os.environ),
                "parent": attempt(lambda: open(parent).read()),
                "key": attempt(lambda: open({str(key_file)!r}).read()),
            }}
            ctx.output_path("report").write_text(json.dumps(report))
    """

    outcome = _run(tmp_path, code, **REPORT)

    assert outcome.status == "done", outcome.log
    report = _report(tmp_path)
    assert "AIRFED_NODE_DATABASE_URL" not in report["environ"]  # type: ignore[operator]
    assert "NODE_API_TOKEN" not in report["environ"]  # type: ignore[operator]
    assert report["environ"]["HOME"] == str(tmp_path / "task")  # type: ignore[index]
    assert report["parent"] == "PermissionError"
    assert report["key"] == "PermissionError"
    assert "s3cret" not in outcome.log and "topsecret" not in outcome.log


def test_function_cannot_write_outside_its_workdir(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    code = f"""
        import json, os
        def attempt(write):
            try:
                write()
                return "written"
            except OSError as exc:
                return type(exc).__name__
        def train(ctx):
            report = {{
                "outside": attempt(lambda: open({str(outside)!r}, "w").write("x")),
                "tmp": attempt(lambda: open("/tmp/airfed-escape", "w").write("x")),
                "scratch": attempt(lambda: (ctx.scratch_dir / "x").write_text("x")),
                "extra": attempt(lambda: open("outputs/extra", "w").write("x")),
            }}
            ctx.output_path("report").write_text(json.dumps(report))
    """

    outcome = _run(tmp_path, code, **REPORT)

    assert outcome.status == "done", outcome.log
    assert _report(tmp_path) == {
        "outside": "PermissionError",
        "tmp": "PermissionError",
        "scratch": "written",
        "extra": "written",
    }
    assert not outside.exists()
    assert outcome.result is not None
    assert outcome.result["outputs"] == {"report": "outputs/report"}


def test_function_cannot_reach_the_network_nor_unix_sockets(tmp_path: Path) -> None:
    unix_path = tmp_path / "node.sock"
    with socket.socket() as server, socket.socket(socket.AF_UNIX) as unix_server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        unix_server.bind(str(unix_path))
        unix_server.listen()
        code = f"""
            import json, socket
            def attempt(connect):
                try:
                    connect()
                    return "connected"
                except OSError as exc:
                    return type(exc).__name__
            def unix():
                socket.socket(socket.AF_UNIX).connect({str(unix_path)!r})
            def udp():
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                    b"x", ("127.0.0.1", {server.getsockname()[1]}))
            def train(ctx):
                report = {{
                    "tcp": attempt(lambda: socket.create_connection(
                        ("127.0.0.1", {server.getsockname()[1]}), timeout=5)),
                    "unix": attempt(unix),
                    "udp": attempt(udp),
                    "pair": attempt(socket.socketpair),
                }}
                ctx.output_path("report").write_text(json.dumps(report))
        """
        outcome = _run(tmp_path, code, **REPORT)

    assert outcome.status == "done", outcome.log
    assert _report(tmp_path) == {
        "tcp": "PermissionError",
        "unix": "PermissionError",
        "udp": "PermissionError",
        "pair": "connected",
    }


def test_output_file_size_is_limited(tmp_path: Path) -> None:
    limits = Limits(cpu_seconds=60, memory_bytes=2 * 1024**3, wall_seconds=120,
                    max_output_bytes=1024 * 1024)  # fmt: skip
    code = """
        def train(ctx):
            ctx.output_path("model").write_bytes(bytes(2 * 1024 * 1024))
    """
    outcome = _run(tmp_path, code, limits)
    assert outcome.status == "failed"
    assert outcome.error is not None and "File too large" in outcome.error


def test_log_is_bounded(tmp_path: Path) -> None:
    limits = Limits(cpu_seconds=60, memory_bytes=2 * 1024**3, wall_seconds=120,
                    max_output_bytes=10**8, max_log_bytes=64 * 1024)  # fmt: skip
    code = """
        import sys
        def train(ctx):
            print("FIRST LINE")
            for _ in range(50_000):
                print("x" * 99)
            print("LAST LINE")
            raise RuntimeError("done printing")
    """
    outcome = _run(tmp_path, code, limits)

    assert outcome.status == "failed"
    assert len(outcome.log) < 70 * 1024
    assert outcome.log.index("FIRST LINE") < outcome.log.index("bytes of log dropped")
    assert "LAST LINE" in outcome.log
    assert "RuntimeError: done printing" in outcome.log


def test_stale_result_is_not_trusted(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path, "import os\ndef train(ctx):\n    os._exit(3)\n")
    (workdir / "result.json").write_text('{"status": "done"}')

    outcome = execute(workdir, LIMITS)

    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error == "the task's process exited with status 3 without a result"


def test_workdir_without_task_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TaskFailed, match=r"has no task\.json"):
        execute(tmp_path, LIMITS)


def test_cleanup_deletes_the_workdir(tmp_path: Path) -> None:
    code = (
        GOOD
        + """
        import os
        (ctx.scratch_dir / "locked" / "deep").mkdir(parents=True)
        (ctx.scratch_dir / "locked" / "deep" / "file").write_text("x")
        os.chmod(ctx.scratch_dir / "locked" / "deep", 0o500)
        os.chmod(ctx.scratch_dir / "locked", 0o500)
    """
    )
    outcome = _run(tmp_path, code)
    assert outcome.status == "done", outcome.log
    cleanup(tmp_path / "task")
    assert not (tmp_path / "task").exists()


def test_node_environment_is_unchanged_by_a_run(tmp_path: Path) -> None:
    before = dict(os.environ)
    _run(tmp_path, GOOD)
    assert dict(os.environ) == before
