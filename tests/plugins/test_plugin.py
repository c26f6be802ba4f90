"""The plugin object that Airflow loads in every component."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.airflow import REPO_ROOT, fedavg_spec

_PROBE = """
import sys
from airfed.plugins import AirfedPlugin
before = "airfed.operators" in sys.modules
AirfedPlugin.listeners
print(before, "airfed.operators" in sys.modules, "airfed.dags._specs" in sys.modules)
"""


def test_reading_the_listeners_loads_the_task_code() -> None:
    # The scheduler reads the listeners before it forks its LocalExecutor
    # workers, so every task process starts with the operator loaded.
    output = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()

    assert output == ["False", "True", "True"]


def test_the_ledger_entry_of_a_done_task_carries_the_operators_receipt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airfed.plugins.listener import _TaskRun

    # No network here: asking the node for the receipt would fail.
    monkeypatch.setenv("AIRFLOW__AIRFED__NETWORK", str(tmp_path / "no-network"))
    spec = fedavg_spec(rounds=1).tasks[0].model_dump(mode="json")
    receipt = {"task_key": spec["key"], "status": "done", "signature": "c2ln"}
    operator = SimpleNamespace(task_spec=spec, node_receipt=receipt)
    ti = SimpleNamespace(
        task=operator,
        task_id=f"r0_train__{spec['key']}",
        try_number=1,
        start_date=None,
        end_date=None,
    )

    body = _TaskRun.of(ti, "plan", "done").body()

    assert body["receipt"] == receipt
    assert body["worker"] == spec["worker"]
