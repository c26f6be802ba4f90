"""Airflow's REST API v2 as the plugin calls it: with the caller's token.

The plugin's routes run inside the api-server and call its REST API on
``[api] base_url`` with the token the caller presented, so that Airflow's own
permissions apply to every step.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import httpx
from fastapi import HTTPException, Request, status

__all__ = ["BUSY_RETRIES", "AirflowRest", "detail"]

logger = logging.getLogger(__name__)

# Airflow on SQLite answers 500 when another component holds the database's
# write lock. Every call the plugin makes is idempotent (reads, unpausing a
# DAG, a run under the plan's own id, failing a run), so a server error is
# tried again after these pauses.
BUSY_RETRIES = (0.2, 0.5, 1.0, 2.0)


class AirflowRest:
    """Airflow's REST API as the caller: every request carries its token."""

    def __init__(self, request: Request) -> None:
        self._headers = {"Authorization": f"Bearer {_caller_token(request)}"}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, tried again while Airflow answers a server error."""
        response = self._send(method, path, **kwargs)
        for pause in BUSY_RETRIES:
            if response.status_code < 500:
                break
            logger.warning(
                "Airflow answered a server error, trying again method=%s path=%s "
                "status=%d",
                method,
                path,
                response.status_code,
            )
            time.sleep(pause)
            response = self._send(method, path, **kwargs)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _rest_client().request(method, path, headers=self._headers, **kwargs)
        except httpx.HTTPError as exc:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, f"Airflow's API did not answer: {exc}"
            ) from exc

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        if response.status_code >= 400:
            raise HTTPException(
                response.status_code,
                f"Airflow refused {method} {path}: {detail(response)}",
            )
        return response.json()


@functools.cache
def _rest_client() -> httpx.Client:
    """One client for the process: creating one loads the system's CA bundle
    (about 40 ms of CPU), too much for every status request."""
    from airflow.configuration import conf

    return httpx.Client(
        base_url=conf.get("api", "base_url").rstrip("/") + "/api/v2", timeout=60.0
    )


def _caller_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    return request.cookies.get("_token", "")


def detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
