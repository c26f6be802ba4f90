"""The orchestrator's airfed API (contract F), mounted at ``/airfed``.

Every route needs an Airflow login (bearer JWT or the UI's cookie). Work on
DAGs and DAG runs goes through Airflow's REST API v2 with the caller's own
token, so Airflow's permissions apply to the caller as they would in the UI.

Submitting a plan:

1. read the spec (``parse_plan_spec``; a bad spec is refused, naming the field);
2. write it atomically to the plans folder as ``<key>.json`` (a second
   submission of the same spec is accepted, a different spec under a known
   key is refused);
3. ask the dag-processor to parse the DAG factory at once (a priority
   parsing request, as ``PUT /api/v2/parseDagFile`` does), and wait until the
   DAG ``airfed_plan_<key>`` exists;
4. unpause the DAG and trigger its run ``airfed__<key>``.

Cancelling a plan marks its DAG run failed, then asks each worker's node to
cancel the tasks that had not finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request, status

from airfed.operators._settings import plans_folder
from airfed.operators._trigger import node_client_args
from airfed.plugins import listener
from airfed.plugins._plan_ledger import require_registered_plan
from airfed.plugins._rest import AirflowRest, detail
from airfed.sdk.errors import AirfedError, NodeRequestError, SpecError
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import dag_id_for, dag_run_id_for, task_id_for
from airfed.sdk.spec import PlanSpec, parse_plan_spec, spec_hash

__all__ = ["app"]

logger = logging.getLogger(__name__)

_FACTORY_FILE = "airfed_plans.py"
_DAG_APPEAR_TIMEOUT = 120.0
_FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed"})
_PAGE = 100
_FAIL_ATTEMPTS = 5
_FAIL_SETTLE_SECONDS = 0.5
# Submissions go through Airflow one at a time: on the embedded default
# (SQLite) concurrent triggers wait on each other's write lock until one fails.
_SUBMISSIONS = threading.Lock()


def _requires_login() -> Any:
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return requires_authenticated()


app = FastAPI(
    title="airfed orchestrator API",
    description="Submit, follow and cancel compute plans.",
    dependencies=[Depends(_requires_login())],
)


@contextlib.contextmanager
def _airflow(request: Request) -> Iterator[AirflowRest]:
    yield AirflowRest(request)


# --------------------------------------------------------------------------
# The plans folder


def _spec_path(plan_key: str) -> Path:
    dag_id_for(plan_key)  # refuses keys that cannot name a file or a DAG
    path: Path = plans_folder() / f"{plan_key}.json"
    return path


def _read_spec(plan_key: str) -> PlanSpec:
    try:
        path = _spec_path(plan_key)
        return parse_plan_spec(path.read_bytes())
    except FileNotFoundError as exc:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no plan {plan_key} was submitted"
        ) from exc
    except AirfedError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


def _store_spec(spec: PlanSpec) -> None:
    """Write ``<key>.json`` atomically; the same spec twice is accepted."""
    path = _spec_path(spec.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        stored = parse_plan_spec(path.read_bytes())
        if spec_hash(stored) != spec_hash(spec):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"plan key {spec.key} is already used by a different plan; "
                "compile the plan again to get a new key",
            )
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(spec.to_json())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cancel_marker(plan_key: str) -> Path:
    marker: Path = plans_folder() / f"{plan_key}.canceled"
    return marker


# --------------------------------------------------------------------------
# Airflow steps of a submission


def _request_parse() -> None:
    """Ask the dag-processor to parse the DAG factory before anything else."""
    from airflow.models.dagbag import DagPriorityParsingRequest
    from airflow.utils.session import create_session
    from sqlalchemy.exc import IntegrityError

    try:
        with create_session() as session:
            session.add(DagPriorityParsingRequest("dags-folder", _FACTORY_FILE))
    except IntegrityError:
        # A request for the factory file is still pending (its key is a hash of
        # the file): that parse reads the folder after this spec was stored.
        logger.debug("parse of the DAG factory already requested")


def _wait_for_dag(api: AirflowRest, dag_id: str) -> None:
    deadline = time.monotonic() + _DAG_APPEAR_TIMEOUT
    while api.call("GET", f"/dags/{dag_id}").status_code == 404:
        if time.monotonic() > deadline:
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT,
                f"DAG {dag_id} did not appear within {_DAG_APPEAR_TIMEOUT:.0f} s; "
                "check the dag-processor's log and the import errors",
            )
        time.sleep(0.1)


def _trigger(api: AirflowRest, spec: PlanSpec) -> str:
    dag_id: str = dag_id_for(spec.key)
    run_id: str = dag_run_id_for(spec.key)
    response = api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    if response.status_code >= 400:
        raise HTTPException(
            response.status_code,
            f"Airflow refused to unpause {dag_id}: {detail(response)}",
        )
    body: dict[str, Any] = {
        "dag_run_id": run_id,
        "logical_date": None,
        "conf": {},
        "note": f"compute plan {spec.name!r} submitted by {spec.creator}",
    }
    # The run's id is the plan's: a run already created answers 409.
    response = api.call("POST", f"/dags/{dag_id}/dagRuns", json=body)
    if response.status_code not in (200, 409) and response.status_code >= 400:
        raise HTTPException(
            response.status_code, f"Airflow refused the run: {detail(response)}"
        )
    return run_id


# --------------------------------------------------------------------------
# Routes


@app.post("/api/plans", status_code=status.HTTP_201_CREATED)
def submit_plan(
    request: Request, body: Annotated[dict[str, Any], Body()]
) -> dict[str, str]:
    try:
        spec = parse_plan_spec(body)
    except SpecError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    try:
        dag_id = dag_id_for(spec.key)
    except AirfedError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    if listener.ledger_enabled():
        require_registered_plan(spec)
    with _SUBMISSIONS, _airflow(request) as api:
        _store_spec(spec)
        _request_parse()
        _wait_for_dag(api, dag_id)
        run_id = _trigger(api, spec)
    logger.info("plan submitted plan=%s tasks=%d", spec.key, len(spec.tasks))
    return {"plan_key": spec.key, "dag_id": dag_id, "dag_run_id": run_id}


def _run_state(api: AirflowRest, plan_key: str) -> str:
    dag_id, run_id = dag_id_for(plan_key), dag_run_id_for(plan_key)
    response = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    if response.status_code == 404:
        return "submitted"
    if response.status_code >= 400:
        raise HTTPException(response.status_code, detail(response))
    state = str(response.json()["state"])
    if state == "failed" and _cancel_marker(plan_key).exists():
        return "canceled"
    return state


def _summary(spec: PlanSpec, state: str) -> dict[str, Any]:
    return {
        "plan_key": spec.key,
        "name": spec.name,
        "strategy": spec.strategy,
        "rounds": spec.rounds,
        "organizations": list(spec.organizations),
        "creator": spec.creator,
        "dag_id": dag_id_for(spec.key),
        "dag_run_id": dag_run_id_for(spec.key),
        "status": state,
        "task_count": len(spec.tasks),
    }


@app.get("/api/plans")
def list_plans(request: Request) -> list[dict[str, Any]]:
    folder = plans_folder()
    plans = []
    with _airflow(request) as api:
        for path in sorted(folder.glob("*.json")):
            try:
                spec = parse_plan_spec(path.read_bytes())
            except (OSError, AirfedError):
                continue
            plans.append(_summary(spec, _run_state(api, spec.key)))
    return plans


def _task_states(api: AirflowRest, plan_key: str) -> dict[str, str]:
    dag_id, run_id = dag_id_for(plan_key), dag_run_id_for(plan_key)
    states: dict[str, str] = {}
    offset = 0
    while True:
        response = api.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
            params={"limit": _PAGE, "offset": offset},
        )
        if response.status_code == 404:
            return states
        if response.status_code >= 400:
            raise HTTPException(response.status_code, detail(response))
        page = response.json()
        for ti in page["task_instances"]:
            states[ti["task_id"]] = ti["state"] or "none"
        offset += _PAGE
        if offset >= page["total_entries"]:
            return states


def _tasks(spec: PlanSpec, states: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "task_key": task.key,
            "task_id": task_id_for(task),
            "worker": task.worker,
            "category": task.category,
            "round": task.round,
            "rank": task.rank,
            "state": states.get(task_id_for(task), "none"),
        }
        for task in spec.tasks
    ]


@app.get("/api/plans/{plan_key}")
def get_plan(request: Request, plan_key: str) -> dict[str, Any]:
    spec = _read_spec(plan_key)
    with _airflow(request) as api:
        state = _run_state(api, plan_key)
        states = _task_states(api, plan_key)
    return {**_summary(spec, state), "tasks": _tasks(spec, states)}


def _cancel_on_nodes(tasks: list[dict[str, Any]]) -> list[str]:
    canceled = []
    for task in tasks:
        try:
            url, ssl_context = node_client_args(task["worker"])
            with NodeClient(url, ssl_context) as node:
                node.cancel_task(task["task_key"])
            canceled.append(task["task_key"])
        except NodeRequestError as exc:
            # 404: the node never received the task; 409: it had already ended.
            logger.info(
                "task not canceled task=%s node=%s status=%s",
                task["task_key"],
                task["worker"],
                exc.status,
            )
        except AirfedError as exc:
            logger.warning("task not canceled task=%s error=%s", task["task_key"], exc)
    return canceled


def _fail_run(api: AirflowRest, dag_id: str, run_id: str) -> None:
    """Mark the DAG run failed, and again if the scheduler raced and ended it.

    Marking a run that has no running task skips every task; a scheduler loop
    that already held the run may then end it as successful.
    """
    path = f"/dags/{dag_id}/dagRuns/{run_id}"
    for _ in range(_FAIL_ATTEMPTS):
        response = api.call("PATCH", path, json={"state": "failed"})
        if response.status_code == 404:
            return
        if response.status_code >= 400:
            raise HTTPException(response.status_code, detail(response))
        time.sleep(_FAIL_SETTLE_SECONDS)
        if api.json("GET", path)["state"] == "failed":
            return


@app.post("/api/plans/{plan_key}/cancel")
def cancel_plan(request: Request, plan_key: str) -> dict[str, Any]:
    spec = _read_spec(plan_key)
    dag_id, run_id = dag_id_for(plan_key), dag_run_id_for(plan_key)
    with _airflow(request) as api:
        unfinished = [
            task
            for task in _tasks(spec, _task_states(api, plan_key))
            if task["state"] not in _FINISHED_TI_STATES
        ]
        _cancel_marker(plan_key).touch()
        _fail_run(api, dag_id, run_id)
    canceled = _cancel_on_nodes(unfinished)
    logger.info("plan canceled plan=%s node_tasks=%d", plan_key, len(canceled))
    return {"plan_key": plan_key, "status": "canceled", "canceled_tasks": canceled}
