"""The trigger that runs a task on a node and waits for it in the triggerer.

It posts the task to the worker's node (``POST /tasks``; the node returns the
existing task when the key is known, so posting again is safe), then
long-polls ``GET /tasks/{key}?wait=`` over mutual TLS (the node answers as
soon as the task ends) until the status is final, and fires one event::

    {"task_key", "worker", "status": done|failed|canceled|rejected|unreachable,
     "error": str | None, "outputs", "performances", "receipt"}

``rejected`` means the node refused the task (e.g. a permission); it will
refuse it again. ``unreachable`` means the node could not be reached for
``_UNREACHABLE_AFTER`` seconds; a retry may succeed. The poll interval is
only a pause: after an error, or after a node answered a long-poll early
without an end (it is stopping, or predates the long-poll).

With ``finish_on_success`` a ``done`` task ends in the triggerer
(``TaskSuccessEvent``) with its XCom, and no worker resumes it; any other
outcome still resumes on a worker, which raises the node's error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airfed.operators._settings import network_folder, orchestrator_profile
from airfed.sdk.errors import ConfigError, NodeRequestError
from airfed.sdk.network import Network, client_ssl_context, load_network
from airfed.sdk.node_client import (
    TASK_WAIT_LIMIT_SECONDS,
    AsyncNodeClient,
    NodeClient,
)

__all__ = [
    "FINAL_NODE_STATUSES",
    "NodeTaskTrigger",
    "cancel_on_node",
    "cut_short",
    "node_client",
    "node_client_args",
    "node_task_event",
    "task_result",
]

logger = logging.getLogger(__name__)

FINAL_NODE_STATUSES = frozenset({"done", "failed", "canceled"})
_UNREACHABLE_AFTER = 60.0
_CLASSPATH = "airfed.operators._trigger.NodeTaskTrigger"
_RECEIPT_FIELDS = (
    "task_key",
    "function_hash",
    "input_hashes",
    "output_hashes",
    "status",
    "signer",
    "signature",
)


def task_result(event: Mapping[str, Any]) -> dict[str, Any]:
    """What a finished task pushes to XCom: references and hashes only."""
    outputs = {
        identifier: {
            "kind": output.get("kind"),
            "model_key": output.get("model_key"),
            "checksum": output.get("checksum"),
        }
        for identifier, output in (event.get("outputs") or {}).items()
    }
    receipt = event.get("receipt") or {}
    return {
        "task_key": event["task_key"],
        "worker": event["worker"],
        "status": event["status"],
        "outputs": outputs,
        "performances": dict(event.get("performances") or {}),
        "receipt": {k: receipt[k] for k in _RECEIPT_FIELDS if k in receipt} or None,
    }


@functools.lru_cache(maxsize=8)
def _ssl_context(profile: Path) -> ssl.SSLContext:
    context: ssl.SSLContext = client_ssl_context(profile)
    return context


@functools.lru_cache(maxsize=8)
def _network(path: Path, modified: float) -> Network:
    network: Network = load_network(path)
    return network


def node_client_args(worker: str) -> tuple[str, ssl.SSLContext]:
    """The worker's node URL and the orchestrator's TLS context to call it.

    Both are cached (the network file until it changes): the triggerer calls
    this from its event loop.
    """
    path = network_folder() / "network.yaml"
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} does not exist; set [airfed] network to the network folder"
        ) from exc
    network = _network(path, modified)
    return network.organization(worker).node_url, _ssl_context(orchestrator_profile())


def node_client(worker: str) -> NodeClient:
    """A client of ``worker``'s node, as the orchestrator."""
    url, ssl_context = node_client_args(worker)
    return NodeClient(url, ssl_context)


def cancel_on_node(worker: str, task_key: str) -> None:
    """Ask the node to cancel the task; a node that cannot be told is logged."""
    try:
        with node_client(worker) as node:
            node.cancel_task(task_key)
    except NodeRequestError as exc:
        logger.warning(
            "cancel not delivered task=%s node=%s status=%s",
            task_key,
            worker,
            exc.status,
        )


def _event(task_key: str, worker: str, status: str, **fields: Any) -> TriggerEvent:
    payload: dict[str, Any] = {
        "task_key": task_key,
        "worker": worker,
        "status": status,
        "error": None,
        "outputs": {},
        "performances": {},
        "receipt": None,
    }
    payload.update(fields)
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


def cut_short(node_task: Mapping[str, Any], asked_at: float, wait: float) -> bool:
    """Whether a long-poll asked at ``asked_at`` ended early, without an end.

    The node is stopping, or is of a version that ignores ``wait``: the
    caller pauses before it asks again.
    """
    if node_task.get("status") in FINAL_NODE_STATUSES:
        return False
    return time.monotonic() - asked_at < wait / 2


def node_task_event(
    task_key: str, worker: str, node_task: dict[str, Any]
) -> TriggerEvent:
    return _event(
        task_key,
        worker,
        str(node_task["status"]),
        error=node_task.get("error"),
        outputs=node_task.get("outputs") or {},
        performances=node_task.get("performances") or {},
        receipt=node_task.get("receipt"),
    )


class NodeTaskTrigger(BaseTrigger):
    """Post a task to its worker's node and wait until the node finishes it."""

    def __init__(
        self,
        task_spec: dict[str, Any],
        plan: dict[str, Any] | None = None,
        submit: bool = True,
        poll_interval: float = 0.5,
        finish_on_success: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.task_spec = task_spec
        self.plan = plan
        self.submit = submit
        self.poll_interval = poll_interval
        self.finish_on_success = finish_on_success

    @property
    def task_key(self) -> str:
        return str(self.task_spec["key"])

    @property
    def worker(self) -> str:
        return str(self.task_spec["worker"])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            _CLASSPATH,
            {
                "task_spec": self.task_spec,
                "plan": self.plan,
                "submit": self.submit,
                "poll_interval": self.poll_interval,
                "finish_on_success": self.finish_on_success,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            url, ssl_context = node_client_args(self.worker)
        except Exception as exc:  # a missing network file or organization
            yield _event(self.task_key, self.worker, "rejected", error=str(exc))
            return
        async with AsyncNodeClient(url, ssl_context) as client:
            event = await self._run_on(client)
        if self.finish_on_success and event.payload["status"] == "done":
            # The task ends here, successful, without resuming on a worker.
            xcoms = {"return_value": task_result(event.payload)}
            yield TaskSuccessEvent(xcoms=xcoms)  # type: ignore[arg-type]
            return
        yield event

    async def _run_on(self, client: AsyncNodeClient) -> TriggerEvent:
        since = time.monotonic()
        while True:
            try:
                return await self._submit_and_poll(client)
            except NodeRequestError as exc:
                if exc.status != 0:
                    status = "rejected" if self.submit else "failed"
                    return _event(self.task_key, self.worker, status, error=exc.detail)
                if time.monotonic() - since > _UNREACHABLE_AFTER:
                    return _event(
                        self.task_key, self.worker, "unreachable", error=exc.detail
                    )
                logger.warning(
                    "node unreachable task=%s node=%s", self.task_key, self.worker
                )
                await asyncio.sleep(min(5.0, self.poll_interval * 4))

    async def _submit_and_poll(self, client: AsyncNodeClient) -> TriggerEvent:
        if self.submit:
            node_task = await client.submit_task(self.task_spec, self.plan)
            self.submit = False
            logger.info("task posted task=%s node=%s", self.task_key, self.worker)
        else:
            node_task = await client.get_task(self.task_key)
        while node_task.get("status") not in FINAL_NODE_STATUSES:
            asked_at = time.monotonic()
            node_task = await client.get_task(
                self.task_key, wait=TASK_WAIT_LIMIT_SECONDS
            )
            if cut_short(node_task, asked_at, TASK_WAIT_LIMIT_SECONDS):
                await asyncio.sleep(self.poll_interval)
        logger.info(
            "task ended task=%s node=%s status=%s",
            self.task_key,
            self.worker,
            node_task["status"],
        )
        return node_task_event(self.task_key, self.worker, node_task)
