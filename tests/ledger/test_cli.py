"""``airfed ledger`` commands against a running log, as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airfed.ledger.client import LedgerClient
from airfed.ledger.server import LedgerServer, serve_log
from airfed.sdk.network import Network
from tests.ledger.conftest import Authors

AIRFED = str(Path(sys.executable).parent / "airfed")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [AIRFED, "ledger", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def log(network: Network) -> Iterator[LedgerServer]:
    server = serve_log(network.root, batch_interval=0.05)
    yield server
    server.stop()


def test_show_witness_and_prove(
    network: Network, log: LedgerServer, authors: Authors
) -> None:
    plan = authors.plan(org="a")
    with LedgerClient.for_profile(network.root / "a") as client:
        client.append([*authors.many(3), plan])

    not_final = _run("prove", plan.key, "--profile", str(network.root / "a"))
    assert not_final.returncode == 1
    assert "final" in not_final.stderr and "Traceback" not in not_final.stderr

    for org in ("b", "c"):
        witness = _run(
            "witness", "--profile", str(network.root / org), "--once", "--json"
        )
        assert witness.returncode == 0, witness.stderr
        assert json.loads(witness.stdout)["status"] == "ok"

    proved = _run("prove", plan.key, "--profile", str(network.root / "c"), "--json")
    assert proved.returncode == 0, proved.stderr
    evidence = json.loads(proved.stdout)
    assert evidence["index"] == 3 and evidence["final"]
    assert evidence["cosigners"] == ["b", "c"]
    assert evidence["kind"] == "plan_registered"

    shown = _run("show", "--network", str(network.root), "--json", "--limit", "2")
    assert shown.returncode == 0, shown.stderr
    listing = json.loads(shown.stdout)
    assert [e["index"] for e in listing["entries"]] == [2, 3]
    assert listing["entries"][1]["key"] == plan.key
    table = _run("show", "--network", str(network.root))
    assert plan.key in table.stdout

    verified = _run("verify", "--network", str(network.root), "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["entries"] == 4
    assert report["final_checkpoints"] >= 1


def test_verify_without_a_log_says_what_to_do(network: Network) -> None:
    result = _run("verify", "--network", str(network.root))
    assert result.returncode == 1
    assert "airfed ledger serve" in result.stderr
