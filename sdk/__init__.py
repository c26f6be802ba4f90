"""airfed's SDK: what a data scientist imports."""

from airfed.sdk.errors import (
    AirfedError,
    ConfigError,
    NodeRequestError,
    OrchestratorError,
    PlanError,
    SpecError,
)

__all__ = [
    "AirfedError",
    "ConfigError",
    "NodeRequestError",
    "OrchestratorError",
    "PlanError",
    "SpecError",
]
