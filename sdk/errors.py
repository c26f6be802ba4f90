"""Errors raised by the SDK and the CLI.

::

    AirfedError                 base of every error airfed's SDK raises
     +-- ConfigError            a network, node or profile file is missing or wrong
     +-- PlanError              a compute plan is invalid (names the task)
     +-- NodeRequestError       a node answered with a problem (status, detail)
     +-- OrchestratorError      Airflow could not be reached or refused a call
     +-- SpecError              a plan spec cannot be read (names the field)

The CLI prints ``str(error)`` on one line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "AirfedError",
    "ConfigError",
    "NodeRequestError",
    "OrchestratorError",
    "PlanError",
    "SpecError",
]


class AirfedError(Exception):
    """Base of every error the SDK raises; its message says what to do."""


class ConfigError(AirfedError):
    """A network, node or profile file is missing or wrong."""


class PlanError(AirfedError):
    """A compute plan is invalid; the message names the task."""


class SpecError(AirfedError):
    """A plan spec cannot be read; the message names the field."""


class OrchestratorError(AirfedError):
    """Airflow could not be reached or refused a call."""


class NodeRequestError(AirfedError):
    """A node answered with a problem; carries its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
