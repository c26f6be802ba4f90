"""airfed's Airflow plugin: the orchestrator API and, in the same plugin,
the listeners that write task runs to the ledger.

The FastAPI app (contract F) is mounted at ``/airfed`` in the api-server. It
is built on first access: task processes load plugins too, and they never
need the API's code.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

__all__ = ["AirfedPlugin"]

URL_PREFIX = "/airfed"
PAGES_URL_PREFIX = "/airfed-pages"


class _FastApiApps:
    """``AirfedPlugin.fastapi_apps``, imported only when Airflow asks for it."""

    def __get__(self, instance: object, owner: type | None = None) -> list[Any]:
        from airfed.plugins._api import app
        from airfed.plugins.pages import pages_app

        return [
            {"app": app, "url_prefix": URL_PREFIX, "name": "airfed"},
            {
                "app": pages_app(),
                "url_prefix": PAGES_URL_PREFIX,
                "name": "airfed-pages",
            },
        ]


class _Listeners:
    """``AirfedPlugin.listeners``: the ledger's listener when ``[airfed] ledger``
    is on (it writes every task run to the ledger), none otherwise."""

    def __get__(self, instance: object, owner: type | None = None) -> list[Any]:
        from airfed.plugins import listener

        _preload_task_code()
        return [listener] if listener.ledger_enabled() else []


def _preload_task_code() -> None:
    """Import what a task process needs to run a node task.

    Every Airflow component reads the plugins' listeners as it starts; the
    scheduler does so before its LocalExecutor forks the workers, and each
    task process is forked from a worker. Importing the task code here means
    a task process starts with it loaded instead of importing it for every
    task (about 50 ms of CPU each). A task process imports it anyway.
    """
    import airfed.dags._specs
    import airfed.operators
    import airfed.operators._plan_end
    import airfed.sdk._membership  # noqa: F401 - imported for its side effect


class AirfedPlugin(AirflowPlugin):
    name = "airfed"
    fastapi_apps = _FastApiApps()
    listeners = _Listeners()
    # The pages (airfed.plugins.pages), shown inside the UI in an iframe.
    external_views = [
        {
            "name": "Federated learning",
            "href": f"{PAGES_URL_PREFIX}/",
            "destination": "nav",
            "url_route": "airfed",
            "nav_top_level": True,
        },
        {
            "name": "Compute plan",
            "href": f"{PAGES_URL_PREFIX}/dags/{{DAG_ID}}",
            "destination": "dag",
            "url_route": "airfed-plan",
        },
    ]
