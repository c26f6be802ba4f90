"""Build compute plans, check them, and compile them into plan specs.

A compute plan is a graph of tasks. Each task runs one function on one
organization's node (its *worker*) in one round; its inputs name registered
assets (:func:`asset_input`) or outputs of parent tasks (:func:`parent_input`).
:class:`ComputePlanBuilder` collects the tasks; :meth:`ComputePlanBuilder.compile`
checks the whole graph and returns a :class:`~airfed.sdk.spec.PlanSpec`::

    builder = ComputePlanBuilder("fedavg", strategy="fedavg", creator="a")
    train = builder.add_task(
        function_key, "b", category="train", round=1,
        inputs=[asset_input("dataset", dataset_key),
                asset_input("datasamples", sample_key)],
    )
    builder.add_task(
        aggregate_key, "a", category="aggregate", round=1,
        inputs=[parent_input("models", train, "model")],
    )
    spec = builder.compile(catalog)

Checks, each failing with a :class:`~airfed.sdk.errors.PlanError` that names
the task: no cycles, no unknown parents, every parent output is declared and
permitted to the child's worker. With a :class:`~airfed.sdk.catalog.Catalog`
also: the function exists and may run on the worker, every asset input exists
with the kind the function expects, data stays on its node (a task's dataset
and data samples are held by its worker, and the dataset permits the
function's owner to process it), asset models are held by the worker, and the
function's declared inputs are satisfied. These are the checks each node
makes again before it runs a task.

A task's *rank* is its dependency level: 0 without parents, otherwise one more
than its highest-ranked parent.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import pydantic

from airfed.sdk.catalog import Asset, Catalog, FunctionInput
from airfed.sdk.errors import PlanError, SpecError
from airfed.sdk.spec import (
    InputRef,
    OutputSpec,
    Permission,
    Permissions,
    PlanSpec,
    TaskCategory,
    TaskSpec,
)

__all__ = [
    "ComputePlanBuilder",
    "asset_input",
    "builder_from_description",
    "parent_input",
]

_CATEGORIES: tuple[str, ...] = get_args(TaskCategory)
# Which asset kind a function's declared input kind takes.
_INPUT_ASSET_KIND = {
    "dataset": "dataset",
    "datasamples": "datasample",
    "model": "model",
}


def asset_input(identifier: str, key: str) -> InputRef:
    """An input that names a registered asset: dataset, data sample or model."""
    return InputRef(identifier=identifier, asset_key=key)


def parent_input(identifier: str, task_key: str, output: str) -> InputRef:
    """An input that takes the output ``output`` of the parent task ``task_key``."""
    return InputRef(
        identifier=identifier, parent_task_key=task_key, parent_output=output
    )


@dataclass
class _Task:
    key: str
    function_key: str
    worker: str
    category: TaskCategory
    round: int
    inputs: tuple[InputRef, ...]
    outputs: dict[str, OutputSpec] | None
    metadata: dict[str, str]
    children: list[str] = field(default_factory=list)

    def label(self) -> str:
        return f"task {self.key} ({self.category} on {self.worker}, round {self.round})"


class ComputePlanBuilder:
    """Collects the tasks of a compute plan and compiles them into a spec.

    ``creator`` is the organization that submits the plan. ``rounds`` defaults
    to the number of distinct round indices among the tasks.
    """

    def __init__(
        self,
        name: str,
        strategy: str,
        creator: str,
        key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        rounds: int | None = None,
    ) -> None:
        if not name.strip():
            raise PlanError("a compute plan needs a name")
        if not creator.strip():
            raise PlanError("a compute plan needs a creator organization")
        self.name = name
        self.strategy = strategy
        self.creator = creator
        self.key = key or str(uuid.uuid4())
        self.metadata = dict(metadata or {})
        self.rounds = rounds
        self._tasks: dict[str, _Task] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def task_keys(self) -> tuple[str, ...]:
        """Keys of the tasks added so far, in the order they were added."""
        return tuple(self._tasks)

    @property
    def organizations(self) -> tuple[str, ...]:
        """Workers of the tasks added so far, sorted."""
        return tuple(sorted({task.worker for task in self._tasks.values()}))

    def add_task(
        self,
        function_key: str,
        worker: str,
        *,
        category: TaskCategory,
        round: int,
        inputs: Sequence[InputRef],
        outputs: Mapping[str, OutputSpec] | None = None,
        key: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Add a task and return its key.

        ``outputs`` maps each output identifier to its permissions and transient
        flag. Without it, the task's outputs are the function's declared outputs
        (when compiled with a catalog) and the outputs its children use, each
        processable by every worker of the plan and downloadable by the creator.
        """
        task_key = key or str(uuid.uuid4())
        task = _Task(
            key=task_key,
            function_key=function_key,
            worker=worker,
            category=category,
            round=round,
            inputs=tuple(inputs),
            outputs=dict(outputs) if outputs is not None else None,
            metadata=dict(metadata or {}),
        )
        _check_task_fields(task)
        if task_key in self._tasks:
            raise PlanError(f"{task.label()}: another task already has this key")
        self._tasks[task_key] = task
        return task_key

    def compile(self, catalog: Catalog | None = None) -> PlanSpec:
        """Check the plan and return its spec; see the module's docstring."""
        if not self._tasks:
            raise PlanError(f"compute plan {self.name!r} has no tasks")
        tasks = self._tasks
        _link_children(tasks)
        ranks = _ranks(tasks)
        organizations = self.organizations
        outputs = _resolve_outputs(tasks, organizations, self.creator, catalog)
        for task in tasks.values():
            _check_parents(task, tasks, outputs)
            if catalog is not None:
                _check_against_catalog(task, tasks, catalog)
        return self._spec(ranks, outputs, organizations)

    def _spec(
        self,
        ranks: Mapping[str, int],
        outputs: Mapping[str, dict[str, OutputSpec]],
        organizations: tuple[str, ...],
    ) -> PlanSpec:
        order = sorted(self._tasks.values(), key=lambda t: ranks[t.key])
        task_specs = tuple(
            _task_spec(
                task,
                self.key,
                ranks[task.key],
                _with_consumers(task, self._tasks, outputs[task.key]),
            )
            for task in order
        )
        rounds = self.rounds
        if rounds is None:
            rounds = len({task.round for task in self._tasks.values()})
        try:
            return PlanSpec(
                key=self.key,
                name=self.name,
                strategy=self.strategy,
                rounds=rounds,
                organizations=organizations,
                creator=self.creator,
                tasks=task_specs,
                metadata=self.metadata,
            )
        except pydantic.ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise PlanError(
                f"compute plan {self.name!r}: {where}: {problem['msg']}"
            ) from exc

    @classmethod
    def from_spec(cls, spec: PlanSpec) -> ComputePlanBuilder:
        """A builder holding a compiled spec's tasks, to check it again."""
        builder = cls(
            spec.name,
            spec.strategy,
            spec.creator,
            key=spec.key,
            metadata=spec.metadata,
            rounds=spec.rounds,
        )
        for task in spec.tasks:
            builder.add_task(
                task.function_key,
                task.worker,
                category=task.category,
                round=task.round,
                inputs=task.inputs,
                outputs=task.outputs,
                key=task.key,
                metadata=task.metadata,
            )
        return builder


def _with_consumers(
    task: _Task, tasks: Mapping[str, _Task], outputs: dict[str, OutputSpec]
) -> dict[str, OutputSpec]:
    """Name, in each transient output, the child tasks that take it as input.

    The producing node deletes a transient model once each of them has
    finished, so it must know them all when it stores the model.
    """
    named: dict[str, OutputSpec] = {}
    for identifier, output in outputs.items():
        consumers: tuple[str, ...] = ()
        if output.transient:
            consumers = tuple(
                child
                for child in task.children
                if any(
                    ref.parent_task_key == task.key and ref.parent_output == identifier
                    for ref in tasks[child].inputs
                )
            )
        named[identifier] = output.model_copy(update={"consumers": consumers})
    return named


def _task_spec(
    task: _Task, plan_key: str, rank: int, outputs: dict[str, OutputSpec]
) -> TaskSpec:
    try:
        return TaskSpec(
            key=task.key,
            plan_key=plan_key,
            function_key=task.function_key,
            worker=task.worker,
            category=task.category,
            rank=rank,
            round=task.round,
            inputs=task.inputs,
            outputs=outputs,
            metadata=task.metadata,
        )
    except pydantic.ValidationError as exc:
        raise PlanError(f"{task.label()}: {_first_problem(exc)}") from exc


# --- structure --------------------------------------------------------------


def _check_task_fields(task: _Task) -> None:
    if not task.function_key:
        raise PlanError(f"{task.label()}: names no function")
    if not task.worker:
        raise PlanError(f"task {task.key}: names no worker organization")
    if task.category not in _CATEGORIES:
        raise PlanError(
            f"{task.label()}: category must be one of {', '.join(_CATEGORIES)}"
        )
    if isinstance(task.round, bool) or not isinstance(task.round, int):
        raise PlanError(f"{task.label()}: round must be an integer")
    if task.round < 0:
        raise PlanError(f"{task.label()}: round must be 0 or more")
    for ref in task.inputs:
        if not isinstance(ref, InputRef):
            raise PlanError(
                f"{task.label()}: inputs must be made with asset_input() or "
                "parent_input()"
            )


def _link_children(tasks: Mapping[str, _Task]) -> None:
    for task in tasks.values():
        task.children.clear()
    for task in tasks.values():
        for parent_key in _parent_keys(task):
            parent = tasks.get(parent_key)
            if parent is None:
                raise PlanError(
                    f"{task.label()}: depends on task {parent_key}, which is not "
                    "in the plan"
                )
            parent.children.append(task.key)


def _parent_keys(task: _Task) -> list[str]:
    seen: dict[str, None] = {}
    for ref in task.inputs:
        if ref.parent_task_key is not None:
            seen[ref.parent_task_key] = None
    return list(seen)


def _ranks(tasks: Mapping[str, _Task]) -> dict[str, int]:
    """Dependency levels by Kahn's algorithm; a task left over is on a cycle."""
    waiting = {key: len(_parent_keys(task)) for key, task in tasks.items()}
    ranks = {key: 0 for key, count in waiting.items() if count == 0}
    ready = list(ranks)
    while ready:
        key = ready.pop()
        for child in tasks[key].children:
            ranks[child] = max(ranks.get(child, 0), ranks[key] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(ranks) < len(tasks) or any(waiting.values()):
        stuck = [key for key, count in waiting.items() if count > 0]
        cycle = _find_cycle(tasks, set(stuck))
        path = " -> ".join(cycle)
        raise PlanError(f"{tasks[cycle[0]].label()}: is on a cycle ({path})")
    return ranks


def _find_cycle(tasks: Mapping[str, _Task], stuck: set[str]) -> list[str]:
    """Walk parents among the stuck tasks until one repeats: that is a cycle."""
    start = min(stuck)
    path: list[str] = []
    position: dict[str, int] = {}
    key = start
    while key not in position:
        position[key] = len(path)
        path.append(key)
        key = next(p for p in _parent_keys(tasks[key]) if p in stuck)
    cycle = path[position[key] :]
    cycle.reverse()  # parent before child
    first = cycle.index(min(cycle))
    cycle = cycle[first:] + cycle[:first]
    return [*cycle, cycle[0]]


# --- outputs and permissions --------------------------------------------------


def _resolve_outputs(
    tasks: Mapping[str, _Task],
    organizations: tuple[str, ...],
    creator: str,
    catalog: Catalog | None,
) -> dict[str, dict[str, OutputSpec]]:
    """Every task's outputs: as given, or inferred with default permissions."""
    used: dict[str, set[str]] = defaultdict(set)
    for task in tasks.values():
        for ref in task.inputs:
            if ref.parent_task_key is not None and ref.parent_output is not None:
                used[ref.parent_task_key].add(ref.parent_output)
    default = OutputSpec(
        permissions=Permissions(
            process=Permission(authorized_ids=organizations),
            download=Permission(authorized_ids=(creator,)),
        )
    )
    resolved: dict[str, dict[str, OutputSpec]] = {}
    for task in tasks.values():
        if task.outputs is not None:
            resolved[task.key] = task.outputs
            continue
        identifiers = set(used[task.key])
        function = catalog.get(task.function_key, "function") if catalog else None
        if function is not None:
            identifiers.update(o.identifier for o in function.function_outputs)
        resolved[task.key] = {name: default for name in sorted(identifiers)}
    return resolved


def _check_parents(
    task: _Task,
    tasks: Mapping[str, _Task],
    outputs: Mapping[str, Mapping[str, OutputSpec]],
) -> None:
    for ref in task.inputs:
        if ref.parent_task_key is None or ref.parent_output is None:
            continue
        parent = tasks[ref.parent_task_key]
        output = outputs[parent.key].get(ref.parent_output)
        if output is None:
            raise PlanError(
                f"{task.label()}: input {ref.identifier!r} takes output "
                f"{ref.parent_output!r} of task {parent.key}, which has no such output"
            )
        if parent.worker != task.worker and not output.permissions.process.allows(
            task.worker
        ):
            raise PlanError(
                f"{task.label()}: output {ref.parent_output!r} of task {parent.key} "
                f"is not permitted to {task.worker}; add {task.worker} to its "
                "process permission"
            )


# --- checks against the catalog ----------------------------------------------


def _check_against_catalog(
    task: _Task, tasks: Mapping[str, _Task], catalog: Catalog
) -> None:
    function = catalog.get(task.function_key, "function")
    if function is None:
        raise PlanError(
            f"{task.label()}: function {task.function_key} is not registered on "
            "any node"
        )
    if task.worker not in function.nodes:
        raise PlanError(
            f"{task.label()}: function {task.function_key} ({function.name}) is "
            f"not registered on the node of {task.worker}; register it there too"
        )
    if not function.may_process(task.worker):
        raise PlanError(
            f"{task.label()}: function {task.function_key} ({function.name}) is "
            f"not permitted to {task.worker}"
        )
    declared = {item.identifier: item for item in function.function_inputs}
    for ref in task.inputs:
        item = declared.get(ref.identifier)
        if item is None:
            names = ", ".join(sorted(declared)) or "none"
            raise PlanError(
                f"{task.label()}: function {function.name or function.key} has no "
                f"input {ref.identifier!r} (it declares: {names})"
            )
        if ref.asset_key is not None:
            _check_asset_input(task, ref, item, catalog, function.owner)
        else:
            _check_parent_input(task, ref, item, tasks, catalog)
    _check_declared_inputs(task, declared.values())
    _check_samples_match_dataset(task, catalog)


def _check_asset_input(
    task: _Task,
    ref: InputRef,
    item: FunctionInput,
    catalog: Catalog,
    function_owner: str,
) -> None:
    assert ref.asset_key is not None
    wanted = _INPUT_ASSET_KIND[item.kind]
    asset = catalog.get(ref.asset_key)
    if asset is None:
        raise PlanError(
            f"{task.label()}: input {ref.identifier!r} names asset {ref.asset_key}, "
            "which is not registered on any node"
        )
    if asset.kind != wanted:
        raise PlanError(
            f"{task.label()}: input {ref.identifier!r} needs a {wanted}, but "
            f"{ref.asset_key} is a {asset.kind}"
        )
    if asset.kind == "model":
        _check_local_model(task, asset)
    else:
        _check_local_data(task, ref, asset, function_owner, catalog)


def _check_local_model(task: _Task, asset: Asset) -> None:
    if asset.owner != task.worker:
        raise PlanError(
            f"{task.label()}: model {asset.key} is held by {asset.owner}, and a "
            "node reads only its own models as assets; take it from the task "
            "that produced it (parent_input) or run the task on "
            f"{asset.owner}"
        )
    if not asset.may_process(task.worker):
        raise PlanError(
            f"{task.label()}: model {asset.key} is not permitted to {task.worker}"
        )


def _check_local_data(
    task: _Task, ref: InputRef, asset: Asset, function_owner: str, catalog: Catalog
) -> None:
    if asset.owner != task.worker:
        raise PlanError(
            f"{task.label()}: input {ref.identifier!r} names {asset.kind} "
            f"{asset.key} held by {asset.owner}; data never leaves its node, so "
            f"the task must run on {asset.owner}"
        )
    dataset = asset
    if asset.kind == "datasample" and asset.dataset_key is not None:
        dataset = catalog.get(asset.dataset_key, "dataset") or asset
    if dataset.kind == "dataset" and not dataset.may_process(function_owner):
        raise PlanError(
            f"{task.label()}: dataset {dataset.key} ({dataset.name}) does not "
            f"permit functions of {function_owner} to process it"
        )


def _check_parent_input(
    task: _Task,
    ref: InputRef,
    item: FunctionInput,
    tasks: Mapping[str, _Task],
    catalog: Catalog,
) -> None:
    if item.kind != "model":
        raise PlanError(
            f"{task.label()}: input {ref.identifier!r} needs a {item.kind} asset, "
            "not the output of a parent task"
        )
    assert ref.parent_task_key is not None
    parent = tasks[ref.parent_task_key]
    function = catalog.get(parent.function_key, "function")
    if function is None:
        return  # reported when the parent itself is checked
    kinds = {o.identifier: o.kind for o in function.function_outputs}
    if kinds.get(str(ref.parent_output)) != "model":
        raise PlanError(
            f"{task.label()}: input {ref.identifier!r} takes "
            f"{ref.parent_output!r} of task {parent.key}, but its function "
            "declares no model output of that name"
        )


def _check_declared_inputs(task: _Task, declared: Iterable[FunctionInput]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for ref in task.inputs:
        counts[ref.identifier] += 1
    for item in declared:
        given = counts[item.identifier]
        if given == 0 and not item.optional:
            raise PlanError(
                f"{task.label()}: the function's input {item.identifier!r} "
                f"({item.kind}) is not given"
            )
        if given > 1 and not item.multiple:
            raise PlanError(
                f"{task.label()}: the function's input {item.identifier!r} takes "
                f"one {item.kind}, but {given} are given"
            )


def _check_samples_match_dataset(task: _Task, catalog: Catalog) -> None:
    datasets = {
        ref.asset_key
        for ref in task.inputs
        if ref.asset_key is not None and catalog.get(ref.asset_key, "dataset")
    }
    if len(datasets) != 1:
        return
    (dataset_key,) = datasets
    for ref in task.inputs:
        sample = catalog.get(ref.asset_key, "datasample") if ref.asset_key else None
        if sample is not None and sample.dataset_key not in (None, dataset_key):
            raise PlanError(
                f"{task.label()}: data sample {sample.key} belongs to dataset "
                f"{sample.dataset_key}, not to {dataset_key}"
            )


# --- plan descriptions ---------------------------------------------------------


def builder_from_description(
    data: Mapping[str, Any], creator: str | None = None
) -> ComputePlanBuilder:
    """A builder from a plan description (the YAML or JSON a user writes).

    ::

        name: two-node training
        strategy: custom          # optional
        creator: a                # optional: the submitting organization
        rounds: 1                 # optional
        tasks:
          - id: train-b           # name other tasks use; the key is a UUID
            function: FUNCTION_KEY
            worker: b
            category: train
            round: 1
            inputs:
              - {identifier: dataset, asset: DATASET_KEY}
              - {identifier: datasamples, asset: SAMPLE_KEY}
          - id: test-b
            function: FUNCTION_KEY
            worker: b
            category: test
            round: 1
            inputs:
              - {identifier: model, parent: train-b, output: model}
            outputs:
              metric: {permissions: {download: {public: true}}}
    """
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PlanError("plan description: field name is missing")
    plan_creator = data.get("creator") or creator
    if not isinstance(plan_creator, str):
        raise PlanError("plan description: field creator is missing")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise PlanError("plan description: field tasks must be a non-empty list")
    builder = ComputePlanBuilder(
        name,
        str(data.get("strategy") or "custom"),
        plan_creator,
        key=data.get("key"),
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        rounds=data.get("rounds"),
    )
    keys = _description_keys(raw_tasks)
    for index, raw in enumerate(raw_tasks):
        _add_described_task(builder, index, raw, keys)
    return builder


def _description_keys(raw_tasks: list[Any]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for index, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict):
            raise PlanError(f"plan description: tasks[{index}] must be a mapping")
        name = str(raw.get("id", index))
        if name in keys:
            raise PlanError(f"plan description: task id {name!r} is used twice")
        keys[name] = str(raw.get("key") or uuid.uuid4())
    return keys


def _add_described_task(
    builder: ComputePlanBuilder, index: int, raw: dict[str, Any], keys: dict[str, str]
) -> None:
    name = str(raw.get("id", index))
    where = f"plan description: task {name!r}"
    for required in ("function", "worker", "category", "round"):
        if required not in raw:
            raise PlanError(f"{where}: field {required} is missing")
    try:
        inputs = [_described_input(ref, keys, where) for ref in raw.get("inputs", [])]
        outputs = raw.get("outputs")
        output_specs = (
            {str(k): OutputSpec.model_validate(v or {}) for k, v in outputs.items()}
            if isinstance(outputs, dict)
            else None
        )
    except (pydantic.ValidationError, SpecError) as exc:
        raise PlanError(f"{where}: {_first_problem(exc)}") from exc
    builder.add_task(
        str(raw["function"]),
        str(raw["worker"]),
        category=raw["category"],
        round=raw["round"],
        inputs=inputs,
        outputs=output_specs,
        key=keys[name],
        metadata={str(k): str(v) for k, v in (raw.get("metadata") or {}).items()},
    )


def _described_input(ref: Any, keys: Mapping[str, str], where: str) -> InputRef:
    if not isinstance(ref, dict) or "identifier" not in ref:
        raise PlanError(f"{where}: every input needs an identifier")
    identifier = str(ref["identifier"])
    if "asset" in ref:
        return asset_input(identifier, str(ref["asset"]))
    if "parent" in ref and "output" in ref:
        parent = str(ref["parent"])
        if parent not in keys:
            raise PlanError(
                f"{where}: input {identifier!r} names unknown task {parent!r}"
            )
        return parent_input(identifier, keys[parent], str(ref["output"]))
    raise PlanError(
        f"{where}: input {identifier!r} needs either asset, or parent with output"
    )


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "value"
        return f"{where}: {problem['msg']}"
    return str(exc)
