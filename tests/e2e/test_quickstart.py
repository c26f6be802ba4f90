"""``airfed quickstart`` as a newcomer runs it: a real subprocess, real nodes,
the real ledger processes and Airflow on its embedded default."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.airflow]

_LAUNCH = "from airfed.sdk.cli import main; main()"
_ORGANIZATIONS = ("org1", "org2", "org3")


def _command(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        _LAUNCH,
        "quickstart",
        "--json",
        "--workdir",
        str(workdir),
        *args,
    ]


def _state(workdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((workdir / "quickstart.json").read_text())
    return data


def _sessions_alive(leaders: set[int]) -> list[str]:
    """Processes that are, or descend in their session from, ``leaders``.

    Every service the quickstart starts leads a session of its own, so a
    process left behind by any of them still carries its session id.
    """
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name: state, ppid, pgrp, session, ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) in leaders:
            left.append(f"{entry.name} {stat.split(' ', 2)[1]}")
    return left


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _mentioning(workdir: Path) -> list[str]:
    """Processes whose command line or environment names ``workdir``."""
    needle = str(workdir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in seen:
            found.append(f"{entry.name} {seen[:200]!r}")
    return found


def _assert_nothing_left(workdir: Path) -> None:
    state = _state(workdir)
    leaders = set(state["processes"].values())
    assert leaders, "the quickstart recorded no process"
    assert _sessions_alive(leaders) == []
    assert _mentioning(workdir) == []
    assert [p for p in state["ports"] if _port_in_use(p)] == []


def test_quickstart_trains_together_reports_every_round_and_stops_everything(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "work"

    result = subprocess.run(
        _command(workdir, "--rounds", "2"),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert answer["status"] == "done"
    assert answer["plan_key"]
    performances = answer["performances"]
    models = {"federated", *(f"local:{org}" for org in _ORGANIZATIONS)}
    assert set(performances) == models
    for model in models:
        accuracy = performances[model]["accuracy"]
        assert set(accuracy) == {"1", "2"}, model
        assert all(0.0 <= value <= 1.0 for value in accuracy.values()), model
    _assert_nothing_left(workdir)


def test_ctrl_c_while_starting_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    process = subprocess.Popen(
        _command(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_nodes_launched(workdir, process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130
    assert stdout == ""
    assert stderr.strip().splitlines()[-1].startswith("interrupted")
    _assert_nothing_left(workdir)


def test_a_folder_with_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")

    result = subprocess.run(
        _command(workdir), capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--force" in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]


def test_a_node_that_cannot_start_fails_the_run_in_one_line(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    broken = {**os.environ, "AIRFED_NODE_DATABASE_URL": "nosuchdriver://nowhere/x"}

    result = subprocess.run(
        _command(workdir),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=broken,
    )

    assert result.returncode == 1
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: node-org")
    assert "nosuchdriver" in last  # why the node stopped, from its log
    assert str(workdir / "logs") in last
    _assert_nothing_left(workdir)


def _wait_for_nodes_launched(workdir: Path, process: subprocess.Popen[str]) -> None:
    """Until the quickstart has launched its nodes (Airflow is then starting)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            names = set(_state(workdir)["processes"])
        except (OSError, ValueError):
            names = set()
        if {f"node-{org}" for org in _ORGANIZATIONS} <= names:
            time.sleep(2.0)  # into Airflow's start, with every node up or starting
            return
        time.sleep(0.2)
    raise AssertionError("the quickstart never launched its nodes")
