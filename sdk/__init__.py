"""airfed's SDK: what a data scientist imports.

The surface is small and stable: the :class:`Client`, the
:class:`ComputePlanBuilder` with :func:`asset_input` and :func:`parent_input`,
the plan spec models, the task context functions receive, and the errors.
Everything else lives in modules that may change.

All but the errors are imported on first use: Airflow parses plan DAGs in
every task process, and a task's function runs in a fresh process on a node;
neither needs the whole SDK.
"""

import importlib
import typing

from airfed.sdk.errors import (
    AirfedError,
    ConfigError,
    NodeRequestError,
    OrchestratorError,
    PlanError,
    SpecError,
)

if typing.TYPE_CHECKING:
    from airfed.sdk.client import Client
    from airfed.sdk.function import TaskContext
    from airfed.sdk.plan import ComputePlanBuilder, asset_input, parent_input
    from airfed.sdk.spec import (
        InputRef,
        OutputSpec,
        Permission,
        Permissions,
        PlanSpec,
        TaskSpec,
        parse_plan_spec,
    )

# Where each lazily imported name lives: a task's function imports
# ``airfed.sdk.function`` in a fresh process on the node, and pydantic and the
# plan builder would add half a second to every task.
_LAZY = {
    "Client": "airfed.sdk.client",
    "ComputePlanBuilder": "airfed.sdk.plan",
    "InputRef": "airfed.sdk.spec",
    "OutputSpec": "airfed.sdk.spec",
    "Permission": "airfed.sdk.spec",
    "Permissions": "airfed.sdk.spec",
    "PlanSpec": "airfed.sdk.spec",
    "TaskContext": "airfed.sdk.function",
    "TaskSpec": "airfed.sdk.spec",
    "asset_input": "airfed.sdk.plan",
    "parent_input": "airfed.sdk.plan",
    "parse_plan_spec": "airfed.sdk.spec",
}

__all__ = [
    "AirfedError",
    "Client",
    "ComputePlanBuilder",
    "ConfigError",
    "InputRef",
    "NodeRequestError",
    "OrchestratorError",
    "OutputSpec",
    "Permission",
    "Permissions",
    "PlanError",
    "PlanSpec",
    "SpecError",
    "TaskContext",
    "TaskSpec",
    "asset_input",
    "parent_input",
    "parse_plan_spec",
]


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
