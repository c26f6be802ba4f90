"""Every stored compute-plan spec as one Airflow DAG, ``airfed_plan_<key>``.

The plans folder (``[airfed] plans_folder``) holds one spec per submitted
plan, ``<key>.json``. Each task of the spec becomes a
:class:`~airfed.operators.NodeTaskOperator` that runs on the task's worker
node; a task depends on the parents whose outputs it takes as inputs, and
tells its node which organization holds each parent's outputs.

Parsing stays fast and deterministic: when Airflow parses this file to run
one task it names the DAG (``get_parsing_context().dag_id``) and only that
plan's spec is read; the DAG's content depends on the spec alone, so parsing
again never makes a new DAG version. Nothing here imports torch or the
Kubernetes provider.

A spec that cannot be read does not stop the other plans: it becomes an
import error of this file whose message names the plan and the field.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from airflow.sdk import DAG, get_parsing_context

from airfed.operators import NodeTaskOperator
from airfed.operators._settings import plans_folder
from airfed.sdk.errors import AirfedError, SpecError
from airfed.sdk.orchestrator import DAG_ID_PREFIX, dag_id_for
from airfed.sdk.spec import PlanSpec, parse_plan_spec

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


def build_plan_dag(spec: PlanSpec) -> DAG:
    """One DAG for the plan: a node task per task, edges from parents."""
    plan = {"key": spec.key, "name": spec.name, "creator": spec.creator}
    workers = {task.key: task.worker for task in spec.tasks}
    with DAG(
        dag_id=dag_id_for(spec.key),
        description=f"{spec.strategy}: {spec.name}",
        doc_md=plan_doc(spec),
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["airfed", spec.strategy],
        default_args=_DEFAULT_ARGS,
    ) as dag:
        operators = {
            task.key: NodeTaskOperator(
                task_spec=task,
                plan={**plan, "parents": {p: workers[p] for p in task.parent_keys}},
            )
            for task in spec.tasks
        }
        for task in spec.tasks:
            for parent in task.parent_keys:
                operators[parent] >> operators[task.key]
    return dag


class _UnreadablePlan(DAG):
    """Stands for a spec that cannot be read; the DAG bag refuses it."""

    def validate(self) -> None:
        raise SpecError(self.description or "plan spec cannot be read")


def _unreadable(plan_key: str, error: Exception) -> DAG:
    return _UnreadablePlan(
        dag_id=DAG_ID_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", plan_key)[:200],
        description=f"plan {plan_key}: {error}",
        schedule=None,
    )


def _spec_files(folder: Path, dag_id: str | None) -> list[Path]:
    if dag_id is not None and dag_id.startswith(DAG_ID_PREFIX):
        path = folder / f"{dag_id.removeprefix(DAG_ID_PREFIX)}.json"
        return [path] if path.is_file() else []
    return sorted(folder.glob("*.json"))


def _load(path: Path) -> DAG:
    plan_key = path.stem
    try:
        spec = parse_plan_spec(path.read_bytes())
        if spec.key != plan_key:
            raise SpecError(f"field key: {spec.key!r} differs from the file name")
        return build_plan_dag(spec)
    except (OSError, AirfedError) as exc:
        return _unreadable(plan_key, exc)


def _build_all() -> dict[str, DAG]:
    folder = plans_folder()
    wanted = get_parsing_context().dag_id
    return {dag.dag_id: dag for dag in map(_load, _spec_files(folder, wanted))}


for _dag_id, _dag in _build_all().items():
    globals()[_dag_id] = _dag
