"""NodeTaskOperator and its trigger: against a real node over mutual TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airfed.sdk.network import Network
from airfed.sdk.orchestrator import task_id_for
from airfed.sdk.spec import TaskSpec
from tests.e2e.federation import Federation, register_federation
from tests.support.airflow import fedavg_spec
from tests.support.nodes import RunningNode, start_nodes


def _operator(**kwargs: Any) -> Any:
    from airfed.operators import NodeTaskOperator

    task = fedavg_spec(rounds=1).tasks[0]
    return NodeTaskOperator(task_spec=task, **kwargs)


def _event(status: str, **fields: Any) -> dict[str, Any]:
    return {
        "task_key": "t1",
        "worker": "a",
        "status": status,
        "error": None,
        "outputs": {},
        "performances": {},
        "receipt": None,
        **fields,
    }


def test_operator_is_named_after_its_task_and_first_waits_on_a_worker() -> None:
    operator = _operator()
    spec = TaskSpec.model_validate(operator.task_spec)

    assert operator.task_id == task_id_for(spec)
    assert operator.wait_on_worker == 5.0
    assert operator.start_from_trigger is False


def test_without_a_wait_on_the_worker_the_task_starts_in_the_triggerer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__AIRFED__WAIT_ON_WORKER", "0")

    operator = _operator()

    assert operator.start_from_trigger is True
    args = operator.start_trigger_args
    assert args.trigger_cls == "airfed.operators._trigger.NodeTaskTrigger"
    assert args.trigger_kwargs["task_spec"] == operator.task_spec
    assert args.next_method == "execute_complete"


def test_done_task_pushes_only_references_and_hashes() -> None:
    event = _event(
        "done",
        outputs={
            "model": {
                "kind": "model",
                "model_key": "m1",
                "checksum": "ab" * 32,
                "path": "/node/storage/m1",
            }
        },
        performances={"accuracy": 0.9},
        receipt={
            "task_key": "t1",
            "function_hash": "f" * 64,
            "input_hashes": {},
            "output_hashes": {"model": "ab" * 32},
            "status": "done",
            "signer": "a",
            "signature": "c2ln",
            "extra": "dropped",
        },
    )

    result = _operator().execute_complete(context={}, event=event)

    assert result["outputs"] == {
        "model": {"kind": "model", "model_key": "m1", "checksum": "ab" * 32}
    }
    assert result["performances"] == {"accuracy": 0.9}
    assert result["receipt"]["signature"] == "c2ln"
    assert "extra" not in result["receipt"]


def test_failed_task_fails_without_retry_with_the_nodes_first_line() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    event = _event("failed", error="ValueError: no labels\nTraceback (most recent)")

    operator = _operator()

    with pytest.raises(AirflowFailException) as failed:
        operator.execute_complete(context={}, event=event)

    assert str(failed.value) == (
        f"task {operator.task_key} failed on node a: ValueError: no labels"
    )


def test_unreachable_node_is_retried() -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    with pytest.raises(AirflowException) as raised:
        _operator().execute_complete(
            context={}, event=_event("unreachable", error="refused")
        )

    assert not isinstance(raised.value, AirflowFailException)


@pytest.fixture
def federation(
    network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Federation, dict[str, RunningNode]]]:
    monkeypatch.setenv("AIRFLOW__AIRFED__NETWORK", str(network.root))
    with start_nodes(network, ["a"]) as nodes:
        yield register_federation(nodes, network.root, tmp_path / "assets"), nodes


async def _fire(trigger: Any) -> dict[str, Any]:
    events = [event async for event in trigger.run()]
    assert len(events) == 1
    return dict(events[0].payload)


async def test_trigger_runs_the_task_on_its_node_and_a_retry_reuses_it(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airfed.operators import NodeTaskTrigger

    fed, nodes = federation
    spec = fed.plan(rounds=1)
    train = spec.tasks[0]
    task = train.model_dump(mode="json")
    plan = {"key": spec.key, "name": spec.name, "creator": "a", "parents": {}}

    first = await _fire(NodeTaskTrigger(task, plan, poll_interval=0.1))
    again = await _fire(NodeTaskTrigger(task, plan, poll_interval=0.1))

    assert first["status"] == "done", first
    assert again["outputs"] == first["outputs"]
    with nodes["a"].client(nodes["a"].config.home) as node:
        assert len(node.list_tasks(spec.key)) == 1


async def test_trigger_reports_a_task_the_node_refuses(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airfed.operators import NodeTaskTrigger

    fed, _ = federation
    task = fed.plan(rounds=1).tasks[0].model_dump(mode="json")
    task["worker"] = "a"
    task["function_key"] = "00000000-0000-4000-8000-000000000000"

    event = await _fire(NodeTaskTrigger(task, None, poll_interval=0.1))

    assert event["status"] in ("rejected", "failed")
    assert event["error"]


def test_finishing_in_the_triggerer_is_a_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _operator().end_from_trigger is False
    monkeypatch.setenv("AIRFLOW__AIRFED__FINISH_IN_TRIGGERER", "True")

    operator = _operator()

    assert operator.end_from_trigger is True
    assert operator.start_trigger_args.trigger_kwargs["finish_on_success"] is True


async def test_trigger_can_end_a_done_task_with_its_xcom(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    from airfed.operators import NodeTaskTrigger

    fed, _ = federation
    spec = fed.plan(rounds=1)
    task = spec.tasks[0].model_dump(mode="json")
    trigger = NodeTaskTrigger(task, None, poll_interval=0.1, finish_on_success=True)

    events = [event async for event in trigger.run()]

    (event,) = events
    assert isinstance(event, TaskSuccessEvent)
    result = event.xcoms["return_value"]
    assert result["status"] == "done"
    assert set(result["outputs"]["model"]) == {"kind", "model_key", "checksum"}


def test_execute_on_a_worker_posts_the_task_then_defers(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from airfed.operators import NodeTaskOperator

    fed, nodes = federation
    spec = fed.plan(rounds=1)
    operator = NodeTaskOperator(
        task_spec=spec.tasks[0], start_from_trigger=False, wait_on_worker=0
    )

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context={})

    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.trigger.submit is False
    with nodes["a"].client(nodes["a"].config.home) as node:
        assert node.get_task(spec.tasks[0].key)["key"] == spec.tasks[0].key


def test_a_task_that_ends_within_the_wait_ends_on_the_worker(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airfed.operators import NodeTaskOperator

    fed, nodes = federation
    spec = fed.plan(rounds=1)
    operator = NodeTaskOperator(
        task_spec=spec.tasks[0], wait_on_worker=60, poll_interval=0.05
    )

    result = operator.execute(context={})

    with nodes["a"].client(nodes["a"].config.home) as node:
        on_node = node.get_task(spec.tasks[0].key)
    assert on_node["status"] == "done"
    assert result["status"] == "done"
    assert (
        result["outputs"]["model"]["checksum"]
        == (on_node["outputs"]["model"]["checksum"])
    )
    assert result["receipt"]["signature"] == on_node["receipt"]["signature"]


def test_a_function_that_fails_within_the_wait_fails_the_task_without_retry(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airfed.operators import NodeTaskOperator

    fed, _ = federation
    spec = fed.plan(rounds=1, broken="a")
    operator = NodeTaskOperator(
        task_spec=spec.tasks[0], wait_on_worker=60, poll_interval=0.05
    )

    with pytest.raises(AirflowFailException) as failed:
        operator.execute(context={})

    assert "the data has no label column" in str(failed.value)


def test_waiting_on_the_worker_long_polls_instead_of_pausing(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    import time

    from airfed.operators import NodeTaskOperator

    fed, _ = federation
    spec = fed.plan(rounds=1)
    operator = NodeTaskOperator(
        task_spec=spec.tasks[0], wait_on_worker=60, poll_interval=30
    )

    started = time.monotonic()
    result = operator.execute(context={})

    assert result["status"] == "done"
    assert time.monotonic() - started < 15


async def test_the_trigger_long_polls_instead_of_pausing(
    federation: tuple[Federation, dict[str, RunningNode]],
) -> None:
    import time

    from airfed.operators import NodeTaskTrigger

    fed, _ = federation
    task = fed.plan(rounds=1).tasks[0].model_dump(mode="json")

    started = time.monotonic()
    event = await _fire(NodeTaskTrigger(task, None, poll_interval=30))

    assert event["status"] == "done", event
    assert time.monotonic() - started < 15


def test_an_answer_without_an_end_before_half_the_wait_is_cut_short() -> None:
    import time

    from airfed.operators._trigger import cut_short

    now = time.monotonic()

    assert cut_short({"status": "executing"}, now, 10.0)
    assert not cut_short({"status": "done"}, now, 10.0)
    assert not cut_short({"status": "executing"}, now - 9.0, 10.0)
