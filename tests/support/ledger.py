"""The ledger for tests: nodes with fast witnesses, and polling for entries."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import yaml

from airfed.sdk.network import Network

__all__ = ["fast_witnesses", "wait_for"]

_T = TypeVar("_T")


def wait_for(what: str, probe: Callable[[], _T | None], timeout: float = 60) -> _T:
    """Poll ``probe`` until it returns something; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def fast_witnesses(network: Network) -> None:
    """Nodes of these tests sync their witness five times a second."""
    for org in network.partners:
        path = network.root / org.id / "node.yaml"
        config = yaml.safe_load(path.read_text())
        config.update(ledger_witness_interval=0.2, ledger_plan_wait_seconds=30)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
