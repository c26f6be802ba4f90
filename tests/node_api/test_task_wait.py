"""``GET /tasks/{key}?wait=``: the node answers as soon as the task ends."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network, client_ssl_context
from airfed.sdk.node_client import AsyncNodeClient, NodeClient
from tests.node_api.conftest import (
    SUM_INPUTS,
    SUM_OUTPUTS,
    Registered,
    function_archive,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
    write_node_options,
)
from tests.support.nodes import RunningNode, create_token, start_node

SLEEPS_THEN_SUMS = """
    import json
    import time

    def train(ctx):
        time.sleep(2.0)
        ctx.output_path("model").write_text(json.dumps({"sum": 1.0}))
"""

SLOW_FUNCTION = """
    import time

    def train(ctx):
        time.sleep(120)
"""


def _function(
    client: NodeClient, registered: Registered, tmp_path: Path, code: str
) -> Registered:
    function = client.create_function(
        {
            "name": "waits",
            "entrypoint": "algo:train",
            "inputs": SUM_INPUTS,
            "outputs": SUM_OUTPUTS[:1],
        },
        function_archive(tmp_path, code),
    )
    return Registered(registered.dataset_key, registered.sample_keys, function["key"])


def _wait_executing(client: NodeClient, key: str) -> None:
    deadline = time.monotonic() + 60
    while client.get_task(key)["status"] == "waiting":
        assert time.monotonic() < deadline, f"task {key} never started"
        time.sleep(0.05)


def _post(
    client: NodeClient, tmp_path: Path, code: str | None = None
) -> dict[str, Any]:
    """Register the data and a function (``code``, or the plain sum), post a
    task of it on node a and return the task's spec."""
    registered = register_dataset_and_function(client, tmp_path)
    if code is not None:
        registered = _function(client, registered, tmp_path, code)
    spec = sum_task(registered, "a")
    client.submit_task(spec)
    return spec


def _ended_at(task: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(task["ended_at"]))


def test_a_wait_answers_as_soon_as_the_task_ends(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        spec = _post(client, tmp_path, SLEEPS_THEN_SUMS)

        asked = time.monotonic()
        task = client.get_task(spec["key"], wait=25)
        answered_at = dt.datetime.now(dt.UTC)
        elapsed = time.monotonic() - asked

    assert task["status"] == "done", task
    assert 1.5 < elapsed < 20
    assert (answered_at - _ended_at(task)).total_seconds() < 1.0


def test_a_wait_for_a_task_that_already_ended_answers_at_once(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        spec = _post(client, tmp_path)
        ended = wait_task(client, spec["key"])

        asked = time.monotonic()
        again = client.get_task(spec["key"], wait=25)
        elapsed = time.monotonic() - asked

    assert ended["status"] == "done"
    assert again == ended
    assert elapsed < 2.0


def test_a_wait_is_bounded(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        spec = _post(client, tmp_path, SLOW_FUNCTION)
        _wait_executing(client, spec["key"])

        asked = time.monotonic()
        task = client.get_task(spec["key"], wait=1.5)
        elapsed = time.monotonic() - asked
        refused = {}
        for wait in ("31", "-1", "soon"):
            response = client._http.get(f"/tasks/{spec['key']}", params={"wait": wait})
            refused[wait] = (response.status_code, response.json()["detail"])
        client.cancel_task(spec["key"])

    assert task["status"] == "executing"
    assert 1.4 < elapsed < 6.0
    assert {wait: status for wait, (status, _) in refused.items()} == {
        "31": 400,
        "-1": 400,
        "soon": 400,
    }
    assert "field query.wait" in refused["31"][1]


def test_the_client_allows_for_the_wait_on_top_of_its_read_timeout(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    context = client_ssl_context(profile(network, "a"))
    with NodeClient(node_a.url, context, timeout=1.0) as client:
        spec = _post(client, tmp_path, SLOW_FUNCTION)

        task = client.get_task(spec["key"], wait=2.5)
        client.cancel_task(spec["key"])

    assert task["status"] in ("waiting", "executing")


def test_a_wait_checks_the_caller_as_a_plain_get_does(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    token = create_token(node_a.config.home / "node.yaml", "alice")
    with node_a.client(profile(network, "a")) as client:
        spec = _post(client, tmp_path)
        wait_task(client, spec["key"])

    answers: dict[tuple[str, str | None], list[Any]] = {}
    callers = [("a", None), ("a", token), ("b", None), ("c", None), ("b", token)]
    callers += [("a", "afn_not-a-token")]
    for org, user_token in callers:
        with node_a.client(profile(network, org), user_token) as caller:
            answers[(org, user_token)] = [
                _answer(caller, spec["key"], wait) for wait in (0.0, 20.0)
            ]
        plain, waited = answers[(org, user_token)]
        assert plain == waited, (org, user_token)

    assert answers[("a", None)][0]["status"] == "done"
    assert answers[("a", token)][0]["status"] == "done"
    assert answers[("c", None)][0]["status"] == "done"
    assert answers[("b", token)][0] == 401
    assert answers[("a", "afn_not-a-token")][0] == 401
    with node_a.client(profile(network, "b")) as caller:
        asked = time.monotonic()
        with pytest.raises(NodeRequestError) as missing:
            caller.get_task("no-such-task", wait=20)
        assert time.monotonic() - asked < 2.0
    assert missing.value.status == 404


def _answer(client: NodeClient, key: str, wait: float) -> Any:
    try:
        return client.get_task(key, wait=wait)
    except NodeRequestError as exc:
        return exc.status


@pytest.fixture
def one_at_a_time(network: Network) -> Iterator[RunningNode]:
    """Node a running one task at a time, so that a second task waits."""
    write_node_options(network, "a", task_concurrency=1)
    with start_node(network.root / "a" / "node.yaml") as node:
        yield node


async def test_many_waiters_are_all_woken_and_hold_no_worker_thread(
    network: Network, one_at_a_time: RunningNode, tmp_path: Path
) -> None:
    node = one_at_a_time
    with node.client(profile(network, "a")) as client:
        registered = register_dataset_and_function(client, tmp_path)
        slow = _function(client, registered, tmp_path, SLOW_FUNCTION)
        running, queued = sum_task(slow, "a"), sum_task(slow, "a")
        client.submit_task(running)
        _wait_executing(client, running["key"])
        client.submit_task(queued)

    context = client_ssl_context(profile(network, "b"))
    async with AsyncNodeClient(node.url, context) as waiter:
        # More waiters than the 40 threads of the server's threadpool.
        on_running = [
            asyncio.create_task(waiter.get_task(running["key"], wait=25))
            for _ in range(45)
        ]
        on_queued = [
            asyncio.create_task(waiter.get_task(queued["key"], wait=25))
            for _ in range(3)
        ]
        await asyncio.sleep(1.5)
        asked = time.monotonic()
        health = await waiter.health()
        health_s = time.monotonic() - asked

        assert not any(t.done() for t in on_running + on_queued)
        with node.client(profile(network, "a")) as owner:
            canceled_queued = time.monotonic()
            owner.cancel_task(queued["key"])
            queued_answers = await asyncio.gather(*on_queued)
            queued_s = time.monotonic() - canceled_queued
            canceled_running = time.monotonic()
            owner.cancel_task(running["key"])
            running_answers = await asyncio.gather(*on_running)
            running_s = time.monotonic() - canceled_running

    assert health["status"] == "ok" and health_s < 2.0
    assert [t["status"] for t in queued_answers] == ["canceled"] * 3
    assert [t["status"] for t in running_answers] == ["canceled"] * 45
    assert queued_s < 5.0 and running_s < 5.0


async def test_a_stopping_node_answers_its_waiters_at_once(
    network: Network, node_a: RunningNode, tmp_path: Path
) -> None:
    with node_a.client(profile(network, "a")) as client:
        spec = _post(client, tmp_path, SLOW_FUNCTION)
        _wait_executing(client, spec["key"])

    context = client_ssl_context(profile(network, "a"))
    async with AsyncNodeClient(node_a.url, context) as waiter:
        waits = [
            asyncio.create_task(waiter.get_task(spec["key"], wait=25)) for _ in range(3)
        ]
        await asyncio.sleep(1.0)
        stopped = time.monotonic()
        os.kill(node_a.pid, signal.SIGTERM)
        answers = await asyncio.gather(*waits)
        answered_s = time.monotonic() - stopped

    exit_code = node_a.process.wait(15)
    stopped_s = time.monotonic() - stopped
    assert [a["status"] for a in answers] == ["executing"] * 3
    assert answered_s < 5.0
    # uvicorn's graceful shutdown gives open requests 10 s: none was left.
    assert exit_code == -signal.SIGTERM and stopped_s < 8.0, stopped_s
    assert "Cancel" not in node_a.log(), node_a.log()[-2000:]
