"""What a function sees when it runs: :class:`TaskContext`.

A function is a callable ``def train(ctx: TaskContext) -> None`` in a code
archive. When a node runs a task, it prepares a *task workdir*::

    W/task.json     the task, the function's metadata, the staged inputs
    W/function/     the function's code
    W/inputs/...    input models (files) and data samples (folders)
    W/outputs/      where the function writes its outputs

and the function reads its inputs and writes its outputs through the context
built from ``W/task.json``: ``ctx.load_data()`` for the data samples (through
the dataset's opener), ``ctx.input_path("model")`` for an input model,
``ctx.output_path("model")`` for a model it produces and
``ctx.record_performance("accuracy", 0.93)`` for a metric.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import AirfedError

__all__ = [
    "RESULT_FILE",
    "TASK_FILE",
    "FunctionError",
    "FunctionInput",
    "FunctionOutput",
    "TaskContext",
    "TaskFile",
    "TaskInfo",
    "read_task_file",
]

TASK_FILE = "task.json"
RESULT_FILE = "result.json"
INPUT_KINDS = ("dataset", "datasamples", "model")
OUTPUT_KINDS = ("model", "performance")

_opener_counter = itertools.count()


class FunctionError(AirfedError):
    """A task workdir is invalid, or a function used its context wrongly."""


@dataclass(frozen=True)
class FunctionInput:
    """One input a function declares."""

    identifier: str
    kind: str
    multiple: bool = False
    optional: bool = False


@dataclass(frozen=True)
class FunctionOutput:
    """One output a function declares: a model file or a performance."""

    identifier: str
    kind: str


@dataclass(frozen=True)
class TaskInfo:
    """The task's identity, from the task spec in ``task.json``."""

    key: str
    plan_key: str
    worker: str
    category: str
    rank: int
    round: int
    metadata: dict[str, str]


@dataclass(frozen=True)
class TaskFile:
    """The content of ``W/task.json``."""

    task: TaskInfo
    entrypoint: str
    inputs: tuple[FunctionInput, ...]
    outputs: tuple[FunctionOutput, ...]
    staged: dict[str, tuple[str, ...]]
    opener: str | None

    def output(self, identifier: str) -> FunctionOutput:
        for output in self.outputs:
            if output.identifier == identifier:
                return output
        declared = ", ".join(o.identifier for o in self.outputs) or "none"
        raise FunctionError(
            f"output {identifier!r} is not declared by the function "
            f"(declared: {declared})"
        )


def read_task_file(workdir: Path) -> TaskFile:
    """Read and check ``workdir/task.json``; raise FunctionError naming the field."""
    path = Path(workdir) / TASK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FunctionError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise FunctionError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FunctionError(f"{path} must hold a JSON object")
    try:
        return _parse_task_file(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise FunctionError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"field {exc.args[0]} is missing"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _parse_task_file(data: dict[str, Any]) -> TaskFile:
    function = data["function"]
    entrypoint = str(function["entrypoint"])
    if entrypoint.count(":") != 1 or not all(entrypoint.split(":")):
        raise ValueError(f"function.entrypoint {entrypoint!r} is not 'module:callable'")
    inputs = tuple(
        FunctionInput(
            identifier=str(i["identifier"]),
            kind=_kind(i["kind"], INPUT_KINDS, "input"),
            multiple=bool(i.get("multiple", False)),
            optional=bool(i.get("optional", False)),
        )
        for i in function.get("inputs", [])
    )
    outputs = tuple(
        FunctionOutput(str(o["identifier"]), _kind(o["kind"], OUTPUT_KINDS, "output"))
        for o in function.get("outputs", [])
    )
    staged = {
        str(identifier): tuple(_relative(p) for p in paths)
        for identifier, paths in dict(data.get("inputs", {})).items()
    }
    opener = data.get("opener")
    return TaskFile(
        task=_task_info(data["task"]),
        entrypoint=entrypoint,
        inputs=inputs,
        outputs=outputs,
        staged=staged,
        opener=None if opener is None else _relative(opener),
    )


def _task_info(task: dict[str, Any]) -> TaskInfo:
    """Read the task spec's fields a function sees (the node validated the rest).

    Kept free of the plan spec models so that starting a task stays fast.
    """
    metadata = task.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError("field task.metadata must be an object")
    return TaskInfo(
        key=_text(task, "key"),
        plan_key=_text(task, "plan_key"),
        worker=_text(task, "worker"),
        category=str(task.get("category", "other")),
        rank=_count(task, "rank"),
        round=_count(task, "round"),
        metadata={str(k): str(v) for k, v in metadata.items()},
    )


def _text(task: dict[str, Any], field: str) -> str:
    value = task.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field task.{field} must be a non-empty string")
    return value


def _count(task: dict[str, Any], field: str) -> int:
    value = task.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"field task.{field} must be an integer >= 0")
    return value


def _kind(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} kind {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _relative(value: Any) -> str:
    """A staged path must stay inside the workdir."""
    path = Path(str(value))
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"path {value!r} must be relative to the task workdir")
    return path.as_posix()


class TaskContext:
    """A task as its function sees it: identity, inputs, outputs, metrics."""

    def __init__(self, workdir: Path, task_file: TaskFile) -> None:
        self._workdir = Path(workdir)
        self._file = task_file
        self._performances: dict[str, float] = {}

    @classmethod
    def from_workdir(cls, workdir: Path) -> TaskContext:
        """Build the context of the task prepared in ``workdir``."""
        return cls(Path(workdir), read_task_file(Path(workdir)))

    # -- who this task is
    @property
    def task_key(self) -> str:
        return self._file.task.key

    @property
    def plan_key(self) -> str:
        return self._file.task.plan_key

    @property
    def round(self) -> int:
        return self._file.task.round

    @property
    def rank(self) -> int:
        return self._file.task.rank

    @property
    def worker(self) -> str:
        return self._file.task.worker

    @property
    def category(self) -> str:
        return self._file.task.category

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._file.task.metadata)

    # -- inputs
    def input_paths(self, identifier: str) -> list[Path]:
        """Paths of an input, in the task's order; empty for an absent optional one."""
        self._declared_input(identifier)
        return [self._workdir / p for p in self._file.staged.get(identifier, ())]

    def input_path(self, identifier: str) -> Path:
        """Path of an input given exactly once (a model file, a data sample)."""
        paths = self.input_paths(identifier)
        if len(paths) != 1:
            raise FunctionError(
                f"input {identifier!r} has {len(paths)} paths in this task; "
                "use ctx.input_paths() for an input given several times or none"
            )
        return paths[0]

    def has_input(self, identifier: str) -> bool:
        """Whether an (optional) input was given to this task."""
        return bool(self._file.staged.get(identifier))

    def load_data(self) -> Any:
        """Call the dataset's opener ``load(paths)`` on the task's data samples."""
        if self._file.opener is None:
            raise FunctionError("this task has no dataset input, so no data to load")
        samples = [i.identifier for i in self._file.inputs if i.kind == "datasamples"]
        paths = self.input_paths(samples[0]) if samples else []
        load = getattr(self._import_opener(), "load", None)
        if not callable(load):
            raise FunctionError("the dataset's opener.py defines no load(paths)")
        return load(paths)

    def _declared_input(self, identifier: str) -> FunctionInput:
        for declared in self._file.inputs:
            if declared.identifier == identifier:
                return declared
        if identifier in self._file.staged:
            return FunctionInput(identifier, "model")
        names = ", ".join(i.identifier for i in self._file.inputs) or "none"
        raise FunctionError(f"input {identifier!r} is not declared (declared: {names})")

    def _import_opener(self) -> ModuleType:
        assert self._file.opener is not None
        path = self._workdir / self._file.opener
        name = (
            f"airfed_opener_{self.task_key.replace('-', '_')}_{next(_opener_counter)}"
        )
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise FunctionError(f"the dataset's opener {self._file.opener} is missing")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module

    # -- outputs
    def output_path(self, identifier: str) -> Path:
        """Where the function writes the file of a model output."""
        if self._file.output(identifier).kind != "model":
            raise FunctionError(
                f"output {identifier!r} is a performance; "
                "use ctx.record_performance() instead"
            )
        return self._workdir / "outputs" / identifier

    def record_performance(self, identifier: str, value: float) -> None:
        """Record the value of a performance output (a finite number)."""
        if self._file.output(identifier).kind != "performance":
            raise FunctionError(
                f"output {identifier!r} is a model; write it at ctx.output_path()"
            )
        number = float(value)
        if not math.isfinite(number):
            raise FunctionError(f"performance {identifier!r} must be finite: {value}")
        self._performances[identifier] = number

    @property
    def performances(self) -> dict[str, float]:
        """The performances recorded so far."""
        return dict(self._performances)

    @property
    def scratch_dir(self) -> Path:
        """A folder for temporary files, deleted with the task."""
        scratch = self._workdir / "scratch"
        scratch.mkdir(exist_ok=True)
        return scratch
