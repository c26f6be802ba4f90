"""The operator that runs one task of a compute plan on its worker's node.

A task first runs on a worker: :meth:`execute` posts it to the node and
long-polls the node (it answers as soon as the task ends) for up to
``[airfed] wait_on_worker`` seconds (5 by default). Most federated tasks end
within that time, and end right there: no trip through the triggerer and no
second worker start, which costs about two seconds per dependency level of a
plan. A task still running after the wait defers to :class:`NodeTaskTrigger`,
which long-polls the node from the triggerer, so that a long task holds a
worker slot only for the wait; when the node is done it
resumes on a worker in :meth:`execute_complete`, where listeners see it end.
Either way the task pushes to XCom only references and hashes: output model
keys and checksums, performances and the node's signed receipt. Models
travel from node to node, never through Airflow.

With ``wait_on_worker = 0`` a task starts in the triggerer
(``start_from_trigger``) and never holds a worker slot while its node works.
With ``[airfed] finish_in_triggerer`` a successful deferred task also ends in
the triggerer with the same XCom (Airflow then runs no listener for it, and
refuses such DAGs while listeners are installed).

Retries are safe: the node deduplicates tasks by key, so posting again
returns the task already running or finished. A function that failed, or a
task the node refused, fails without retry; an unreachable node is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.triggers.base import StartTriggerArgs

from airfed.operators._settings import (
    finish_in_triggerer,
    node_poll_interval,
    wait_on_worker_seconds,
)
from airfed.operators._trigger import (
    FINAL_NODE_STATUSES,
    NodeTaskTrigger,
    cancel_on_node,
    cut_short,
    node_client,
    node_task_event,
    task_result,
)
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.node_client import TASK_WAIT_LIMIT_SECONDS, NodeClient
from airfed.sdk.orchestrator import task_id_for
from airfed.sdk.spec import TaskSpec

__all__ = ["NodeTaskOperator", "task_result"]

logger = logging.getLogger(__name__)

_TRIGGER_CLASSPATH = "airfed.operators._trigger.NodeTaskTrigger"


class NodeTaskOperator(BaseOperator):
    """Run ``task_spec`` on the node of its worker and wait for it, deferrably."""

    ui_color = "#d9ecf7"
    ui_fgcolor = "#0b3a53"

    def __init__(
        self,
        *,
        task_spec: TaskSpec | Mapping[str, Any],
        plan: Mapping[str, Any] | None = None,
        start_from_trigger: bool | None = None,
        wait_on_worker: float | None = None,
        poll_interval: float | None = None,
        finish_in_trigger: bool | None = None,
        **kwargs: Any,
    ) -> None:
        spec = (
            task_spec
            if isinstance(task_spec, TaskSpec)
            else TaskSpec.model_validate(task_spec)
        )
        kwargs.setdefault("task_id", task_id_for(spec))
        super().__init__(**kwargs)
        self.task_spec = spec.model_dump(mode="json")
        self.plan = dict(plan) if plan is not None else None
        self.task_key = spec.key
        self.worker = spec.worker
        self.poll_interval = (
            poll_interval if poll_interval is not None else node_poll_interval()
        )
        # Airflow refuses to bag a DAG whose tasks end in the triggerer while
        # listeners are installed, since listeners would not see them end.
        self.end_from_trigger = (
            finish_in_trigger
            if finish_in_trigger is not None
            else finish_in_triggerer()
        )
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls=_TRIGGER_CLASSPATH,
            trigger_kwargs=self._trigger(submit=True).serialize()[1],
            next_method="execute_complete",
            next_kwargs=None,
            timeout=None,
        )
        self.wait_on_worker = (
            wait_on_worker if wait_on_worker is not None else wait_on_worker_seconds()
        )
        self.start_from_trigger = (
            start_from_trigger
            if start_from_trigger is not None
            else self.wait_on_worker <= 0
        )

    def _trigger(self, *, submit: bool) -> NodeTaskTrigger:
        return NodeTaskTrigger(
            task_spec=self.task_spec,
            plan=self.plan,
            submit=submit,
            poll_interval=self.poll_interval,
            finish_on_success=self.end_from_trigger,
        )

    def _node(self) -> NodeClient:
        return node_client(self.worker)

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            with self._node() as node:
                node_task = node.submit_task(self.task_spec, self.plan)
                logger.info("task posted task=%s node=%s", self.task_key, self.worker)
                node_task = self._wait_on_worker(node, node_task)
        except NodeRequestError as exc:
            if exc.status == 0:
                raise AirflowException(exc.detail) from exc
            raise AirflowFailException(
                f"node {self.worker} refused task {self.task_key}: {exc.detail}"
            ) from exc
        if node_task.get("status") in FINAL_NODE_STATUSES:
            event = node_task_event(self.task_key, self.worker, node_task).payload
            return self.execute_complete(context, event)
        self.defer(trigger=self._trigger(submit=False), method_name="execute_complete")

    def _wait_on_worker(
        self, node: NodeClient, node_task: dict[str, Any]
    ) -> dict[str, Any]:
        """Long-poll the node for up to ``wait_on_worker`` seconds, then defer.

        The poll interval is the pause after an unreachable node (until the
        wait is up; then the error fails this try) or an answer cut short.
        """
        deadline = time.monotonic() + self.wait_on_worker
        while node_task.get("status") not in FINAL_NODE_STATUSES:
            wait = min(deadline - time.monotonic(), TASK_WAIT_LIMIT_SECONDS)
            if wait <= 0:
                break
            asked_at = time.monotonic()
            try:
                node_task = node.get_task(self.task_key, wait=wait)
            except NodeRequestError as exc:
                if exc.status != 0 or time.monotonic() + self.poll_interval >= deadline:
                    raise
                logger.warning(
                    "node unreachable task=%s node=%s", self.task_key, self.worker
                )
                time.sleep(self.poll_interval)
                continue
            if cut_short(node_task, asked_at, wait):
                time.sleep(self.poll_interval)
        return node_task

    def execute_complete(
        self, context: Any, event: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        if event is None:
            raise AirflowException(f"task {self.task_key} resumed without an event")
        # The ledger's listener records the node's receipt with the task's end.
        receipt = event.get("receipt")
        self.node_receipt = dict(receipt) if isinstance(receipt, Mapping) else None
        status = event.get("status")
        error = str(event.get("error") or "no error reported").splitlines()
        first_line = error[0] if error else ""
        if status == "unreachable":
            raise AirflowException(
                f"node {self.worker} unreachable for task {self.task_key}: {first_line}"
            )
        if status != "done":
            raise AirflowFailException(
                f"task {self.task_key} {status} on node {self.worker}: {first_line}"
            )
        result: dict[str, Any] = task_result(event)
        logger.info(
            "task done task=%s node=%s outputs=%d",
            self.task_key,
            self.worker,
            len(result["outputs"]),
        )
        return result

    def on_kill(self) -> None:
        cancel_on_node(self.worker, self.task_key)
