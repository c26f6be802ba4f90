"""A compute plan through the real Airflow scheduler, with the ledger on.

The SDK registers the plan on the log (signed by its creator) before it
submits it; the orchestrator's API refuses a plan the log does not hold; the
nodes check the plan on the log before each task; the plugin's listener
writes every task instance's run, with the node's receipt, signed by the
orchestrator; and the whole log verifies afterwards.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airfed.ledger._network import key_ring
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, EntryKind, parse_entry, verify_entry
from airfed.ledger.server import serve_log
from airfed.sdk._airflow import RunningOrchestrator, start_orchestrator
from airfed.sdk.client import Client
from airfed.sdk.errors import OrchestratorError
from airfed.sdk.network import Network, client_ssl_context, init_network
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import wait_for_plan
from tests.e2e.federation import Federation, register_federation
from tests.support.ledger import fast_witnesses, wait_for
from tests.support.nodes import start_node
from tests.support.ports import free_port, free_port_block

pytestmark = [pytest.mark.e2e, pytest.mark.airflow]


@dataclass
class Stack:
    network: Network
    orchestrator: RunningOrchestrator
    federation: Federation

    def task_entries(self, task_key: str) -> list[Entry]:
        keys = key_ring(self.network)
        profile = self.network.root / "a"
        with LedgerClient(self.network.ledger_address, profile) as client:
            found = [parse_entry(data) for _, data in client.find(task_key)]
        for entry in found:
            verify_entry(entry, keys)
        return [e for e in found if e.kind is EntryKind.TASK_STATUS]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    network = init_network(
        tmp_path / "net", ["a", "b", "c"], base_port=free_port_block(7)
    )
    fast_witnesses(network)
    log = serve_log(network.root, batch_interval=0.05)
    try:
        with contextlib.ExitStack() as running:
            nodes = {
                org: running.enter_context(
                    start_node(
                        network.root / org / "node.yaml",
                        env={"AIRFED_NODE_LEDGER": "on"},
                    )
                )
                for org in ("a", "b", "c")
            }
            orchestrator = running.enter_context(
                start_orchestrator(
                    tmp_path / "airflow",
                    network.root,
                    port=free_port(),
                    extra_environment={"AIRFLOW__AIRFED__LEDGER": "on"},
                )
            )
            federation = register_federation(nodes, network.root, tmp_path / "assets")
            yield Stack(network, orchestrator, federation)
    finally:
        log.stop()


def test_plan_runs_with_every_task_run_on_the_ledger(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=1)
    unregistered = stack.federation.plan(rounds=1)

    with stack.orchestrator.client() as orchestrator:
        with pytest.raises(OrchestratorError, match="not registered on the ledger"):
            orchestrator.submit_plan(unregistered)
        with Client(
            stack.network.root / "a",
            orchestrator_url=stack.orchestrator.url,
            username=stack.orchestrator.username,
            password=stack.orchestrator.password,
        ) as client:
            client.submit(spec)
        plan = wait_for_plan(orchestrator, spec.key, timeout=600, poll_interval=0.5)

    assert plan["status"] == "success", plan
    for task in spec.tasks:
        profile = stack.network.root / "orchestrator"
        url = stack.network.organization(task.worker).node_url
        with NodeClient(url, client_ssl_context(profile)) as node:
            receipt = node.get_task(task.key)["receipt"]
        done = wait_for(
            f"the orchestrator's done entry of task {task.key}",
            lambda key=task.key: [
                e
                for e in stack.task_entries(key)
                if e.author == "orchestrator" and e.body["status"] == "done"
            ],
        )
        assert done[0].body["receipt"] == receipt
        assert done[0].body["worker"] == task.worker
        assert done[0].body["plan_key"] == spec.key
        assert "started_at" in done[0].body and "ended_at" in done[0].body
        statuses = {e.body["status"] for e in stack.task_entries(task.key)}
        assert {"executing", "done"} <= statuses

    # The task processes handed their entries to the orchestrator's relay.
    relay = stack.orchestrator.ledger_relay
    assert relay is not None
    wait_for(
        "the relay's entries on the log",
        lambda: relay.sent >= 2 * len(spec.tasks) or None,
    )

    verify = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airfed.sdk.cli import main; main()",
            "ledger",
            "verify",
            "--network",
            str(stack.network.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["problems"] == []
    assert report["authors"]["orchestrator"] >= 2 * len(spec.tasks)
