"""The plan spec: what the SDK compiles a compute plan into.

A plan spec is versioned JSON. The DAG factory reads it to build one Airflow
DAG per plan; each task's part (:class:`TaskSpec`) is what the operator posts
to the worker's node (``POST /tasks``). ``schema/plan-spec.schema.json`` in the
repository is generated from these models (``python -m airfed.sdk.spec``) and a
test keeps the two in step.

Inputs name either a registered asset (``asset_key``: a dataset for its opener,
a data sample, a model) or an output of a parent task (``parent_task_key`` and
``parent_output``). The node resolves a parent output by asking the parent's
worker node for the task's outputs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from airfed.sdk.errors import SpecError

__all__ = [
    "SCHEMA_VERSION",
    "InputRef",
    "OutputSpec",
    "Permission",
    "Permissions",
    "PlanSpec",
    "TaskSpec",
    "parse_plan_spec",
    "spec_hash",
]

SCHEMA_VERSION = 1

TaskCategory = Literal["train", "aggregate", "test", "predict", "other"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Permission(_Model):
    """Who may use an asset: everyone, or the listed ids.

    An id is an organization (``a``) or a user of an organization (``a/alice``).
    """

    public: bool = False
    authorized_ids: tuple[str, ...] = ()

    def allows(self, organization: str, user: str | None = None) -> bool:
        if self.public or organization in self.authorized_ids:
            return True
        return user is not None and f"{organization}/{user}" in self.authorized_ids


class Permissions(_Model):
    process: Permission = Permission()
    download: Permission = Permission()


class InputRef(_Model):
    """One input of a task: an asset, or an output of a parent task."""

    identifier: str = Field(description="Name of the function's input.")
    asset_key: str | None = None
    parent_task_key: str | None = None
    parent_output: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputRef:
        by_asset = self.asset_key is not None
        by_parent = self.parent_task_key is not None and self.parent_output is not None
        if by_asset == by_parent:
            raise ValueError(
                f"input {self.identifier!r} must name either asset_key or "
                "parent_task_key with parent_output"
            )
        return self


class OutputSpec(_Model):
    permissions: Permissions = Permissions()
    transient: bool = Field(
        default=False,
        description="Delete the output once every child task that uses it is done.",
    )
    consumers: tuple[str, ...] = Field(
        default=(),
        description=(
            "Keys of the tasks that take this output as an input; compile fills "
            "it for a transient output, whose node deletes the model once each "
            "of them has finished."
        ),
    )

    @model_serializer(mode="wrap")
    def _without_empty_consumers(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        # A spec without consumers serializes as before they existed, so the
        # hash that the ledger recorded for it stays the same.
        data: dict[str, Any] = handler(self)
        if not data.get("consumers"):
            data.pop("consumers", None)
        return data


class TaskSpec(_Model):
    key: str
    plan_key: str
    function_key: str
    worker: str = Field(description="Organization whose node runs the task.")
    category: TaskCategory = "other"
    rank: int = Field(
        ge=0, description="Dependency level: 0 for tasks without parents."
    )
    round: int = Field(ge=0)
    inputs: tuple[InputRef, ...] = ()
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def parent_keys(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for ref in self.inputs:
            if ref.parent_task_key is not None:
                seen[ref.parent_task_key] = None
        return tuple(seen)


class PlanSpec(_Model):
    schema_version: Literal[1] = 1
    key: str
    name: str
    strategy: str
    rounds: int = Field(ge=0)
    organizations: tuple[str, ...]
    creator: str = Field(description="Organization that submitted the plan.")
    tasks: tuple[TaskSpec, ...]
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> PlanSpec:
        keys = [t.key for t in self.tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("task keys must be unique")
        known = set(keys)
        for task in self.tasks:
            if task.plan_key != self.key:
                raise ValueError(f"task {task.key} names plan {task.plan_key}")
            missing = [p for p in task.parent_keys if p not in known]
            if missing:
                raise ValueError(
                    f"task {task.key} depends on unknown task {missing[0]}"
                )
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1)


def _describe(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"field {location}: {first['msg']}"


def parse_plan_spec(data: str | bytes | dict[str, Any]) -> PlanSpec:
    """Read a plan spec; a spec that cannot be read raises :class:`SpecError`."""
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise SpecError(f"plan spec is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError("plan spec must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SpecError(
            f"field schema_version: {version!r} is not supported "
            f"(this airfed reads version {SCHEMA_VERSION})"
        )
    try:
        return PlanSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SpecError(_describe(exc)) from exc


def spec_hash(spec: PlanSpec) -> str:
    """SHA-256 of the spec's canonical JSON, hex; what the ledger records."""
    import rfc8785

    return hashlib.sha256(rfc8785.dumps(spec.model_dump(mode="json"))).hexdigest()


def json_schema() -> dict[str, Any]:
    schema = PlanSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://airfed.dev/schema/plan-spec-1.json"
    return schema


if __name__ == "__main__":  # regenerate schema/plan-spec.schema.json
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "schema/plan-spec.schema.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
