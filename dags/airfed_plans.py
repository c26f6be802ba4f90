"""Every stored compute-plan spec as one Airflow DAG, ``airfed_plan_<key>``.

The plans folder (``[airfed] plans_folder``) holds one spec per submitted
plan, ``<key>.json``. Each task of the spec becomes a
:class:`~airfed.operators.NodeTaskOperator` that runs on the task's worker
node; a task depends on the parents whose outputs it takes as inputs, and
tells its node which organization holds each parent's outputs, and proves
to it that the task is one of the plan registered on the ledger (the spec's
hash, the root of its task tree, the task's index and inclusion proof).

Parsing stays fast and deterministic: when Airflow parses this file to run
one task it names the DAG and the task (``get_parsing_context()``), and only
that plan's spec is read and only that task's operator built (a task process
needs no other task and no edge; the dag-processor, which names neither,
builds every plan whole). The DAG's content depends on the spec alone, so
parsing again never makes a new DAG version. Nothing here imports torch or
the Kubernetes provider.

A spec that cannot be read gets no DAG and does not stop the other plans:
``airfed_plan_errors.py`` reports it as an import error naming the plan and
the field.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, get_parsing_context

from airfed.dags._specs import read_specs
from airfed.operators import NodeTaskOperator
from airfed.operators._plan_end import end_plan_on_nodes
from airfed.operators._settings import (
    finish_in_triggerer,
    node_poll_interval,
    wait_on_worker_seconds,
)
from airfed.sdk._membership import TaskTree
from airfed.sdk.orchestrator import dag_id_for, task_id_for
from airfed.sdk.spec import PlanSpec

__all__ = ["build_plan_dag", "plan_doc"]

_DEFAULT_ARGS = {
    "owner": "airfed",
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=5),
}


def plan_doc(spec: PlanSpec) -> str:
    """The DAG's documentation: what the plan is, for the Airflow UI."""
    workers = sorted({task.worker for task in spec.tasks})
    return "\n".join(
        [
            f"# {spec.name}",
            "",
            "| | |",
            "|---|---|",
            f"| plan key | `{spec.key}` |",
            f"| strategy | {spec.strategy} |",
            f"| rounds | {spec.rounds} |",
            f"| organizations | {', '.join(spec.organizations)} |",
            f"| workers | {', '.join(workers)} |",
            f"| creator | {spec.creator} |",
            f"| tasks | {len(spec.tasks)} |",
        ]
    )


def build_plan_dag(
    spec: PlanSpec, only_task_id: str | None = None, tree: TaskTree | None = None
) -> DAG:
    """One DAG for the plan: a node task per task, edges from parents.

    With ``only_task_id`` (a task process's parse) the DAG holds just that
    task, when the plan has it, and no edges. ``tree`` is the plan's task
    tree when the caller has it already.
    """
    tasks = list(enumerate(spec.tasks))
    if only_task_id is not None:
        chosen = [(i, t) for i, t in tasks if task_id_for(t) == only_task_id]
        tasks = chosen or tasks
    tree = tree if tree is not None else TaskTree(spec)
    plan = {
        "key": spec.key,
        "name": spec.name,
        "creator": spec.creator,
        "spec_hash": tree.spec_hash,
        "tasks_root": tree.root,
        "task_count": tree.count,
    }
    workers = {task.key: task.worker for task in spec.tasks}
    # Read once per DAG: a configuration lookup per task slows a large plan.
    poll_interval, finish_in_trigger = node_poll_interval(), finish_in_triggerer()
    wait = wait_on_worker_seconds()
    with DAG(
        dag_id=dag_id_for(spec.key),
        description=f"{spec.strategy}: {spec.name}",
        doc_md=plan_doc(spec),
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["airfed", spec.strategy],
        default_args=_DEFAULT_ARGS,
        # When the run ends, every node deletes the plan's transient models
        # that consumers which never ran would have released.
        on_success_callback=end_plan_on_nodes,
        on_failure_callback=end_plan_on_nodes,
    ) as dag:
        operators = {
            task.key: NodeTaskOperator(
                task_spec=task,
                plan={
                    **plan,
                    "parents": {p: workers[p] for p in task.parent_keys},
                    "task_index": index,
                    "task_proof": tree.proof(index),
                },
                poll_interval=poll_interval,
                finish_in_trigger=finish_in_trigger,
                wait_on_worker=wait,
            )
            for index, task in tasks
        }
        for _, task in tasks:
            for parent in task.parent_keys:
                if parent in operators:
                    operators[parent] >> operators[task.key]
    return dag


def _build_all() -> dict[str, DAG]:
    context = get_parsing_context()
    stored = read_specs(context.dag_id)
    only = context.task_id if context.dag_id is not None else None
    dags = [build_plan_dag(s.spec, only, s.task_tree()) for s in stored.stored]
    return {dag.dag_id: dag for dag in dags}


for _dag_id, _dag in _build_all().items():
    globals()[_dag_id] = _dag
