"""airfed's settings in Airflow's configuration (section ``[airfed]``).

``plans_folder`` holds one plan spec per submitted plan (``<key>.json``);
``network`` is the folder written by ``airfed network init``, whose
``orchestrator/`` profile holds the TLS identity with which operators call
nodes; ``node_poll_interval`` is the pause before asking a node for a task's
status again after an error or an answer cut short (status requests
long-poll: the node answers as soon as the task ends); ``wait_on_worker`` is
how long a task waits for its node from the worker that posted it before
deferring to the triggerer; ``finish_in_triggerer`` ends a successful
deferred task in the triggerer instead of resuming it on a worker (faster,
but Airflow then runs no listener for it); ``ledger_relay`` is the socket of
the orchestrator's ledger relay, through which task processes write their
ledger entries (empty: each writes to the log itself). Each is also read from
``AIRFLOW__AIRFED__<NAME>``.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import conf

from airfed.sdk.network import ORCHESTRATOR_ID

__all__ = [
    "finish_in_triggerer",
    "ledger_relay",
    "network_folder",
    "node_poll_interval",
    "orchestrator_profile",
    "plans_folder",
    "wait_on_worker_seconds",
]


def plans_folder() -> Path:
    return Path(conf.get("airfed", "plans_folder", fallback="plans")).expanduser()


def network_folder() -> Path:
    return Path(conf.get("airfed", "network", fallback="network")).expanduser()


def orchestrator_profile() -> Path:
    """The orchestrator's profile folder: ``<network>/orchestrator``."""
    profile: Path = network_folder() / ORCHESTRATOR_ID
    return profile


def ledger_relay() -> Path | None:
    value = str(conf.get("airfed", "ledger_relay", fallback="") or "").strip()
    return Path(value).expanduser() if value else None


def finish_in_triggerer() -> bool:
    return conf.getboolean("airfed", "finish_in_triggerer", fallback=False)


def wait_on_worker_seconds() -> float:
    return conf.getfloat("airfed", "wait_on_worker", fallback=5.0)


def node_poll_interval() -> float:
    return conf.getfloat("airfed", "node_poll_interval", fallback=0.5)
