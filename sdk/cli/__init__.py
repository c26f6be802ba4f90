"""The ``airfed`` command line."""

from __future__ import annotations

import importlib
import sys

from airfed.sdk.cli._apps import app
from airfed.sdk.cli._output import err_console
from airfed.sdk.errors import AirfedError

__all__ = ["app", "main"]

# Each module attaches its commands to the groups in ``_apps``.
_COMMAND_MODULES = ("_network",)


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"airfed.sdk.cli.{name}")


def main() -> None:
    """Run the CLI; an airfed error prints one line and exits with status 1."""
    _load_commands()
    try:
        app(standalone_mode=False)
    except AirfedError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
