"""Reading the plans folder: every spec, readable or not.

Shared by the DAG factory (``airfed_plans.py``), which builds a DAG for each
readable spec, and ``airfed_plan_errors.py``, which reports the others as its
own import error. The report lives in a file without DAGs because Airflow
marks every DAG of a file that has an import error as stale: an error in the
factory file would stop every plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airfed.operators._settings import plans_folder
from airfed.sdk.errors import AirfedError, SpecError
from airfed.sdk.orchestrator import DAG_ID_PREFIX, dag_id_for
from airfed.sdk.spec import PlanSpec, parse_plan_spec

__all__ = ["StoredSpecs", "read_specs"]


@dataclass(frozen=True)
class StoredSpecs:
    """The readable specs, and one message per spec that cannot be read."""

    specs: tuple[PlanSpec, ...]
    errors: tuple[str, ...]


def _spec_files(folder: Path, dag_id: str | None) -> list[Path]:
    if dag_id is not None and dag_id.startswith(DAG_ID_PREFIX):
        path = folder / f"{dag_id.removeprefix(DAG_ID_PREFIX)}.json"
        return [path] if path.is_file() else []
    return sorted(folder.glob("*.json"))


def _read(path: Path) -> PlanSpec:
    spec = parse_plan_spec(path.read_bytes())
    if spec.key != path.stem:
        raise SpecError(f"field key: {spec.key!r} differs from the file name")
    dag_id_for(spec.key)  # a key that cannot name a DAG is refused here
    return spec


def read_specs(dag_id: str | None = None) -> StoredSpecs:
    """Read the plans folder; only the spec of ``dag_id`` when one is named."""
    specs: list[PlanSpec] = []
    errors: list[str] = []
    for path in _spec_files(plans_folder(), dag_id):
        try:
            specs.append(_read(path))
        except (OSError, AirfedError) as exc:
            errors.append(f"plan {path.stem}: {exc}")
    return StoredSpecs(tuple(specs), tuple(errors))
