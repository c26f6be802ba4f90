"""No endpoint returns the content of a data sample, to anyone."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from airfed.node_api._app import create_app
from airfed.node_api._archive import pack_folder
from airfed.node_api._context import NodeContext
from airfed.sdk.network import Network, load_node_config
from tests.node_api.conftest import (
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import RunningNode

JSON_TYPES = {"application/json", "application/problem+json", "text/plain"}
MARKER = b"SAMPLE-CONTENT-7f3a9c-never-leaves-the-node"


def _schema(network: Network, tmp_path: Path) -> dict[str, Any]:
    config = load_node_config(network.root / "a" / "node.yaml")
    config = dataclasses.replace(config, database_url=f"sqlite:///{tmp_path / 'db'}")
    context = NodeContext.open(config)
    try:
        return create_app(context, run_tasks=False).openapi()
    finally:
        context.db.dispose()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method.upper(), operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def _content_types(operation: dict[str, Any]) -> set[str]:
    return {
        content_type
        for response in operation.get("responses", {}).values()
        for content_type in response.get("content", {"application/json": {}})
    }


def test_only_the_model_route_returns_bytes(network: Network, tmp_path: Path) -> None:
    schema = _schema(network, tmp_path)
    operations = _operations(schema)

    binary = {
        (method, path)
        for path, method, operation in operations
        if _content_types(operation) - JSON_TYPES
    }

    assert binary == {("GET", "/models/{key}")}
    sample_routes = [(m, p) for p, m, _ in operations if "sample" in p]
    assert sorted(sample_routes) == [
        ("GET", "/samples"),
        ("POST", "/datasets/{key}/samples"),
    ]
    assert len(operations) >= 18


def test_no_get_route_ever_answers_with_sample_bytes(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "value.txt").write_text("4.0")
    (folder / "notes.bin").write_bytes(MARKER * 50)
    archive = pack_folder(folder, tmp_path / "secret.tar.gz").read_bytes()
    probes = [MARKER, archive[32:96], archive[-64:]]

    with node_a.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path, (1.0,))
        uploaded = client.add_sample_archive(
            registered.dataset_key, tmp_path / "secret.tar.gz"
        )
        spec = sum_task(registered, "a")
        spec["inputs"].append({"identifier": "data", "asset_key": uploaded["key"]})
        client.submit_task(spec)
        task = wait_task(client, spec["key"])
        assert task["status"] == "done", task
        keys = [
            registered.dataset_key,
            uploaded["key"],
            *registered.sample_keys,
            registered.function_key,
            spec["key"],
            task["outputs"]["model"]["model_key"],
        ]
        schema = client._http.get("/openapi.json").json()
        bodies = _every_get(client, schema, keys)

    assert len(bodies) > 30
    for (path, key), body in bodies.items():
        for probe in probes:
            assert probe not in body, f"GET {path} with {key} returned sample bytes"


def _every_get(
    client: Any, schema: dict[str, Any], keys: list[str]
) -> dict[Any, bytes]:
    bodies: dict[Any, bytes] = {}
    gets = [p for p, m, _ in _operations(schema) if m == "GET"]
    for path, key in itertools.product(gets, keys):
        url = path.replace("{key}", key)
        for query in (
            "",
            f"?dataset={key}",
            f"?plan_key={key}&task_key={key}",
            f"?q={key}",
        ):
            bodies[(path + query, key)] = client._http.get(url + query).content
    return bodies
