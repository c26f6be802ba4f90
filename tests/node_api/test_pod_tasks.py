"""Tasks that run as pods: prepared by real nodes, run, collected.

No Kubernetes cluster runs here, so the pod's command, ``airfed task run
--workdir /airfed/task``, runs as a subprocess on the prepared folder of the
node's storage, the folder the pod mounts. Everything else is the real node:
ledger-free checks, permissions, models fetched from another node over
mutual TLS, encrypted storage, signed receipts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airfed.node_api._receipt import verify_receipt
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network
from airfed.sdk.node_client import NodeClient
from tests.node_api.conftest import (
    SUM_INPUTS,
    Registered,
    function_archive,
    permissions,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.node_api.test_tasks_on_node import FAILING_FUNCTION
from tests.support.nodes import RunningNode, start_node, start_nodes

AIRFED = Path(sys.executable).with_name("airfed")


def wait_prepared(client: NodeClient, key: str, timeout: float = 90.0) -> dict:
    """Poll until the node prepared the task or ended it (a test guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(key)
        if task["status"] not in ("waiting", "executing"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {key} was not prepared: {client.get_task(key)}")


def workdir(node: RunningNode, key: str) -> Path:
    return Path(node.config.storage_dir) / "tasks" / key


def run_as_the_pod_would(node: RunningNode, key: str) -> int:
    """The pod's command on the folder the pod mounts at /airfed/task."""
    done = subprocess.run(
        [str(AIRFED), "task", "run", "--workdir", str(workdir(node, key))],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _parent_on_a(a: NodeClient, tmp: Path) -> dict[str, Any]:
    """A done task on node a whose model b may process."""
    on_a = register_dataset_and_function(a, tmp, (1.0,))
    parent = sum_task(on_a, "a", model_permissions=permissions(["b"]))
    a.submit_task(parent)
    assert wait_task(a, parent["key"])["status"] == "done"
    return parent


def _child_on_b(on_b: Registered, parent: dict[str, Any]) -> dict[str, Any]:
    return sum_task(
        on_b,
        "b",
        plan_key=parent["plan_key"],
        parent=(parent["key"], "model"),
        model_permissions=permissions(["c"], ["c"]),
    )


def test_pod_task_ends_like_the_same_task_run_by_the_node(
    network: Network, tmp_path: Path
) -> None:
    with (
        start_nodes(network, ["a", "b", "c"]) as nodes,
        nodes["a"].client(profile(network, "a")) as a,
        nodes["b"].client(profile(network, "b")) as b,
    ):
        parent = _parent_on_a(a, tmp_path / "a")
        on_b = register_dataset_and_function(b, tmp_path / "b", (10.0, 5.5))
        by_node = _child_on_b(on_b, parent)
        by_pod = _child_on_b(on_b, parent)

        b.submit_task(by_node)
        node_task = wait_task(b, by_node["key"])
        posted = b.submit_task(by_pod, runner="pod")
        prepared = wait_prepared(b, by_pod["key"])

        assert posted["key"] == by_pod["key"]
        assert prepared["status"] == "prepared", prepared
        folder = workdir(nodes["b"], by_pod["key"])
        assert (folder / "task.json").is_file() and (folder / "function").is_dir()
        assert run_as_the_pod_would(nodes["b"], by_pod["key"]) == 0
        pod_task = b.collect_task(by_pod["key"])

        assert node_task["status"] == pod_task["status"] == "done", pod_task
        assert pod_task["performances"] == node_task["performances"] == {"score": 16.5}
        model = pod_task["outputs"]["model"]
        assert model["checksum"] == node_task["outputs"]["model"]["checksum"]
        receipt = pod_task["receipt"]
        assert verify_receipt(receipt, network.organization("b").identity_public_key)
        for field in ("function_hash", "input_hashes", "output_hashes", "status"):
            assert receipt[field] == node_task["receipt"][field], field
        assert not folder.exists()
        storage = Path(nodes["b"].config.storage_dir)
        assert files_holding(storage, b'{"sum": 16.5}') == []

        with nodes["b"].client(profile(network, "c")) as c:
            dest = tmp_path / "model.json"
            assert c.download_model(model["model_key"], dest) == model["checksum"]
            assert json.loads(dest.read_text()) == {"sum": 16.5}
        with (
            nodes["b"].client(profile(network, "a")) as other,
            pytest.raises(NodeRequestError) as refused,
        ):
            other.download_model(model["model_key"], tmp_path / "no.json")
        assert refused.value.status == 403
        perfs = b.list_performances(by_pod["plan_key"])
        assert [p["task_key"] for p in perfs].count(by_pod["key"]) == 1


def test_collecting_again_or_posting_again_returns_the_ended_task(
    network: Network, database_url: str, tmp_path: Path
) -> None:
    config = network.root / "a" / "node.yaml"
    with (
        start_node(config, database_url) as node,
        node.client(profile(network, "a")) as client,
    ):
        registered = register_dataset_and_function(client, tmp_path)
        spec = sum_task(registered, "a")
        client.submit_task(spec, runner="pod")
        assert client.submit_task(spec, runner="pod")["key"] == spec["key"]
        wait_prepared(client, spec["key"])
        assert run_as_the_pod_would(node, spec["key"]) == 0

        first = client.collect_task(spec["key"])
        again = client.collect_task(spec["key"])

        assert first["status"] == "done"
        assert again == first
        assert client.submit_task(spec, runner="pod") == first
        with pytest.raises(NodeRequestError) as on_the_node:
            client.submit_task(spec)
        assert on_the_node.value.status == 409
        assert "posted to run as a pod" in on_the_node.value.detail
        assert len(client.list_models(task_key=spec["key"])) == 1
        assert len(client.list_tasks(spec["plan_key"])) == 1


def test_collect_is_refused_for_tasks_it_does_not_apply_to(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        on_node = sum_task(registered, "a")
        client.submit_task(on_node)
        wait_task(client, on_node["key"])

        with pytest.raises(NodeRequestError) as not_a_pod:
            client.collect_task(on_node["key"])
        with pytest.raises(NodeRequestError) as unknown:
            client.collect_task("no-such-task")
        with pytest.raises(NodeRequestError) as as_a_pod:
            client.submit_task(on_node, runner="pod")
        with pytest.raises(NodeRequestError) as bad_runner:
            client.submit_task(sum_task(registered, "a"), runner="vm")

        assert not_a_pod.value.status == 409
        assert "not as a pod" in not_a_pod.value.detail
        assert unknown.value.status == 404
        assert as_a_pod.value.status == 409
        assert "posted to run on the node" in as_a_pod.value.detail
        assert bad_runner.value.status == 400
        assert "runner" in bad_runner.value.detail


def test_collect_before_the_pod_wrote_a_result_fails_the_task_cleanly(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        spec = sum_task(registered, "a")
        client.submit_task(spec, runner="pod")
        wait_prepared(client, spec["key"])

        task = client.collect_task(spec["key"])

        assert task["status"] == "failed"
        assert "wrote no result.json" in task["error"]
        assert task["outputs"] == {} and task["performances"] == {}
        assert task["receipt"]["status"] == "failed"
        key = network.organization("a").identity_public_key
        assert verify_receipt(task["receipt"], key)
        assert client.list_models(task_key=spec["key"]) == []
        assert not workdir(node_a, spec["key"]).exists()
        assert "Traceback" not in node_a.log()


@pytest.mark.parametrize(
    ("written", "error"),
    [
        ("not json {", "not valid JSON"),
        ('["done"]', "no status done or failed"),
        ('{"status": "done", "performances": {"score": "high"}}', "not a number"),
        ('{"status": "done", "performances": {"score": 1}}', "no file for output"),
    ],
)
def test_a_malformed_result_fails_the_task_and_stores_nothing(
    network: Network, node_a: RunningNode, tmp_path: Path, written: str, error: str
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        spec = sum_task(registered, "a")
        client.submit_task(spec, runner="pod")
        wait_prepared(client, spec["key"])
        (workdir(node_a, spec["key"]) / "result.json").write_text(written)

        task = client.collect_task(spec["key"])

        assert task["status"] == "failed"
        assert error in task["error"]
        assert client.list_models(task_key=spec["key"]) == []
        assert client.list_performances(spec["plan_key"]) == []
        assert not workdir(node_a, spec["key"]).exists()


def test_a_failing_function_in_the_pod_fails_the_task_with_its_error(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        failing = client.create_function(
            {"name": "fails", "entrypoint": "algo:train", "inputs": SUM_INPUTS},
            function_archive(tmp_path, FAILING_FUNCTION),
        )
        spec = sum_task(registered, "a")
        spec["function_key"] = failing["key"]
        spec["outputs"] = {}
        client.submit_task(spec, runner="pod")
        wait_prepared(client, spec["key"])

        assert run_as_the_pod_would(node_a, spec["key"]) == 1
        task = client.collect_task(spec["key"])

        assert task["status"] == "failed"
        assert task["error"] == "ValueError: the function gave up"
        assert task["receipt"]["status"] == "failed"


def test_a_task_the_node_may_not_run_is_never_prepared(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with (
        node_a.client(profile(network, "a")) as a,
        node_a.client(profile(network, "b")) as b,
    ):
        # The function belongs to b; the dataset does not let b's code process it.
        closed = register_dataset_and_function(
            a, tmp_path, function_client=b, function_process=["a"]
        )
        spec = sum_task(closed, "a")
        a.submit_task(spec, runner="pod")

        task = wait_prepared(a, spec["key"])

        assert task["status"] == "failed"
        assert "b is not permitted to process dataset" in task["error"]
        assert not workdir(node_a, spec["key"]).exists()
        assert a.collect_task(spec["key"]) == task


def test_a_prepared_task_can_be_canceled_and_its_workdir_goes(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        spec = sum_task(registered, "a")
        client.submit_task(spec, runner="pod")
        wait_prepared(client, spec["key"])

        canceled = client.cancel_task(spec["key"])

        assert canceled["status"] == "canceled"
        assert not workdir(node_a, spec["key"]).exists()
        assert client.collect_task(spec["key"])["status"] == "canceled"


def test_a_restarted_node_keeps_prepared_work_and_drops_stale_folders(
    network: Network, tmp_path: Path
) -> None:
    config = network.root / "a" / "node.yaml"
    with start_node(config) as node, node.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        spec = sum_task(registered, "a")
        client.submit_task(spec, runner="pod")
        wait_prepared(client, spec["key"])
        stale = workdir(node, "not-a-task")
        stale.mkdir()
        (stale / "leftover").write_text("decrypted data")

    with start_node(config) as node, node.client(profile(network, "a")) as client:
        assert not stale.exists()
        assert client.get_task(spec["key"])["status"] == "prepared"
        assert run_as_the_pod_would(node, spec["key"]) == 0
        assert client.collect_task(spec["key"])["status"] == "done"
