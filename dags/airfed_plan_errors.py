"""Plan specs that cannot be read, reported as this file's Airflow import error.

The DAG factory (``airfed_plans.py``) skips a spec it cannot read; this file
defines no DAG and raises one :class:`~airfed.sdk.errors.SpecError` naming
each such plan and the field at fault, so the error shows among the import
errors of Airflow's UI while every other plan keeps running.
"""

from __future__ import annotations

from airfed.dags._specs import read_specs
from airfed.sdk.errors import SpecError

_unreadable = read_specs().errors
if _unreadable:
    raise SpecError(
        "plan specs that cannot be read (no DAG is built for them): "
        + "; ".join(_unreadable)
    )
