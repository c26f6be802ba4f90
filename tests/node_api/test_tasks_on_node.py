"""Tasks on real nodes: end to end, idempotent retries, two nodes, logs."""

from __future__ import annotations

import json
from pathlib import Path

from airfed.node_api._receipt import verify_receipt
from airfed.sdk.network import Network
from tests.node_api.conftest import (
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import RunningNode, start_nodes


def test_task_runs_end_to_end_and_signs_its_receipt(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path, (1.0, 2.5))
        posted = client.submit_task(sum_task(registered, "a"))
        task = wait_task(client, posted["key"])

        assert task["status"] == "done", task
        model = task["outputs"]["model"]
        dest = tmp_path / "model.json"
        assert client.download_model(model["model_key"], dest) == model["checksum"]
        assert json.loads(dest.read_text()) == {"sum": 3.5}
        assert task["performances"] == {"score": 3.5}
        perfs = client.list_performances(posted["plan_key"])
        assert [(p["identifier"], p["value"]) for p in perfs] == [("score", 3.5)]
        receipt = task["receipt"]
        key = network.organization("a").identity_public_key
        assert receipt["signer"] == "a" and verify_receipt(receipt, key)
        assert receipt["output_hashes"] == {"model": model["checksum"]}
        assert not (node_a.config.storage_dir / "work" / posted["key"]).exists()


def test_reposting_a_task_returns_the_same_task(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        spec = sum_task(registered, "a")

        first = client.submit_task(spec)
        again = client.submit_task(spec)

        assert again["key"] == first["key"]
        assert len(client.list_tasks(spec["plan_key"])) == 1
        wait_task(client, spec["key"])
        assert client.submit_task(spec)["status"] == "done"


def test_task_input_model_comes_from_the_other_node(
    network: Network, tmp_path: Path
) -> None:
    with start_nodes(network, ["a", "b"]) as nodes:
        a = nodes["a"].client(profile(network, "a"))
        b = nodes["b"].client(profile(network, "b"))
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        on_b = register_dataset_and_function(b, tmp_path / "b", (10.0,))
        parent = sum_task(on_a, "a", model_permissions={"process": {"authorized_ids": ["b"]}})
        a.submit_task(parent)
        assert wait_task(a, parent["key"])["status"] == "done"

        child = sum_task(on_b, "b", plan_key=parent["plan_key"], parent=(parent["key"], "model"))
        b.submit_task(child)
        done = wait_task(b, child["key"])

        assert done["status"] == "done", done
        assert done["performances"] == {"score": 11.0}
        accesses = a.model_accesses(a.get_task(parent["key"])["outputs"]["model"]["model_key"])
        assert [(x["caller"], x["purpose"]) for x in accesses] == [("b", "process")]
        a.close()
        b.close()
