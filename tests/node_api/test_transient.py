"""Transient outputs on real nodes: deleted once consumers finish, or at plan end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network
from airfed.sdk.node_client import NodeClient
from tests.node_api.conftest import (
    Registered,
    permissions,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import RunningNode, start_nodes


def _producer(
    registered: Registered, consumers: list[str], readers: list[str]
) -> dict[str, Any]:
    spec = sum_task(registered, "a")
    spec["outputs"]["model"] = {
        "permissions": permissions(readers),
        "transient": True,
        "consumers": consumers,
    }
    return spec


def _consumer(
    registered: Registered, worker: str, producer: dict[str, Any], key: str
) -> dict[str, Any]:
    return sum_task(
        registered,
        worker,
        key=key,
        plan_key=producer["plan_key"],
        parent=(producer["key"], "model"),
    )


def _wait_deleted(client: NodeClient, key: str) -> dict[str, Any]:
    """Poll until the model is marked deleted (a test guard, not a timing check)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        metadata = client.get_model_metadata(key)
        if metadata["deleted_at"]:
            return metadata
        time.sleep(0.2)
    raise AssertionError(f"model {key} was not deleted: {metadata}")


def _object_files(node: RunningNode) -> set[str]:
    return {p.name for p in (node.config.storage_dir / "objects").iterdir()}


def test_deleted_once_every_consumer_on_every_node_has_finished(
    network: Network, tmp_path: Path
) -> None:
    with (
        start_nodes(network, ["a", "b"]) as nodes,
        nodes["a"].client(profile(network, "a")) as a,
        nodes["b"].client(profile(network, "b")) as b,
    ):
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        on_b = register_dataset_and_function(b, tmp_path / "b", (10.0,))
        local_key, remote_key = "consumer-on-a", "consumer-on-b"
        producer = _producer(on_a, [local_key, remote_key], ["a", "b"])
        a.submit_task(producer)
        output = wait_task(a, producer["key"])["outputs"]["model"]
        model_key = output["model_key"]
        files_with_model = _object_files(nodes["a"])

        a.submit_task(_consumer(on_a, "a", producer, local_key))
        assert wait_task(a, local_key)["status"] == "done"
        assert a.get_model_metadata(model_key)["deleted_at"] is None

        plan = {"key": producer["plan_key"], "parents": {producer["key"]: "a"}}
        b.submit_task(_consumer(on_b, "b", producer, remote_key), plan)
        assert wait_task(b, remote_key)["status"] == "done"
        metadata = _wait_deleted(a, model_key)

        assert metadata["checksum"] == output["checksum"]
        assert len(files_with_model - _object_files(nodes["a"])) == 1
        with (
            nodes["a"].client(profile(network, "b")) as b_at_a,
            pytest.raises(NodeRequestError) as err,
        ):
            b_at_a.download_model(model_key, tmp_path / "late")
        assert err.value.status == 410
        assert "transient and has been deleted" in err.value.detail
        assert not (tmp_path / "late").exists()


def test_failed_consumer_counts_and_unknown_consumer_records_nothing(
    network: Network, tmp_path: Path
) -> None:
    with (
        start_nodes(network, ["a", "b"]) as nodes,
        nodes["a"].client(profile(network, "a")) as a,
        nodes["a"].client(profile(network, "c")) as c,
    ):
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        producer = _producer(on_a, ["will-fail"], ["a"])
        a.submit_task(producer)
        model_key = wait_task(a, producer["key"])["outputs"]["model"]["model_key"]

        ignored = a.release_task_outputs(producer["key"], "not-a-consumer")
        assert ignored["released"] == []
        with pytest.raises(NodeRequestError) as denied:
            c.release_task_outputs(producer["key"], "will-fail")
        assert denied.value.status == 403
        assert a.get_model_metadata(model_key)["deleted_at"] is None

        failing = _consumer(on_a, "a", producer, "will-fail")
        failing["inputs"][0]["asset_key"] = "no-such-dataset"
        a.submit_task(failing)
        assert wait_task(a, "will-fail")["status"] == "failed"
        assert _wait_deleted(a, model_key)["transient"] is True


def test_plan_end_deletes_what_is_left_and_only_a_party_may_end_it(
    network: Network, tmp_path: Path
) -> None:
    with (
        start_nodes(network, ["a", "b"]) as nodes,
        nodes["a"].client(profile(network, "a")) as a,
        nodes["a"].client(profile(network, "c")) as c,
    ):
        on_a = register_dataset_and_function(a, tmp_path / "a", (1.0,))
        producer = _producer(on_a, ["never-runs"], ["a"])
        kept = sum_task(on_a, "a", plan_key=producer["plan_key"])
        a.submit_task(producer, {"key": producer["plan_key"], "creator": "b"})
        a.submit_task(kept)
        model_key = wait_task(a, producer["key"])["outputs"]["model"]["model_key"]
        kept_model = wait_task(a, kept["key"])["outputs"]["model"]["model_key"]

        with pytest.raises(NodeRequestError) as denied:
            c.end_plan(producer["plan_key"])
        with pytest.raises(NodeRequestError) as unknown:
            a.end_plan("no-such-plan")
        with nodes["a"].client(profile(network, "b")) as creator:
            ended = creator.end_plan(producer["plan_key"])

        assert denied.value.status == 403 and unknown.value.status == 404
        assert ended["deleted"] == [model_key]
        assert a.get_model_metadata(model_key)["deleted_at"] is not None
        assert a.get_model_metadata(kept_model)["deleted_at"] is None
        assert a.end_plan(producer["plan_key"])["deleted"] == []
