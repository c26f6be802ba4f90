"""The plugin object that Airflow loads in every component."""

from __future__ import annotations

import subprocess
import sys

from tests.support.airflow import REPO_ROOT

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
