"""Simulation: run a compute plan in this process, without Airflow or nodes.

:func:`simulate` takes a plan spec and the local files behind its asset keys
(:class:`SimulationAssets`: function folders with their metadata, dataset
openers, data sample folders, models), lays out one task workdir per task
exactly as a node does (contract B: ``task.json``, ``function/``,
``inputs/``, ``outputs/``) and runs each with the node's own runtime
(:func:`airfed.node_api.runtime.run_task_workdir`) in rank order. The same
plan with the same seeds gives the same performances as on Airflow: the
functions are the same code, reading the same inputs.

It checks what a node would check before it runs a task: every input exists,
and a parent's output is permitted to the worker. The first failing task
stops the simulation; the result names it and carries its error.

:func:`prepare_local_federation` writes a :class:`~airfed.sdk.datasets.
FederatedDataset` and an algorithm as such local files, for benchmarks,
tests and trying a strategy before registering anything.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airfed.sdk.algorithms import Algorithm, package_algorithm
from airfed.sdk.datasets import FederatedDataset, write_opener, write_organization_data
from airfed.sdk.errors import AirfedError
from airfed.sdk.performance import MODEL_LABEL_KEY
from airfed.sdk.spec import PlanSpec, TaskSpec
from airfed.sdk.strategies import (
    AlgorithmFunctions,
    Federation,
    OrganizationData,
)

__all__ = [
    "LocalFunction",
    "SimulatedPerformance",
    "SimulationAssets",
    "SimulationError",
    "SimulationResult",
    "load_simulation_assets",
    "prepare_local_federation",
    "simulate",
]

logger = logging.getLogger(__name__)

TaskRunner = Callable[[Path], Mapping[str, Any]]


class SimulationError(AirfedError):  # type: ignore[misc,unused-ignore]
    """A simulation cannot start: an asset is missing or a manifest is wrong."""


@dataclass(frozen=True)
class LocalFunction:
    """A function's code folder and its metadata (contract A)."""

    folder: Path
    metadata: Mapping[str, Any]


@dataclass
class SimulationAssets:
    """The local files behind the asset keys a plan names."""

    functions: dict[str, LocalFunction] = field(default_factory=dict)
    datasets: dict[str, Path] = field(default_factory=dict)
    samples: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)

    def write_manifest(self, path: Path) -> Path:
        """Write a manifest that :func:`load_simulation_assets` reads back; each
        function's metadata goes to ``<key>.json`` next to it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        functions = {}
        for key, function in self.functions.items():
            metadata = path.parent / f"{key}.json"
            metadata.write_text(json.dumps(dict(function.metadata), indent=1))
            functions[key] = {
                "folder": str(Path(function.folder).resolve()),
                "metadata": metadata.name,
            }
        document = {
            "functions": functions,
            "datasets": {k: str(Path(v).resolve()) for k, v in self.datasets.items()},
            "samples": {k: str(Path(v).resolve()) for k, v in self.samples.items()},
            "models": {k: str(Path(v).resolve()) for k, v in self.models.items()},
        }
        path.write_text(yaml.safe_dump(document, sort_keys=True))
        return path


@dataclass(frozen=True)
class SimulatedPerformance:
    """One performance: by round, node (worker), metric (identifier), model."""

    task_key: str
    round: int
    worker: str
    identifier: str
    value: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_key": self.task_key,
            "round": self.round,
            "worker": self.worker,
            "identifier": self.identifier,
            "value": self.value,
            "model": self.model,
        }


@dataclass
class SimulationResult:
    """How a simulated plan ended and what its test tasks recorded."""

    plan_key: str
    status: str
    performances: list[SimulatedPerformance] = field(default_factory=list)
    task_status: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    failed_task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_key": self.plan_key,
            "status": self.status,
            "error": self.error,
            "failed_task": self.failed_task,
            "performances": [p.to_dict() for p in self.performances],
        }

    def values(
        self, identifier: str, model: str = "federated"
    ) -> dict[int, dict[str, float]]:
        """``{round: {worker: value}}`` of one metric of one model."""
        table: dict[int, dict[str, float]] = defaultdict(dict)
        for p in self.performances:
            if p.identifier == identifier and p.model == model:
                table[p.round][p.worker] = p.value
        return dict(table)


# --- running -----------------------------------------------------------------


def simulate(
    spec: PlanSpec,
    assets: SimulationAssets,
    *,
    workdir: Path | None = None,
    runner: TaskRunner | None = None,
) -> SimulationResult:
    """Run every task of ``spec`` in rank order in this process.

    ``runner`` runs one prepared task workdir and returns its result; the
    default is the node's runtime in this process.
    """
    from airfed.node_api.runtime import run_task_workdir

    run = runner or run_task_workdir

    root = Path(workdir) if workdir is not None else _scratch_root()
    owned = workdir is None
    result = SimulationResult(plan_key=spec.key, status="done")
    outputs: dict[tuple[str, str], Path] = {}
    tasks = {task.key: task for task in spec.tasks}
    try:
        for task in sorted(spec.tasks, key=lambda t: t.rank):
            task_dir = root / "tasks" / task.key
            _prepare(task, tasks, assets, outputs, task_dir)
            outcome = run(task_dir)
            if outcome.get("status") != "done":
                result.status, result.failed_task = "failed", task.key
                result.error = f"{_label(task)} failed: {outcome.get('error')}"
                result.task_status[task.key] = "failed"
                logger.info("simulation failed plan=%s task=%s", spec.key, task.key)
                break
            _collect(task, outcome, task_dir, root, outputs, result)
            shutil.rmtree(task_dir)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _scratch_root() -> Path:
    """A fresh folder, in memory where the system has one (the runtime fsyncs
    every result, which costs a disk write per task on a real disk)."""
    shared_memory = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a private folder)
    where = shared_memory if shared_memory.is_dir() else None
    return Path(tempfile.mkdtemp(prefix="airfed-sim-", dir=where))


def _label(task: TaskSpec) -> str:
    return f"task {task.key} ({task.category} on {task.worker}, round {task.round})"


def _prepare(
    task: TaskSpec,
    tasks: Mapping[str, TaskSpec],
    assets: SimulationAssets,
    outputs: Mapping[tuple[str, str], Path],
    task_dir: Path,
) -> None:
    function = assets.functions.get(task.function_key)
    if function is None:
        raise SimulationError(
            f"{_label(task)}: function {task.function_key} is not in the assets"
        )
    if task_dir.exists():
        shutil.rmtree(task_dir)
    shutil.copytree(
        function.folder,
        task_dir / "function",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (task_dir / "outputs").mkdir()
    staged: dict[str, list[str]] = defaultdict(list)
    opener: str | None = None
    for ref in task.inputs:
        index = len(staged[ref.identifier])
        relative = f"inputs/{ref.identifier}/{index}"
        if ref.asset_key is not None and ref.asset_key in assets.datasets:
            relative = f"inputs/{ref.identifier}/opener.py"
            opener = relative
            source = assets.datasets[ref.asset_key]
        else:
            source = _source(
                task,
                ref.asset_key,
                ref.parent_task_key,
                ref.parent_output,
                tasks,
                assets,
                outputs,
            )
        target = task_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        staged[ref.identifier].append(relative)
    document = {
        "task": task.model_dump(mode="json"),
        "function": dict(function.metadata),
        "inputs": dict(staged),
        "opener": opener,
    }
    (task_dir / "task.json").write_text(json.dumps(document, indent=1, sort_keys=True))


def _source(
    task: TaskSpec,
    asset_key: str | None,
    parent_key: str | None,
    parent_output: str | None,
    tasks: Mapping[str, TaskSpec],
    assets: SimulationAssets,
    outputs: Mapping[tuple[str, str], Path],
) -> Path:
    if asset_key is not None:
        for table in (assets.samples, assets.models):
            if asset_key in table:
                return table[asset_key]
        raise SimulationError(f"{_label(task)}: asset {asset_key} is not in the assets")
    assert parent_key is not None and parent_output is not None
    parent = tasks[parent_key]
    spec = parent.outputs.get(parent_output)
    if parent.worker != task.worker and (
        spec is None or not spec.permissions.process.allows(task.worker)
    ):
        raise SimulationError(
            f"{_label(task)}: output {parent_output!r} of task {parent_key} is not "
            f"permitted to {task.worker}"
        )
    path = outputs.get((parent_key, parent_output))
    if path is None:
        raise SimulationError(
            f"{_label(task)}: task {parent_key} produced no output {parent_output!r}"
        )
    return path


def _collect(
    task: TaskSpec,
    outcome: Mapping[str, Any],
    task_dir: Path,
    root: Path,
    outputs: dict[tuple[str, str], Path],
    result: SimulationResult,
) -> None:
    for identifier, relative in (outcome.get("outputs") or {}).items():
        target = root / "models" / task.key / identifier
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(task_dir / relative, target)
        outputs[(task.key, identifier)] = target
    label = task.metadata.get(MODEL_LABEL_KEY, "")
    for identifier, value in sorted((outcome.get("performances") or {}).items()):
        result.performances.append(
            SimulatedPerformance(
                task.key, task.round, task.worker, identifier, float(value), label
            )
        )
    result.task_status[task.key] = "done"


# --- local assets ------------------------------------------------------------


def load_simulation_assets(path: Path) -> SimulationAssets:
    """Read a manifest (YAML or JSON) that maps asset keys to local files::

        functions:
          KEY: {folder: algo/, metadata: train.json}
        datasets: {KEY: data/opener.py}
        samples: {KEY: data/a/train}
        models: {KEY: init.model}

    Relative paths are relative to the manifest's folder.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimulationError(f"cannot read the assets manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SimulationError(f"{path}: the assets manifest must be a mapping")
    base = path.parent
    assets = SimulationAssets()
    for key, entry in (data.get("functions") or {}).items():
        if (
            not isinstance(entry, dict)
            or "folder" not in entry
            or "metadata" not in entry
        ):
            raise SimulationError(f"{path}: function {key} needs folder and metadata")
        metadata = entry["metadata"]
        if isinstance(metadata, str):
            metadata = json.loads((base / metadata).read_text())
        assets.functions[str(key)] = LocalFunction(base / entry["folder"], metadata)
    for name, table in (
        ("datasets", assets.datasets),
        ("samples", assets.samples),
        ("models", assets.models),
    ):
        for key, value in (data.get(name) or {}).items():
            target = base / str(value)
            if not target.exists():
                raise SimulationError(
                    f"{path}: {name} entry {key} names missing {target}"
                )
            table[str(key)] = target
    return assets


def prepare_local_federation(
    dataset: FederatedDataset,
    algorithm: type[Algorithm],
    folder: Path,
    *,
    creator: str | None = None,
    differential_privacy: bool = False,
    extra_files: Sequence[Path] = (),
) -> tuple[Federation, SimulationAssets]:
    """Write ``dataset`` and ``algorithm`` under ``folder`` as local assets.

    Returns the federation (with fresh keys) that a strategy builds a plan
    from, and the assets that :func:`simulate` runs it with. ``extra_files``
    go into the function folder (a module that defines your own strategy).
    """
    folder = Path(folder)
    package = package_algorithm(
        algorithm,
        folder / "function",
        differential_privacy=differential_privacy,
        extra_files=extra_files,
    )
    keys = {name: str(uuid.uuid4()) for name in ("train", "aggregate", "evaluate")}
    assets = SimulationAssets(
        functions={
            keys[n]: LocalFunction(package.folder, package.functions[n]) for n in keys
        }
    )
    organizations = []
    for split in dataset.splits:
        train, test = write_organization_data(
            split, folder / "data" / split.organization
        )
        opener = write_opener(folder / "data" / split.organization / "opener.py")
        data = OrganizationData(
            split.organization,
            str(uuid.uuid4()),
            (str(uuid.uuid4()),),
            (str(uuid.uuid4()),),
        )
        assets.datasets[data.dataset_key] = opener
        assets.samples[data.train_sample_keys[0]] = train
        assets.samples[data.test_sample_keys[0]] = test
        organizations.append(data)
    federation = Federation(
        tuple(organizations),
        AlgorithmFunctions(
            keys["train"], keys["aggregate"], keys["evaluate"], package.metrics
        ),
        creator=creator or dataset.organizations[0],
    )
    return federation, assets
