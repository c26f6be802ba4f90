"""The end of a plan's DAG run: every node deletes the plan's transient models."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airfed.operators._plan_end import end_plan_on_nodes
from airfed.sdk.network import Network, client_ssl_context
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import dag_id_for
from tests.node_api.conftest import (
    permissions,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import start_nodes


def _ended_dag(plan_key: str, workers: list[str]) -> dict[str, Any]:
    """The context the dag-processor gives a DAG callback: the plan's DAG."""
    tasks = [SimpleNamespace(worker=worker) for worker in workers]
    return {"dag": SimpleNamespace(dag_id=dag_id_for(plan_key), tasks=tasks)}


def test_the_end_of_a_run_deletes_transient_models_whose_consumers_never_ran(
    network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFED__NETWORK", str(network.root))
    orchestrator = client_ssl_context(network.root / "orchestrator")
    with (
        start_nodes(network, ["a"]) as nodes,
        nodes["a"].client(profile(network, "a")) as owner,
        NodeClient(nodes["a"].url, orchestrator) as node,
    ):
        registered = register_dataset_and_function(owner, tmp_path)
        producer = sum_task(registered, "a")
        producer["outputs"]["model"] = {
            "permissions": permissions(["a"]),
            "transient": True,
            "consumers": ["a-consumer-that-never-runs"],
        }
        node.submit_task(producer)
        model_key = wait_task(node, producer["key"])["outputs"]["model"]["model_key"]
        assert node.get_model_metadata(model_key)["deleted_at"] is None

        end_plan_on_nodes(_ended_dag(producer["plan_key"], ["a", "a"]))

        assert node.get_model_metadata(model_key)["deleted_at"] is not None


def test_a_node_that_cannot_be_reached_is_logged_and_the_callback_returns(
    network: Network, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFED__NETWORK", str(network.root))
    plan_key = "5f0e5a3c-8f53-4c53-9d3f-8d2b3a0c9e11"

    with caplog.at_level(logging.WARNING, logger="airfed.operators._plan_end"):
        end_plan_on_nodes(_ended_dag(plan_key, ["b"]))

    (record,) = caplog.records
    assert f"plan={plan_key} node=b" in record.getMessage()
