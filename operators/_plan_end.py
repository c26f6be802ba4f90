"""When a plan's DAG run ends, its nodes delete the transient models left.

A node deletes a transient output once every task that consumes it has
finished. A plan that fails or is stopped leaves consumers that never run, and
their inputs would stay on the nodes. The plan's DAG therefore has
:func:`end_plan_on_nodes` as its success and failure callback, which the
dag-processor runs when the DAG run ends: it asks every node of the plan to
end it (``POST /plans/{key}/end``). A node without tasks of the plan answers
404, which is fine; a node that cannot be reached keeps its transient models
until the plan is ended again (``airfed plan cancel`` ends it as well). The
callback logs what happened and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airfed.sdk.errors import AirfedError, NodeRequestError
from airfed.sdk.orchestrator import DAG_ID_PREFIX

__all__ = ["end_plan_on_nodes"]

logger = logging.getLogger(__name__)


def end_plan_on_nodes(context: Mapping[str, Any]) -> None:
    """Ask each organization's node of the ended plan to end it too."""
    dag = context["dag"]
    plan_key = str(dag.dag_id).removeprefix(DAG_ID_PREFIX)
    workers = sorted({str(t.worker) for t in dag.tasks if hasattr(t, "worker")})
    for worker in workers:
        _end_on(worker, plan_key)


def _end_on(worker: str, plan_key: str) -> None:
    from airfed.operators._trigger import node_client

    try:
        with node_client(worker) as node:
            answer = node.end_plan(plan_key)
    except NodeRequestError as exc:
        if exc.status == 404:
            return
        logger.warning(
            "plan not ended on node plan=%s node=%s status=%s detail=%s",
            plan_key,
            worker,
            exc.status,
            exc.detail,
        )
        return
    except AirfedError as exc:
        logger.warning(
            "plan not ended on node plan=%s node=%s detail=%s", plan_key, worker, exc
        )
        return
    logger.info(
        "plan ended on node plan=%s node=%s transient_deleted=%d",
        plan_key,
        worker,
        len(answer.get("deleted") or []),
    )
