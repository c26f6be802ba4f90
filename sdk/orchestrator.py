"""Submitting compute plans to the orchestrator (Airflow) and following them.

The orchestrator's API is mounted by airfed's Airflow plugin at ``/airfed``
(contract F) and authenticated with Airflow's own JWT::

    POST /airfed/api/plans              a plan spec -> plan_key, dag_id, dag_run_id
    GET  /airfed/api/plans              every submitted plan and its status
    GET  /airfed/api/plans/{key}        status and the state of each task
    POST /airfed/api/plans/{key}/cancel stop the DAG run and the node tasks

:class:`OrchestratorClient` gets the token with the user's name and password
(``POST /auth/token``) and calls these; :func:`wait_for_plan` polls a plan
until it ends. A plan's status is ``submitted`` (no DAG run yet), then the
state of its DAG run: ``queued``, ``running``, ``success`` or ``failed``;
``canceled`` once cancelled.

The names of a plan's DAG and of its tasks in Airflow are computed here, so
that the DAG factory, the plugin and the SDK agree on them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from airfed.sdk.errors import OrchestratorError
from airfed.sdk.spec import PlanSpec, TaskSpec

__all__ = [
    "FINAL_PLAN_STATUSES",
    "OrchestratorClient",
    "dag_id_for",
    "dag_run_id_for",
    "task_id_for",
    "wait_for_plan",
]

FINAL_PLAN_STATUSES = frozenset({"success", "failed", "canceled"})
DAG_ID_PREFIX = "airfed_plan_"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _check_key(kind: str, key: str) -> None:
    if not _SAFE_KEY.match(key):
        raise OrchestratorError(
            f"{kind} key {key!r} may hold only letters, digits, '_', '.' and '-' "
            "(at most 200 characters)"
        )


def dag_id_for(plan_key: str) -> str:
    """The Airflow DAG that runs plan ``plan_key``."""
    _check_key("plan", plan_key)
    return f"{DAG_ID_PREFIX}{plan_key}"


def dag_run_id_for(plan_key: str) -> str:
    """The DAG run of a submitted plan; one run per plan."""
    _check_key("plan", plan_key)
    return f"airfed__{plan_key}"


def task_id_for(task: TaskSpec) -> str:
    """The Airflow task id of a plan's task: readable in the UI, unique by key."""
    _check_key("task", task.key)
    return f"r{task.round}_{task.category}_{task.worker}__{task.key}"


class OrchestratorClient:
    """Client of the orchestrator's airfed API, authenticated as an Airflow user."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        timeout: httpx.Timeout | float = _TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self._username = username
        self._password = password
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport

    def _login(self) -> str:
        body = {"username": self._username, "password": self._password}
        response = self._request_raw("POST", "/auth/token", json=body, auth=False)
        if response.status_code >= 400:
            raise OrchestratorError(
                f"the orchestrator at {self.url} refused the login of "
                f"{self._username!r} ({response.status_code}); check the user name "
                "and password that 'airfed orchestrator start' printed"
            )
        self._token = str(response.json()["access_token"])
        return self._token

    def _request_raw(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> httpx.Response:
        headers = {}
        if auth:
            token = self._token or self._login()
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise OrchestratorError(
                f"cannot reach the orchestrator at {self.url}: {exc}; "
                "is 'airfed orchestrator start' running?"
            ) from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request_raw(method, path, **kwargs)
        if response.status_code == 401:
            self._token = None
            response = self._request_raw(method, path, **kwargs)
        if response.status_code >= 400:
            raise OrchestratorError(
                f"the orchestrator refused {method} {path} "
                f"({response.status_code}): {_detail(response)}"
            )
        return response.json()

    # -- plans

    def submit_plan(self, spec: PlanSpec) -> dict[str, str]:
        """Store the plan's spec, make its DAG and start its run."""
        body = spec.model_dump(mode="json")
        return dict(self._request("POST", "/airfed/api/plans", json=body))

    def list_plans(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/airfed/api/plans"))

    def get_plan(self, plan_key: str) -> dict[str, Any]:
        _check_key("plan", plan_key)
        return dict(self._request("GET", f"/airfed/api/plans/{plan_key}"))

    def cancel_plan(self, plan_key: str) -> dict[str, Any]:
        _check_key("plan", plan_key)
        return dict(self._request("POST", f"/airfed/api/plans/{plan_key}/cancel"))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, Mapping) and "detail" in body:
        return str(body["detail"])
    return response.text[:500]


def wait_for_plan(
    client: OrchestratorClient,
    plan_key: str,
    *,
    timeout: float = 3600.0,
    poll_interval: float = 1.0,
) -> dict[str, Any]:
    """Poll the plan until its status is final; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        plan = client.get_plan(plan_key)
        if plan.get("status") in FINAL_PLAN_STATUSES:
            return plan
        if time.monotonic() >= deadline:
            raise OrchestratorError(
                f"plan {plan_key} is still {plan.get('status')} after {timeout:.0f} s; "
                "follow it with 'airfed plan show' or in the Airflow UI"
            )
        time.sleep(poll_interval)
