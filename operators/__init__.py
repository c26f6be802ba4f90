"""Airflow operators that run compute-plan tasks on partners' nodes.

``NodeTaskOperator`` asks the worker's node to run a task over its API;
``NodeTaskPodOperator`` runs the same task as a pod on the partner's
Kubernetes cluster (imported on first use: the Kubernetes provider is heavy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airfed.operators._node_task import NodeTaskOperator, task_result
from airfed.operators._trigger import NodeTaskTrigger

if TYPE_CHECKING:
    from airfed.operators._pod import NodeTaskPodOperator

__all__ = ["NodeTaskOperator", "NodeTaskPodOperator", "NodeTaskTrigger", "task_result"]


def __getattr__(name: str) -> Any:
    if name == "NodeTaskPodOperator":
        from airfed.operators._pod import NodeTaskPodOperator

        return NodeTaskPodOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
