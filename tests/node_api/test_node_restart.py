"""A node that stops, or dies, while it runs a task runs the task again when it
starts, from the beginning; a task that keeps bringing its node down fails."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from airfed.sdk.network import Network
from airfed.sdk.node_client import NodeClient
from tests.node_api.conftest import (
    SUM_INPUTS,
    SUM_OUTPUTS,
    Registered,
    function_archive,
    permissions,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import RunningNode, start_node

# The sum function, slow enough to stop the node while it runs.
SLOW_SUM = """
    import json
    import time

    def train(ctx):
        time.sleep(3)
        total = sum(ctx.load_data())
        ctx.output_path("model").write_text(json.dumps({"sum": total}))
        ctx.record_performance("score", total)
"""


def _slow_task(client: NodeClient, tmp: Path) -> dict[str, Any]:
    registered = register_dataset_and_function(client, tmp, (1.0, 2.0))
    function = client.create_function(
        {
            "name": "slow sum",
            "entrypoint": "algo:train",
            "inputs": SUM_INPUTS,
            "outputs": SUM_OUTPUTS,
            "permissions": permissions(),
        },
        function_archive(tmp, SLOW_SUM),
    )
    slow = Registered(registered.dataset_key, registered.sample_keys, function["key"])
    return sum_task(slow, "a")


def _wait_executing(client: NodeClient, key: str) -> None:
    """Poll until the node runs the task (a test guard, not a timing check)."""
    deadline = time.monotonic() + 60
    while client.get_task(key)["status"] != "executing":
        assert time.monotonic() < deadline, client.get_task(key)
        time.sleep(0.1)


def _kill(node: RunningNode) -> None:
    os.kill(node.pid, signal.SIGKILL)
    node.process.wait(30)


def _interrupted_task(
    config: Path, who: Path, tmp: Path, *, kill: bool
) -> dict[str, Any]:
    """Post a slow task, then stop the node (or kill it) while it runs the task."""
    with start_node(config) as node, node.client(who) as client:
        spec = _slow_task(client, tmp)
        client.submit_task(spec)
        _wait_executing(client, spec["key"])
        if kill:
            _kill(node)
    return spec


def _kill_while_it_runs_again(config: Path, who: Path, key: str) -> None:
    with start_node(config) as node, node.client(who) as client:
        _wait_executing(client, key)
        _kill(node)


def test_a_task_the_node_stopped_or_died_in_runs_again_and_ends_done(
    network: Network, tmp_path: Path
) -> None:
    config, who = network.root / "a" / "node.yaml", profile(network, "a")
    spec = _interrupted_task(config, who, tmp_path, kill=False)
    _kill_while_it_runs_again(config, who, spec["key"])
    with start_node(config) as node, node.client(who) as client:
        task = wait_task(client, spec["key"])
        workdir = node.config.storage_dir / "work" / spec["key"]

        assert task["status"] == "done", task
        assert task["performances"] == {"score": 3.0}
        model = task["outputs"]["model"]
        dest = tmp_path / "model.json"
        assert client.download_model(model["model_key"], dest) == model["checksum"]
        assert json.loads(dest.read_text()) == {"sum": 3.0}
        assert len(client.list_models(task_key=spec["key"])) == 1
        assert not workdir.exists()


def test_a_task_that_keeps_bringing_its_node_down_fails(
    network: Network, tmp_path: Path
) -> None:
    config, who = network.root / "a" / "node.yaml", profile(network, "a")
    spec = _interrupted_task(config, who, tmp_path, kill=True)
    for _ in range(2):  # it runs again twice, and the node dies each time
        _kill_while_it_runs_again(config, who, spec["key"])
    with start_node(config) as node, node.client(who) as client:
        task = client.get_task(spec["key"])

        assert task["status"] == "failed"
        assert "the node stopped while the task ran, 3 times" in task["error"]
        assert client.list_models(task_key=spec["key"]) == []
