"""Real nodes, assets and functions for the node API suites."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from airfed.node_api._archive import pack_folder
from airfed.sdk.network import Network
from airfed.sdk.node_client import NodeClient
from tests.support.nodes import RunningNode, start_node

OPENER = """
    from pathlib import Path

    def load(paths):
        return [float((Path(p) / "value.txt").read_text()) for p in paths]
"""

# Sums its data samples' values, plus the input model's sum when given.
SUM_FUNCTION = """
    import json

    def train(ctx):
        total = sum(ctx.load_data())
        if ctx.input_paths("model"):
            total += json.loads(ctx.input_path("model").read_text())["sum"]
        ctx.output_path("model").write_text(json.dumps({"sum": total}))
        ctx.record_performance("score", total)
"""

SUM_INPUTS = [
    {"identifier": "opener", "kind": "dataset"},
    {"identifier": "data", "kind": "datasamples", "multiple": True},
    {"identifier": "model", "kind": "model", "optional": True},
]
SUM_OUTPUTS = [
    {"identifier": "model", "kind": "model"},
    {"identifier": "score", "kind": "performance"},
]


def write_node_options(network: Network, org: str, **options: Any) -> Path:
    """Add options to ``DIR/<org>/node.yaml``; return its path."""
    path = network.root / org / "node.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(options)
    path.write_text(yaml.safe_dump(data))
    return path


def profile(network: Network, org: str) -> Path:
    return network.root / org


def write_opener(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "opener.py"
    path.write_text(textwrap.dedent(OPENER))
    return path


def sample_folder(root: Path, value: float, name: str | None = None) -> Path:
    folder = root / (name or f"sample-{uuid.uuid4().hex[:8]}")
    folder.mkdir(parents=True)
    (folder / "value.txt").write_text(str(value))
    return folder


def function_archive(root: Path, code: str = SUM_FUNCTION) -> Path:
    folder = root / f"function-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "algo.py").write_text(textwrap.dedent(code))
    return pack_folder(folder, root / f"{folder.name}.tar.gz")


def permissions(
    process: list[str] | None = None,
    download: list[str] | None = None,
    *,
    public: bool = False,
) -> dict[str, Any]:
    return {
        "process": {"public": public, "authorized_ids": process or []},
        "download": {"public": public, "authorized_ids": download or []},
    }


@dataclass
class Registered:
    dataset_key: str
    sample_keys: list[str]
    function_key: str


def register_dataset_and_function(
    client: NodeClient,
    tmp: Path,
    values: tuple[float, ...] = (1.0, 2.0),
    *,
    dataset_process: list[str] | None = None,
    function_process: list[str] | None = None,
    logs: list[str] | None = None,
    function_client: NodeClient | None = None,
) -> Registered:
    """A dataset with samples holding ``values`` and the sum function."""
    dataset = client.create_dataset(
        {
            "name": "values",
            "description": "numbers in value.txt",
            "permissions": permissions(dataset_process),
            "logs_permission": {"public": False, "authorized_ids": logs or []},
        },
        write_opener(tmp / f"opener-{uuid.uuid4().hex[:6]}"),
    )
    samples = [
        client.add_sample_folder(dataset["key"], sample_folder(tmp, value))["key"]
        for value in values
    ]
    function = (function_client or client).create_function(
        {
            "name": "sum",
            "entrypoint": "algo:train",
            "inputs": SUM_INPUTS,
            "outputs": SUM_OUTPUTS,
            "permissions": permissions(function_process),
        },
        function_archive(tmp),
    )
    return Registered(dataset["key"], samples, function["key"])


def sum_task(
    registered: Registered,
    worker: str,
    *,
    key: str | None = None,
    plan_key: str | None = None,
    model_permissions: dict[str, Any] | None = None,
    parent: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A TaskSpec (JSON) running the sum function on the registered data."""
    inputs: list[dict[str, Any]] = [
        {"identifier": "opener", "asset_key": registered.dataset_key},
        *({"identifier": "data", "asset_key": k} for k in registered.sample_keys),
    ]
    if parent is not None:
        inputs.append(
            {
                "identifier": "model",
                "parent_task_key": parent[0],
                "parent_output": parent[1],
            }
        )
    return {
        "key": key or str(uuid.uuid4()),
        "plan_key": plan_key or str(uuid.uuid4()),
        "function_key": registered.function_key,
        "worker": worker,
        "category": "train",
        "rank": 0 if parent is None else 1,
        "round": 0,
        "inputs": inputs,
        "outputs": {"model": {"permissions": model_permissions or permissions()}},
    }


def wait_task(client: NodeClient, key: str, timeout: float = 90.0) -> dict[str, Any]:
    """Poll the node until the task ends (a test guard, not a timing check)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(key)
        if task["status"] in ("done", "failed", "canceled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {key} did not end: {client.get_task(key)}")


@pytest.fixture
def node_a(network: Network) -> Iterator[RunningNode]:
    """Node of organization a on SQLite."""
    with start_node(network.root / "a" / "node.yaml") as node:
        yield node
