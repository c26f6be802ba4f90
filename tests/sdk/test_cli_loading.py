"""A command imports only the code it needs: ``airfed task run`` starts every
task in a pod, so it must not pay for the ledger, SQLAlchemy or the SDK client."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
from airfed.sdk.cli import _load_commands
_load_commands(sys.argv[1:])
heavy = ("sqlalchemy", "airfed.ledger.store", "airfed.sdk.client", "httpx", "torch")
print(",".join(m for m in heavy if m in sys.modules))
"""


def _heavy_modules_after(*argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return set(filter(None, out.split(",")))


def test_task_run_loads_no_heavy_module() -> None:
    assert _heavy_modules_after("task", "run", "--workdir", "/tmp/w") == set()


def test_a_listing_command_loads_every_group() -> None:
    assert {"sqlalchemy", "airfed.sdk.client"} <= _heavy_modules_after("plan", "list")
