"""Reading the plans folder: every spec, readable or not.

Shared by the DAG factory (``airfed_plans.py``), which builds a DAG for each
readable spec, and ``airfed_plan_errors.py``, which reports the others as its
own import error. The report lives in a file without DAGs because Airflow
marks every DAG of a file that has an import error as stale: an error in the
factory file would stop every plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airfed.operators._settings import plans_folder
from airfed.sdk._membership import TaskTree
from airfed.sdk.errors import AirfedError, SpecError
from airfed.sdk.orchestrator import DAG_ID_PREFIX, dag_id_for
from airfed.sdk.spec import PlanSpec, parse_plan_spec

__all__ = ["StoredSpec", "StoredSpecs", "read_specs"]

# Where the task trees of stored specs are kept, inside the plans folder.
_TREES = ".trees"


@dataclass(frozen=True)
class StoredSpec:
    """A readable spec, and the SHA-256 of the file it was read from."""

    spec: PlanSpec
    path: Path
    digest: str

    def task_tree(self) -> TaskTree:
        """The plan's task tree, from the plans folder's copy when it has one.

        Canonicalizing every task is most of what building a plan's DAG costs,
        and every task process of the plan builds it: the first parse writes
        the leaf hashes and spec hash next to the spec, keyed by the file's
        digest, and later parses read them. A copy that does not match is
        ignored; a node checks every proof against the registered root anyway.
        """
        cached = self.path.parent / _TREES / f"{self.spec.key}.json"
        tree = _read_tree(cached, self.digest, len(self.spec.tasks))
        if tree is None:
            tree = TaskTree(self.spec)
            _write_tree(cached, self.digest, tree)
        return tree


@dataclass(frozen=True)
class StoredSpecs:
    """The readable specs, and one message per spec that cannot be read."""

    stored: tuple[StoredSpec, ...]
    errors: tuple[str, ...]

    @property
    def specs(self) -> tuple[PlanSpec, ...]:
        return tuple(item.spec for item in self.stored)


def _read_tree(path: Path, digest: str, count: int) -> TaskTree | None:
    try:
        data = json.loads(path.read_bytes())
        if data["digest"] != digest or len(data["leaf_hashes"]) != count:
            return None
        hashes = [bytes.fromhex(value) for value in data["leaf_hashes"]]
        return TaskTree.from_hashes(hashes, str(data["spec_hash"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_tree(path: Path, digest: str, tree: TaskTree) -> None:
    """Write the tree's copy atomically; a read-only plans folder keeps none."""
    data = {
        "digest": digest,
        "spec_hash": tree.spec_hash,
        "leaf_hashes": [value.hex() for value in tree.leaf_hashes],
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        temporary = Path(name)
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(data, out)
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)


def _spec_files(folder: Path, dag_id: str | None) -> list[Path]:
    if dag_id is not None and dag_id.startswith(DAG_ID_PREFIX):
        path = folder / f"{dag_id.removeprefix(DAG_ID_PREFIX)}.json"
        return [path] if path.is_file() else []
    return sorted(folder.glob("*.json"))


def _read(path: Path) -> StoredSpec:
    data = path.read_bytes()
    spec = parse_plan_spec(data)
    if spec.key != path.stem:
        raise SpecError(f"field key: {spec.key!r} differs from the file name")
    dag_id_for(spec.key)  # a key that cannot name a DAG is refused here
    return StoredSpec(spec, path, hashlib.sha256(data).hexdigest())


def read_specs(dag_id: str | None = None) -> StoredSpecs:
    """Read the plans folder; only the spec of ``dag_id`` when one is named."""
    stored: list[StoredSpec] = []
    errors: list[str] = []
    for path in _spec_files(plans_folder(), dag_id):
        try:
            stored.append(_read(path))
        except (OSError, AirfedError) as exc:
            errors.append(f"plan {path.stem}: {exc}")
    return StoredSpecs(tuple(stored), tuple(errors))
