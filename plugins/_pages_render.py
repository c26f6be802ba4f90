"""What the pages show, as pure functions of data.

Everything here turns plain values (a plan spec, what Airflow knows of the
plan's DAG run, what the nodes answer) into HTML; nothing reads a file, a
database or the network, so the pages can be rendered and tested without
Airflow. :mod:`airfed.plugins.pages` gathers the data and serves the result.

Performances are grouped as :mod:`airfed.sdk.performance` groups them for
``airfed plan perf``: a test task's metadata says which model it evaluates
(the federated model, or an organization's local-only baseline), and a
model's value in a round is the mean over the organizations that tested it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

from airfed.plugins._pages_plot import Series, line_chart_svg
from airfed.sdk.catalog import Performance
from airfed.sdk.performance import (
    FEDERATED,
    PerformanceTable,
    model_label,
    performance_table,
)
from airfed.sdk.spec import PlanSpec, TaskSpec

__all__ = [
    "MetricTable",
    "NodeHealth",
    "NodeTask",
    "PlanPageData",
    "PlanRun",
    "performance_tables",
    "plan_status",
    "render_message",
    "render_plan_list",
    "render_plan_page",
    "task_status",
]

# Airflow task instance states in airfed's words for a task.
_AIRFLOW_TASK_STATES = {
    "success": "done",
    "failed": "failed",
    "upstream_failed": "failed",
    "running": "executing",
    "deferred": "executing",
    "up_for_retry": "executing",
    "up_for_reschedule": "executing",
    "restarting": "executing",
    "queued": "waiting",
    "scheduled": "waiting",
    "skipped": "canceled",
    "removed": "canceled",
}
_AIRFLOW_RUN_STATES = {
    "queued": "waiting",
    "running": "running",
    "success": "done",
    "failed": "failed",
}


@dataclass(frozen=True)
class PlanRun:
    """What Airflow knows of a compute plan's latest DAG run."""

    run_id: str
    state: str
    task_states: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeTask:
    """A task as its worker's node reports it (``GET /tasks?plan_key=``)."""

    key: str
    status: str
    error: str | None = None


@dataclass(frozen=True)
class NodeHealth:
    """Whether an organization's node answered ``GET /health``."""

    organization: str
    url: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PlanPageData:
    """Everything the page of one compute plan shows."""

    spec: PlanSpec
    run: PlanRun | None = None
    node_tasks: Mapping[str, NodeTask] = field(default_factory=dict)
    performances: Sequence[Performance] = ()
    health: Sequence[NodeHealth] = ()
    problems: Sequence[str] = ()


@dataclass(frozen=True)
class MetricTable:
    """A metric's values per round: federated, each local model, local mean."""

    metric: str
    organizations: tuple[str, ...]
    rows: tuple[tuple[int, float | None, tuple[float | None, ...]], ...]
    series: tuple[Series, ...]

    @staticmethod
    def local_mean(values: tuple[float | None, ...]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.fmean(present) if present else None


# --------------------------------------------------------------------------
# Statuses


def task_status(
    key: str, run: PlanRun | None, node_tasks: Mapping[str, NodeTask]
) -> str:
    """waiting, executing, prepared (for a pod), done, failed or canceled.

    The node's word wins: it runs the task. Airflow's state stands in for
    tasks that never reached their node.
    """
    if key in node_tasks:
        return node_tasks[key].status
    if run is None:
        return "waiting"
    return _AIRFLOW_TASK_STATES.get(run.task_states.get(key, ""), "waiting")


def plan_status(run: PlanRun | None) -> str:
    """not started, waiting, running, done or failed (the latest DAG run)."""
    if run is None:
        return "not started"
    return _AIRFLOW_RUN_STATES.get(run.state, run.state)


def _progress(spec: PlanSpec, statuses: Mapping[str, str]) -> tuple[int, int]:
    done = sum(1 for task in spec.tasks if statuses.get(task.key) == "done")
    return done, len(spec.tasks)


# --------------------------------------------------------------------------
# Performances


def performance_tables(
    spec: PlanSpec, performances: Sequence[Performance]
) -> list[MetricTable]:
    """One table per metric, computed as ``airfed plan perf`` computes them."""
    metadata = {task.key: task.metadata for task in spec.tasks}
    table = performance_table(performances, metadata)
    metrics = list(dict.fromkeys(metric for _, metric in table.columns))
    return [_metric_table(spec, table, metric) for metric in metrics]


def _metric_table(spec: PlanSpec, table: PerformanceTable, metric: str) -> MetricTable:
    index = {model: i for i, (model, m) in enumerate(table.columns) if m == metric}
    by_org = {
        model.removeprefix("local:"): model for model in index if model != FEDERATED
    }
    locals_ = [o for o in spec.organizations if o in by_org]
    locals_ += sorted(set(by_org) - set(locals_))

    def value(values: tuple[float | None, ...], model: str) -> float | None:
        return values[index[model]] if model in index else None

    rows = tuple(
        (r, value(v, FEDERATED), tuple(value(v, by_org[o]) for o in locals_))
        for r, v in table.rows
    )
    rows = tuple(row for row in rows if row[1] is not None or any(row[2]))
    models = [FEDERATED, *(by_org[o] for o in locals_)]
    series = tuple(
        Series(
            name=model.replace(":", " "),
            points=tuple(
                (r, float(x))
                for r, v in table.rows
                if (x := value(v, model)) is not None
            ),
            federated=model == FEDERATED,
        )
        for model in models
        if model in index
    )
    return MetricTable(metric, tuple(locals_), rows, series)


# --------------------------------------------------------------------------
# Tasks per round and organization


@dataclass(frozen=True)
class _TaskCell:
    key: str
    label: str
    status: str
    error: str | None


def _task_label(task: TaskSpec) -> str:
    if model_label(task.metadata, task.worker) == FEDERATED:
        return str(task.category)
    return f"{task.category} (local)"


def _grid_order(task: TaskSpec) -> tuple[int, bool, int, str]:
    """Within a round: the federated model's tasks first, each by rank."""
    local = model_label(task.metadata, task.worker) != FEDERATED
    return task.round, local, task.rank, task.category


def _task_grid(
    data: PlanPageData, statuses: Mapping[str, str]
) -> tuple[list[str], list[tuple[int, list[list[_TaskCell]]]]]:
    spec = data.spec
    workers = list(spec.organizations)
    workers += sorted({t.worker for t in spec.tasks} - set(workers))
    cells: dict[int, dict[str, list[_TaskCell]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for task in sorted(spec.tasks, key=_grid_order):
        node_task = data.node_tasks.get(task.key)
        cells[task.round][task.worker].append(
            _TaskCell(
                task.key,
                _task_label(task),
                statuses[task.key],
                node_task.error if node_task else None,
            )
        )
    grid = [(r, [cells[r][w] for w in workers]) for r in sorted(cells)]
    return workers, grid


# --------------------------------------------------------------------------
# HTML


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = _number
    return env


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render_plan_list(
    plans: Sequence[tuple[PlanSpec, PlanRun | None]], problems: Sequence[str] = ()
) -> str:
    """The list of compute plans, newest DAG runs first as given."""
    rows = []
    for spec, run in plans:
        statuses = {t.key: task_status(t.key, run, {}) for t in spec.tasks}
        done, total = _progress(spec, statuses)
        rows.append(
            {"spec": spec, "status": plan_status(run), "done": done, "total": total}
        )
    template = _environment().get_template("pages_list.html")
    return template.render(plans=rows, problems=list(problems), home="./")


def render_plan_page(data: PlanPageData) -> str:
    """The page of one compute plan: tasks, performances, nodes' health."""
    spec = data.spec
    statuses = {
        t.key: task_status(t.key, data.run, data.node_tasks) for t in spec.tasks
    }
    done, total = _progress(spec, statuses)
    workers, grid = _task_grid(data, statuses)
    tables = performance_tables(spec, data.performances)
    # line_chart_svg escapes every name and value it draws.
    charts = [Markup(line_chart_svg(t.metric, t.series)) for t in tables]  # noqa: S704
    template = _environment().get_template("pages_plan.html")
    return template.render(
        spec=spec,
        run=data.run,
        status=plan_status(data.run),
        done=done,
        total=total,
        workers=workers,
        grid=grid,
        tables=list(zip(tables, charts, strict=True)),
        health=list(data.health),
        problems=list(data.problems),
        home="../",
    )


def render_message(title: str, text: str) -> str:
    """A page that only says something (plan not found, not a compute plan)."""
    template = _environment().get_template("pages_message.html")
    return template.render(title=title, text=text, problems=[], home="../")
