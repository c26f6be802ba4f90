"""Airflow for tests: in-process settings and a real orchestrator.

``use_test_airflow_home()`` points this process's Airflow at a throw-away
``AIRFLOW_HOME`` and the repository's ``airflow.cfg``; call it before Airflow
is imported (the conftest files of the Airflow suites do).
``running_orchestrator(...)`` starts api-server, scheduler, dag-processor and
triggerer on a free loopback port, SQLite by default or PostgreSQL when given
a URL, and stops them by pid at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from airfed.sdk._airflow import RunningOrchestrator, start_orchestrator
from airfed.sdk.plan import ComputePlanBuilder, asset_input, parent_input
from airfed.sdk.spec import OutputSpec, Permission, Permissions, PlanSpec
from tests.support.ports import free_port

__all__ = [
    "REPO_ROOT",
    "fedavg_spec",
    "running_orchestrator",
    "use_test_airflow_home",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def use_test_airflow_home() -> Path:
    """Give this process an empty AIRFLOW_HOME (unless one is set already)."""
    if "AIRFLOW_HOME" not in os.environ:
        home = Path(tempfile.mkdtemp(prefix="airfed-airflow-home-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW_CONFIG", str(REPO_ROOT / "airflow.cfg"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    return Path(os.environ["AIRFLOW_HOME"])


@contextlib.contextmanager
def running_orchestrator(
    home: Path,
    network_root: Path,
    *,
    database_url: str | None = None,
) -> Iterator[RunningOrchestrator]:
    """A real orchestrator for one test; stopped by pid when the test ends."""
    with start_orchestrator(
        home,
        network_root,
        port=free_port(),
        database_url=database_url,
    ) as orchestrator:
        yield orchestrator


def fedavg_spec(
    organizations: tuple[str, ...] = ("a", "b", "c"),
    rounds: int = 2,
    *,
    train_function: str = "function-train",
    aggregate_function: str = "function-aggregate",
    name: str = "tiny fedavg",
) -> PlanSpec:
    """A federated-averaging plan over asset keys ``data-<org>``.

    Each round trains on every organization from the previous round's model
    and aggregates on the first organization.
    """
    shared = OutputSpec(permissions=Permissions(process=Permission(public=True)))
    builder = ComputePlanBuilder(name, "fedavg", organizations[0])
    previous: str | None = None
    for round_ in range(rounds):
        updates = []
        for org in organizations:
            inputs = [asset_input("data", f"data-{org}")]
            if previous is not None:
                inputs.append(parent_input("model", previous, "model"))
            updates.append(
                builder.add_task(
                    train_function,
                    org,
                    category="train",
                    round=round_,
                    inputs=inputs,
                    outputs={"model": shared},
                )
            )
        previous = builder.add_task(
            aggregate_function,
            organizations[0],
            category="aggregate",
            round=round_,
            inputs=[parent_input("models", key, "model") for key in updates],
            outputs={"model": shared},
        )
    return builder.compile()
