"""The listener that writes every task run of a compute plan to the ledger.

Airflow calls these hooks in the task process on the worker (and in the
api-server or the scheduler when a state is set there). For each task
instance of a DAG ``airfed_plan_<key>`` that starts, succeeds or fails, the
orchestrator signs a ``task_status`` entry with its identity key
(``<network>/orchestrator/identity.key``; ``[airfed] network``): the plan, the
task's worker, function, round and rank, the try number, the timings and,
once the task ended, the node's signed receipt with its input and output
hashes.

The hook itself only queues the entry: the entry is signed and sent on a
background thread, without waiting for the log's fsync; a task process
flushes for at most five seconds when it exits. Where the orchestrator runs
a ledger relay (``[airfed] ledger_relay``), the thread hands the entry to
the relay, which signs it and sends it over its one channel to the log. In
the task's own process the receipt is the one the operator received from its
node; elsewhere (a state set in the api-server or the scheduler) the node is
asked (``GET /tasks/{key}``). The hooks are installed when ``[airfed] ledger`` is
on (``airfed orchestrator start`` turns it on with the log it starts). An
error here never fails a task: it is logged at WARNING.

This module is imported by every task process: it imports nothing heavy
until an entry is actually sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from airfed.sdk._ledger import EntrySender

__all__ = [
    "ledger_enabled",
    "on_task_instance_failed",
    "on_task_instance_running",
    "on_task_instance_success",
]

logger = logging.getLogger(__name__)

_DAG_PREFIX = "airfed_plan_"
_ON = frozenset({"on", "true", "yes", "1"})
_sender: EntrySender | None = None
_sender_pid = 0
_lock = threading.Lock()


def ledger_enabled() -> bool:
    """Whether ``[airfed] ledger`` is on (``AIRFLOW__AIRFED__LEDGER``)."""
    from airflow.sdk import conf

    value = conf.get("airfed", "ledger", fallback="off")
    return str(value).strip().lower() in _ON


def _entry_sender() -> EntrySender:
    """This process's sender (a forked process starts its own thread)."""
    global _sender, _sender_pid
    with _lock:
        if _sender is None or _sender_pid != os.getpid():
            from airfed.operators._settings import ledger_relay, orchestrator_profile
            from airfed.sdk._ledger import EntrySender

            _sender = EntrySender(orchestrator_profile(), relay=ledger_relay())
            _sender_pid = os.getpid()
        return _sender


@hookimpl
def on_task_instance_running(previous_state: Any, task_instance: Any) -> None:
    _record(task_instance, "executing")


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _record(task_instance, "done")


@hookimpl
def on_task_instance_failed(
    previous_state: Any, task_instance: Any, error: Any = None
) -> None:
    _record(task_instance, "failed")


def _record(task_instance: Any, status: str) -> None:
    try:
        dag_id = str(task_instance.dag_id)
        if not dag_id.startswith(_DAG_PREFIX):
            return
        run = _TaskRun.of(task_instance, dag_id.removeprefix(_DAG_PREFIX), status)
        _entry_sender().record("task_status", run.task_key, run.body)
    except Exception as exc:
        logger.warning(
            "task run not written to the ledger task=%s error=%s",
            getattr(task_instance, "task_id", "?"),
            exc,
        )


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return None


class _TaskRun:
    """What the hook saw of a task instance; ``body`` runs on the sender."""

    def __init__(
        self,
        plan_key: str,
        task_key: str,
        spec: Mapping[str, Any] | None,
        status: str,
        try_number: int | None,
        started_at: str | None,
        ended_at: str | None,
        receipt: dict[str, Any] | None = None,
    ) -> None:
        self.plan_key = plan_key
        self.task_key = task_key
        self.spec = spec
        self.status = status
        self.try_number = try_number
        self.started_at = started_at
        self.ended_at = ended_at
        self.receipt = receipt

    @classmethod
    def of(cls, task_instance: Any, plan_key: str, status: str) -> _TaskRun:
        operator = getattr(task_instance, "task", None)
        spec = getattr(operator, "task_spec", None)
        task_id = str(task_instance.task_id)
        task_key = str(spec["key"]) if spec else task_id.rsplit("__", 1)[-1]
        ended = getattr(task_instance, "end_date", None)
        if status != "executing" and ended is None:
            ended = dt.datetime.now(dt.UTC)
        try_number = getattr(task_instance, "try_number", None)
        # The operator keeps the receipt its node answered with; without it
        # (a state set in the api-server or the scheduler) the node is asked.
        receipt = getattr(operator, "node_receipt", None)
        return cls(
            plan_key,
            task_key,
            dict(spec) if spec else None,
            status,
            int(try_number) if try_number is not None else None,
            _iso(getattr(task_instance, "start_date", None)),
            _iso(ended) if status != "executing" else None,
            dict(receipt) if isinstance(receipt, Mapping) else None,
        )

    def body(self) -> dict[str, Any]:
        spec = self.spec or _spec_from_plan(self.plan_key, self.task_key)
        body: dict[str, Any] = {
            "plan_key": self.plan_key,
            "status": self.status,
            "worker": spec.get("worker"),
            "function_key": spec.get("function_key"),
            "category": spec.get("category"),
            "round": spec.get("round"),
            "rank": spec.get("rank"),
            "try_number": self.try_number,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }
        if self.status != "executing" and spec.get("worker"):
            body["receipt"] = self.receipt or _node_receipt(
                str(spec["worker"]), self.task_key
            )
        return {name: value for name, value in body.items() if value is not None}


def _spec_from_plan(plan_key: str, task_key: str) -> dict[str, Any]:
    """The task's spec from the stored plan (when the hook has no operator)."""
    from airfed.operators._settings import plans_folder
    from airfed.sdk.spec import parse_plan_spec

    try:
        spec = parse_plan_spec((plans_folder() / f"{plan_key}.json").read_bytes())
    except (OSError, ValueError) as exc:
        logger.warning("plan spec unreadable plan=%s error=%s", plan_key, exc)
        return {}
    for task in spec.tasks:
        if task.key == task_key:
            found: dict[str, Any] = task.model_dump(mode="json")
            return found
    return {}


def _node_receipt(worker: str, task_key: str) -> dict[str, Any] | None:
    """The receipt the worker's node signed for the task, if it has one."""
    from airfed.operators._trigger import node_client_args
    from airfed.sdk.errors import AirfedError
    from airfed.sdk.node_client import NodeClient

    try:
        url, ssl_context = node_client_args(worker)
        with NodeClient(url, ssl_context) as node:
            task = node.get_task(task_key)
    except AirfedError as exc:
        logger.warning(
            "node receipt unavailable task=%s node=%s error=%s", task_key, worker, exc
        )
        return None
    receipt = task.get("receipt")
    return dict(receipt) if isinstance(receipt, dict) else None
