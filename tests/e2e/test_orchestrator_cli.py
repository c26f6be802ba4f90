"""``airfed orchestrator start``: Airflow up on loopback, down on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from airfed.sdk.network import Network
from tests.support.ports import free_port

pytestmark = [pytest.mark.airflow]

_LAUNCH = "from airfed.sdk.cli import main; main()"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_json_object(process: subprocess.Popen[str]) -> dict[str, object]:
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        if line.startswith("{") or lines:
            lines.append(line)
        if line.startswith("}"):
            return dict(json.loads("".join(lines)))
    raise AssertionError(f"the command ended without printing JSON: {lines}")


def test_start_serves_airflow_on_loopback_and_stops_every_component(
    network: Network, tmp_path: Path
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LAUNCH,
            "orchestrator",
            "start",
            "--network",
            str(network.root),
            "--home",
            str(tmp_path / "airflow"),
            "--port",
            str(port),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        started = _read_json_object(process)
        assert started["url"] == f"http://127.0.0.1:{port}"
        token = httpx.post(
            f"{started['url']}/auth/token",
            json={"username": started["username"], "password": started["password"]},
            timeout=30,
        )
        assert token.status_code == 201
        pids = dict(started["pids"])  # type: ignore[call-overload]
        assert set(pids) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        assert process.stdout is not None
        process.stdout.close()

    assert process.returncode == 0
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [name for name, pid in pids.items() if _alive(pid)] == []
