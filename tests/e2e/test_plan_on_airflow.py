"""Compute plans run by the real Airflow scheduler across three real nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airfed.ledger.server import serve_log
from airfed.sdk._airflow import RunningOrchestrator
from airfed.sdk._ledger import register_plan
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network, client_ssl_context
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import OrchestratorClient, task_id_for, wait_for_plan
from airfed.sdk.spec import PlanSpec
from tests.e2e.federation import Federation, register_federation
from tests.support.airflow import running_orchestrator
from tests.support.ledger import fast_witnesses
from tests.support.nodes import RunningNode, create_token, start_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.airflow, pytest.mark.postgres]


@dataclass
class Stack:
    network: Network
    nodes: dict[str, RunningNode]
    orchestrator: RunningOrchestrator
    federation: Federation

    def orchestrator_node(self, org: str) -> NodeClient:
        profile = self.network.root / "orchestrator"
        return NodeClient(self.nodes[org].url, client_ssl_context(profile))

    def submit(self, client: OrchestratorClient, spec: PlanSpec) -> dict[str, str]:
        """Register the plan on the ledger as its creator, then submit it."""
        register_plan(self.network.root / spec.creator, spec)
        answer: dict[str, str] = client.submit_plan(spec)
        return answer


@pytest.fixture
def stack(
    network: Network, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    """Three nodes and Airflow on PostgreSQL, with the ledger on."""
    monkeypatch.setenv("AIRFED_NODE_LEDGER", "on")
    monkeypatch.setenv("AIRFLOW__AIRFED__LEDGER", "on")
    fast_witnesses(network)
    log = serve_log(network.root, batch_interval=0.05)
    try:
        with (
            start_nodes(network, ["a", "b", "c"]) as nodes,
            running_orchestrator(
                tmp_path / "airflow", network.root, database_url=pg_url
            ) as orchestrator,
        ):
            federation = register_federation(nodes, network.root, tmp_path / "assets")
            yield Stack(network, nodes, orchestrator, federation)
    finally:
        log.stop()


def test_plan_succeeds_and_every_node_task_is_done(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=2)

    with stack.orchestrator.client() as client:
        submitted = stack.submit(client, spec)
        plan = wait_for_plan(client, spec.key, timeout=600, poll_interval=0.5)

    assert submitted["dag_id"] == f"airfed_plan_{spec.key}"
    assert plan["status"] == "success"
    assert {t["state"] for t in plan["tasks"]} == {"success"}
    for task in spec.tasks:
        with stack.orchestrator_node(task.worker) as node:
            assert node.get_task(task.key)["status"] == "done"
    last = max(spec.tasks, key=lambda t: t.rank)
    with stack.orchestrator_node(last.worker) as node:
        performances = node.list_performances(spec.key)
    # Each round adds 1 + 2 on every organization, then averages: 3, then 6.
    assert sorted(p["value"] for p in performances) == [3.0, 6.0]


def test_failing_function_fails_the_run_and_its_log_is_readable(
    stack: Stack,
) -> None:
    spec = stack.federation.plan(rounds=1, broken="b")
    broken = next(t for t in spec.tasks if t.worker == "b")

    with stack.orchestrator.client() as client:
        stack.submit(client, spec)
        plan = wait_for_plan(client, spec.key, timeout=600, poll_interval=0.5)

    assert plan["status"] == "failed"
    states = {t["task_id"]: t["state"] for t in plan["tasks"]}
    assert states[task_id_for(broken)] == "failed"
    # Nothing half-done: the aggregate never reached its node, no task is left
    # in flight, and the failed task left no model and no workdir behind.
    aggregate = next(t for t in spec.tasks if t.category == "aggregate")
    assert states[task_id_for(aggregate)] == "upstream_failed"
    assert _final_node_status(stack, aggregate.worker, aggregate.key) == "never posted"
    assert not {"running", "deferred", "queued", "scheduled"} & set(states.values())
    with stack.nodes["b"].client(stack.network.root / "b") as owner:
        assert owner.list_models(task_key=broken.key) == []
    assert not (stack.nodes["b"].config.storage_dir / "work" / broken.key).exists()
    config = stack.nodes["b"].config
    token = create_token(config.home / "node.yaml", "alice")
    with stack.nodes["b"].client(stack.network.root / "b", token) as alice:
        assert alice.get_task(broken.key)["status"] == "failed"
        assert "the data has no label column" in alice.task_logs(broken.key)
    with (
        stack.nodes["b"].client(stack.network.root / "c") as stranger,
        pytest.raises(NodeRequestError) as refused,
    ):
        stranger.task_logs(broken.key)
    assert refused.value.status == 403


def test_cancel_stops_the_run_and_the_running_node_tasks(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=2, slow="c")
    slow = next(t for t in spec.tasks if t.worker == "c")

    with stack.orchestrator.client() as client:
        stack.submit(client, spec)
        _wait_for_node_status(stack, slow.worker, slow.key, "executing")
        answer = client.cancel_plan(spec.key)
        plan = wait_for_plan(client, spec.key, timeout=120, poll_interval=0.5)

    assert answer["status"] == "canceled"
    assert slow.key in answer["canceled_tasks"]
    assert plan["status"] == "canceled"
    assert not {"running", "deferred", "queued"} & {t["state"] for t in plan["tasks"]}
    assert _final_node_status(stack, slow.worker, slow.key) == "canceled"
    later = [t for t in spec.tasks if t.round == 1]
    assert {_final_node_status(stack, t.worker, t.key) for t in later} == {
        "never posted"
    }


def _wait_for_node_status(
    stack: Stack, worker: str, task_key: str, status: str
) -> None:
    deadline = time.monotonic() + 120
    with stack.orchestrator_node(worker) as node:
        while time.monotonic() < deadline:
            try:
                if node.get_task(task_key)["status"] == status:
                    return
            except NodeRequestError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"task {task_key} never became {status} on {worker}")


def _final_node_status(stack: Stack, worker: str, task_key: str) -> str:
    """The node's final status of a task (a guard on waiting, not a timing check)."""
    deadline = time.monotonic() + 60
    with stack.orchestrator_node(worker) as node:
        while True:
            try:
                status = str(node.get_task(task_key)["status"])
            except NodeRequestError as exc:
                assert exc.status == 404
                return "never posted"
            if status in ("done", "canceled", "failed") or time.monotonic() > deadline:
                return status
            time.sleep(0.2)
