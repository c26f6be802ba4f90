"""airfed's pages in the Airflow UI: compute plans for the people who run them.

A FastAPI app of server-rendered HTML, mounted in Airflow's api-server at
``/airfed-pages`` by :class:`airfed.plugins.AirfedPlugin` and shown inside the
UI (the "Federated learning" menu item, and a tab on each ``airfed_plan_*``
DAG). Routes::

    GET /                 the compute plans: strategy, rounds, organizations,
                          status, progress
    GET /plans/{key}      one plan: performances per round (federated against
                          local-only models), tasks per round and organization,
                          each organization's node health
    GET /dags/{dag_id}    the same page for the DAG ``airfed_plan_<key>``

Data comes from three places: the plan specs in ``[airfed] plans_folder``,
Airflow's database for the state of each plan's latest DAG run, and the nodes
(``GET /health``, ``/tasks?plan_key=``, ``/performances?plan_key=``) over
mutual TLS with the orchestrator's identity (``<[airfed] network>/orchestrator``).
Rendering is a pure function of that data (:mod:`airfed.plugins._pages_render`).

Every route requires an authenticated Airflow user: the UI's ``_token`` cookie
or a bearer token, checked by Airflow's ``requires_authenticated()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from airfed.plugins._pages_render import (
    NodeHealth,
    NodeTask,
    PlanPageData,
    PlanRun,
    render_message,
    render_plan_list,
    render_plan_page,
)
from airfed.sdk.catalog import Performance
from airfed.sdk.errors import AirfedError
from airfed.sdk.orchestrator import DAG_ID_PREFIX
from airfed.sdk.spec import PlanSpec, parse_plan_spec

__all__ = [
    "NodeReader",
    "PlanSource",
    "RunReader",
    "airflow_runs",
    "create_pages_app",
    "pages_app",
    "source_from_config",
]

logger = logging.getLogger(__name__)

_NODE_TIMEOUT_SECONDS = 5.0

RunReader = Callable[[Sequence[PlanSpec]], Mapping[str, PlanRun]]
"""Latest DAG run of each plan, by plan key (plans never run are left out)."""


class NodeReader(Protocol):
    """What the plan page asks the organizations' nodes."""

    async def __call__(
        self, spec: PlanSpec
    ) -> tuple[dict[str, NodeTask], list[Performance], list[NodeHealth]]: ...


# --------------------------------------------------------------------------
# Plan specs


class PlanSource:
    """Plan specs from the plans folder, runs from Airflow, the rest from nodes."""

    def __init__(
        self, plans_folder: Path, runs: RunReader, nodes: NodeReader | None
    ) -> None:
        self.plans_folder = Path(plans_folder)
        self.runs = runs
        self.nodes = nodes

    def specs(self) -> tuple[list[PlanSpec], list[str]]:
        """Every readable plan spec, and one line per spec that is not."""
        specs: list[PlanSpec] = []
        problems: list[str] = []
        for path in sorted(self.plans_folder.glob("*.json")):
            try:
                specs.append(parse_plan_spec(path.read_bytes()))
            except (OSError, AirfedError) as exc:
                problems.append(f"plan spec {path.name} cannot be read: {exc}")
        return specs, problems

    def spec(self, key: str) -> PlanSpec | None:
        path = self.plans_folder / f"{key}.json"
        if path.name == f"{key}.json" and path.is_file():
            try:
                return parse_plan_spec(path.read_bytes())
            except (OSError, AirfedError):
                logger.warning("plan spec unreadable plan=%s", key)
        specs, _ = self.specs()
        return next((spec for spec in specs if spec.key == key), None)

    def latest_runs(
        self, specs: Sequence[PlanSpec]
    ) -> tuple[Mapping[str, PlanRun], str]:
        try:
            return self.runs(specs), ""
        except Exception as exc:  # Airflow's database is out of reach: say so
            logger.warning("airflow runs unreadable error=%s", type(exc).__name__)
            return {}, f"Airflow's database did not answer: {type(exc).__name__}"

    async def page_data(self, spec: PlanSpec) -> PlanPageData:
        runs, problem = await asyncio.to_thread(self.latest_runs, [spec])
        problems = [problem] if problem else []
        node_tasks: dict[str, NodeTask] = {}
        performances: list[Performance] = []
        health: list[NodeHealth] = []
        if self.nodes is None:
            problems.append("[airfed] network is not set: nodes cannot be asked")
        else:
            try:
                node_tasks, performances, health = await self.nodes(spec)
            except AirfedError as exc:  # e.g. the network folder is missing
                problems.append(f"the nodes cannot be asked: {exc}")
            problems += [
                f"the node of {h.organization} did not answer: {h.detail}"
                for h in health
                if not h.ok
            ]
        return PlanPageData(
            spec=spec,
            run=runs.get(spec.key),
            node_tasks=node_tasks,
            performances=performances,
            health=health,
            problems=problems,
        )


# --------------------------------------------------------------------------
# Airflow


def airflow_runs(specs: Sequence[PlanSpec]) -> dict[str, PlanRun]:
    """Read each plan's latest DAG run and its task states from Airflow's DB."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airfed.sdk.orchestrator import dag_id_for, task_id_for

    by_dag = {dag_id_for(spec.key): spec for spec in specs}
    runs: dict[str, PlanRun] = {}
    with create_session() as session:
        for dag_id, spec in by_dag.items():
            run = session.scalars(
                select(DagRun)
                .where(DagRun.dag_id == dag_id)
                .order_by(DagRun.run_after.desc(), DagRun.id.desc())
                .limit(1)
            ).first()
            if run is None:
                continue
            rows = session.execute(
                select(TaskInstance.task_id, TaskInstance.state).where(
                    TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id
                )
            )
            keys = {task_id_for(task): task.key for task in spec.tasks}
            states = {
                keys[task_id]: str(state) if state is not None else ""
                for task_id, state in rows
                if task_id in keys
            }
            runs[spec.key] = PlanRun(str(run.run_id), str(run.state), states)
    return runs


# --------------------------------------------------------------------------
# Nodes


def _performance(item: Mapping[str, Any]) -> Performance | None:
    try:
        return Performance(
            plan_key=str(item.get("plan_key", "")),
            task_key=str(item["task_key"]),
            round=int(item["round"]),
            worker=str(item["worker"]),
            identifier=str(item["identifier"]),
            value=float(item["value"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _node_task(item: Mapping[str, Any]) -> NodeTask | None:
    if "key" not in item or "status" not in item:
        return None
    error = item.get("error")
    return NodeTask(str(item["key"]), str(item["status"]), error and str(error))


class MutualTlsNodes:
    """Asks every organization's node over mutual TLS, all at once."""

    def __init__(self, network_dir: Path, timeout: float = _NODE_TIMEOUT_SECONDS):
        self.network_dir = Path(network_dir)
        self.timeout = timeout

    async def __call__(
        self, spec: PlanSpec
    ) -> tuple[dict[str, NodeTask], list[Performance], list[NodeHealth]]:
        from airfed.sdk.network import ORCHESTRATOR_ID, client_ssl_context, load_network

        network = load_network(self.network_dir)
        context = client_ssl_context(network.root / ORCHESTRATOR_ID)
        members = {org.id: org for org in network.partners}
        answers = await asyncio.gather(
            *(
                self._ask(org_id, members[org_id].node_url, context, spec.key)
                if org_id in members
                else _unknown(org_id)
                for org_id in spec.organizations
            )
        )
        node_tasks: dict[str, NodeTask] = {}
        performances: list[Performance] = []
        for tasks, perfs, _ in answers:
            node_tasks.update((t.key, t) for t in tasks)
            performances.extend(perfs)
        return node_tasks, performances, [health for _, _, health in answers]

    async def _ask(
        self, org_id: str, url: str, context: Any, plan_key: str
    ) -> tuple[list[NodeTask], list[Performance], NodeHealth]:
        from airfed.sdk.node_client import AsyncNodeClient

        try:
            async with AsyncNodeClient(url, context, timeout=self.timeout) as client:
                status = await client.health()
                tasks = await client.list_tasks(plan_key)
                perfs = await client.list_performances(plan_key)
        except AirfedError as exc:
            logger.warning("node unreachable organization=%s", org_id)
            return [], [], NodeHealth(org_id, url, False, str(exc))
        detail = ", ".join(
            f"{name}: {value}"
            for name, value in status.items()
            if name not in {"status", "organization", "caller"}
            and isinstance(value, str | int)
        )
        return (
            [t for t in map(_node_task, tasks) if t is not None],
            [p for p in map(_performance, perfs) if p is not None],
            NodeHealth(org_id, url, status.get("status") == "ok", detail),
        )


async def _unknown(
    org_id: str,
) -> tuple[list[NodeTask], list[Performance], NodeHealth]:
    detail = "not a partner of the network: no node to ask"
    return [], [], NodeHealth(org_id, "", False, detail)


def source_from_config() -> PlanSource:
    """The source an api-server uses: ``[airfed] plans_folder`` and ``network``."""
    from airflow.configuration import conf

    plans_folder = conf.get("airfed", "plans_folder", fallback="")
    if not plans_folder:
        raise AirfedError(
            "[airfed] plans_folder is not set; set it in airflow.cfg or "
            "AIRFLOW__AIRFED__PLANS_FOLDER"
        )
    network = conf.get("airfed", "network", fallback="")
    nodes = MutualTlsNodes(Path(network)) if network else None
    return PlanSource(Path(plans_folder), airflow_runs, nodes)


# --------------------------------------------------------------------------
# The app


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code)


def create_pages_app(
    source: PlanSource | Callable[[], PlanSource] = source_from_config,
    *,
    authenticate: bool = True,
) -> FastAPI:
    """The pages app. ``source`` is a :class:`PlanSource` or a factory of one,
    called at the first request (Airflow's configuration is read then).

    ``authenticate=False`` leaves the pages open: only for a server that
    listens on loopback for a test.
    """
    dependencies = []
    if authenticate:
        from airflow.api_fastapi.core_api.security import requires_authenticated

        dependencies.append(Depends(requires_authenticated()))
    app = FastAPI(
        title="airfed pages",
        dependencies=dependencies,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    resolved: list[PlanSource] = [source] if isinstance(source, PlanSource) else []

    def current() -> PlanSource:
        if not resolved:
            assert callable(source)
            resolved.append(source())
        return resolved[0]

    @app.get("/", response_class=HTMLResponse)
    def plan_list() -> HTMLResponse:
        plans = current()
        specs, problems = plans.specs()
        runs, problem = plans.latest_runs(specs)
        if problem:
            problems.append(problem)
        specs.sort(key=lambda s: (s.key not in runs, s.name, s.key))
        return _html(render_plan_list([(s, runs.get(s.key)) for s in specs], problems))

    @app.get("/plans/{key}", response_class=HTMLResponse)
    async def plan_page(key: str) -> HTMLResponse:
        spec = current().spec(key)
        if spec is None:
            return _html(
                render_message(
                    "Compute plan not found",
                    f"No compute plan with key {key} is in the plans folder.",
                ),
                404,
            )
        return _html(render_plan_page(await current().page_data(spec)))

    @app.get("/dags/{dag_id}", response_class=HTMLResponse)
    async def dag_page(dag_id: str) -> HTMLResponse:
        if not dag_id.startswith(DAG_ID_PREFIX):
            return _html(
                render_message(
                    "Not a compute plan",
                    f"DAG {dag_id} was not compiled from an airfed compute plan; "
                    f"compute plans are the DAGs named {DAG_ID_PREFIX}<plan key>.",
                )
            )
        return await plan_page(dag_id.removeprefix(DAG_ID_PREFIX))

    return app


@cache
def pages_app() -> FastAPI:
    """The app the plugin mounts: built once, at the api-server's first look."""
    return create_pages_app()
