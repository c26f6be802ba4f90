"""Tasks on real nodes: end to end, idempotent retries, two nodes, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airfed.node_api._receipt import verify_receipt
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network
from tests.node_api.conftest import (
    SUM_INPUTS,
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
        # The long poll answers the moment the status is final: the workdir
        # (the function's code and inputs) must be gone by then.
        task = client.get_task(posted["key"], wait=30)
        workdir_left = (node_a.config.storage_dir / "work" / posted["key"]).exists()

        assert task["status"] == "done", task
        assert not workdir_left
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
        with pytest.raises(NodeRequestError) as err:
            client.submit_task({**spec, "round": 7})
        assert err.value.status == 409
        assert "different task" in err.value.detail


def test_task_input_model_comes_from_the_other_node(
    network: Network, tmp_path: Path
) -> None:
    with start_nodes(network, ["a", "b"]) as nodes:
        a = nodes["a"].client(profile(network, "a"))
        b = nodes["b"].client(profile(network, "b"))
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        on_b = register_dataset_and_function(b, tmp_path / "b", (10.0,))
        parent = sum_task(
            on_a, "a", model_permissions={"process": {"authorized_ids": ["b"]}}
        )
        a.submit_task(parent)
        assert wait_task(a, parent["key"])["status"] == "done"

        child = sum_task(
            on_b, "b", plan_key=parent["plan_key"], parent=(parent["key"], "model")
        )
        b.submit_task(child)
        done = wait_task(b, child["key"])

        assert done["status"] == "done", done
        assert done["performances"] == {"score": 11.0}
        accesses = a.model_accesses(
            a.get_task(parent["key"])["outputs"]["model"]["model_key"]
        )
        assert [(x["caller"], x["purpose"]) for x in accesses] == [("b", "process")]
        a.close()
        b.close()


FAILING_FUNCTION = """
    def train(ctx):
        print("looking at", len(ctx.load_data()), "samples")
        raise ValueError("the function gave up")
"""

SLOW_FUNCTION = """
    import time

    def train(ctx):
        time.sleep(120)
"""


def test_failed_task_logs_follow_the_logs_permission(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    from tests.node_api.conftest import function_archive

    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path, logs=["b"])
        failing = client.create_function(
            {"name": "fails", "entrypoint": "algo:train", "inputs": SUM_INPUTS},
            function_archive(tmp_path, FAILING_FUNCTION),
        )
        registered.function_key = failing["key"]
        spec = sum_task(registered, "a")
        spec["outputs"] = {}
        client.submit_task(spec)
        task = wait_task(client, spec["key"])

    assert task["status"] == "failed"
    assert "the function gave up" in task["error"]
    assert task["receipt"]["status"] == "failed"
    with node_a.client(profile(network, "b")) as b:
        logs = b.task_logs(spec["key"])
    assert "looking at 2 samples" in logs and "ValueError" in logs
    with (
        node_a.client(profile(network, "c")) as c,
        pytest.raises(NodeRequestError) as err,
    ):
        c.task_logs(spec["key"])
    assert err.value.status == 403


def test_task_is_refused_when_permissions_do_not_allow_it(
    network: Network, tmp_path: Path
) -> None:
    with start_nodes(network, ["a"]) as nodes:
        a = nodes["a"].client(profile(network, "a"))
        b = nodes["a"].client(profile(network, "b"))
        # The function belongs to b; the dataset does not let b's code process it.
        closed = register_dataset_and_function(
            a, tmp_path / "1", function_client=b, function_process=["a"]
        )
        # The dataset allows b, but b's function does not allow worker a.
        no_worker = register_dataset_and_function(
            a, tmp_path / "2", function_client=b, dataset_process=["b"]
        )
        results = {}
        for name, registered in (("closed", closed), ("no_worker", no_worker)):
            spec = sum_task(registered, "a")
            a.submit_task(spec)
            results[name] = wait_task(a, spec["key"])
        a.close()
        b.close()

    assert results["closed"]["status"] == "failed"
    assert "b is not permitted to process dataset" in results["closed"]["error"]
    assert results["no_worker"]["status"] == "failed"
    assert "a is not permitted to run function" in results["no_worker"]["error"]


def test_input_model_not_permitted_to_the_worker_fails_the_task(
    network: Network, tmp_path: Path
) -> None:
    with start_nodes(network, ["a", "b"]) as nodes:
        a = nodes["a"].client(profile(network, "a"))
        b = nodes["b"].client(profile(network, "b"))
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        on_b = register_dataset_and_function(b, tmp_path / "b", (1.0,))
        parent = sum_task(on_a, "a")  # the model's permissions name nobody else
        a.submit_task(parent)
        wait_task(a, parent["key"])
        child = sum_task(on_b, "b", parent=(parent["key"], "model"))
        b.submit_task(child)
        done = wait_task(b, child["key"])
        a.close()
        b.close()

    assert done["status"] == "failed"
    assert "refused model" in done["error"] and "not permitted" in done["error"]


def test_cancel_stops_an_executing_task(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    import time

    from tests.node_api.conftest import function_archive

    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        slow = client.create_function(
            {"name": "slow", "entrypoint": "algo:train", "inputs": SUM_INPUTS},
            function_archive(tmp_path, SLOW_FUNCTION),
        )
        registered.function_key = slow["key"]
        spec = sum_task(registered, "a")
        spec["outputs"] = {}
        client.submit_task(spec)
        while client.get_task(spec["key"])["status"] == "waiting":
            time.sleep(0.1)

        client.cancel_task(spec["key"])
        task = client.get_task(spec["key"], wait=30)
        workdir_left = (node_a.config.storage_dir / "work" / spec["key"]).exists()

    assert task["status"] == "canceled"
    assert not workdir_left


def test_parent_models_come_over_a_kept_connection_even_after_it_idled(
    network: Network, tmp_path: Path
) -> None:
    import time

    with start_nodes(network, ["a", "b"]) as nodes:
        a = nodes["a"].client(profile(network, "a"))
        b = nodes["b"].client(profile(network, "b"))
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        on_b = register_dataset_and_function(b, tmp_path / "b", (10.0,))
        shared = {"process": {"authorized_ids": ["b"]}}
        parent = sum_task(on_a, "a", model_permissions=shared)
        a.submit_task(parent)
        assert wait_task(a, parent["key"])["status"] == "done"
        children = []
        # The second child fetches after a's server closed the idle connection
        # (uvicorn keeps one alive for 5 s).
        for pause in (0.0, 6.0):
            time.sleep(pause)
            child = sum_task(
                on_b, "b", plan_key=parent["plan_key"], parent=(parent["key"], "model")
            )
            b.submit_task(child)
            children.append(wait_task(b, child["key"]))
        a.close()
        b.close()

    assert [c["status"] for c in children] == ["done", "done"], children
    assert [c["performances"] for c in children] == [{"score": 11.0}] * 2
