"""airfed's SDK: what a data scientist imports.

The surface is small and stable: the :class:`Client`, the
:class:`ComputePlanBuilder` with :func:`asset_input` and :func:`parent_input`,
the plan spec models, the task context functions receive, and the errors.
Everything else lives in modules that may change.

:class:`Client` is imported on first use: Airflow parses plan DAGs in every
task process, and those only need the spec models.
"""

import typing

from airfed.sdk.errors import (
    AirfedError,
    ConfigError,
    NodeRequestError,
    OrchestratorError,
    PlanError,
    SpecError,
)
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

if typing.TYPE_CHECKING:
    from airfed.sdk.client import Client

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
    if name == "Client":
        from airfed.sdk.client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
