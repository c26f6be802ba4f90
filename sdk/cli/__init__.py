"""The ``airfed`` command line."""

from __future__ import annotations

import importlib
import sys

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from airfed.sdk.cli._apps import app
from airfed.sdk.cli._output import err_console
from airfed.sdk.errors import AirfedError

__all__ = ["app", "main"]

# Each module attaches its commands to the groups in ``_apps``.
_COMMAND_MODULES = (
    "_network",
    "_node",
    "_task_run",
    "_assets",
    "_plan",
    "_orchestrator",
    "_ledger",
    "_simulate",
    "_quickstart",
)


# The modules a command needs, so that a command imports only its own code:
# ``airfed task run`` starts every task of a pod and must start fast.
_MODULES_OF = {
    ("task", "run"): ("_task_run",),
    ("network",): ("_network",),
    ("node",): ("_node",),
    ("orchestrator",): ("_orchestrator",),
    ("ledger",): ("_ledger",),
    ("quickstart",): ("_quickstart",),
}


def _load_commands(argv: list[str] | None = None) -> None:
    """Import the command modules; only those ``argv``'s command needs if known."""
    args = [a for a in (argv or []) if not a.startswith("-")]
    modules = _MODULES_OF.get(tuple(args[:2])) or _MODULES_OF.get(tuple(args[:1]))
    for name in modules or _COMMAND_MODULES:
        importlib.import_module(f"airfed.sdk.cli.{name}")


def main() -> None:
    """Run the CLI; an airfed error prints one line and exits with status 1."""
    _load_commands(sys.argv[1:])
    try:
        status = app(standalone_mode=False)
    except AirfedError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:  # bad usage: missing argument, unknown option
        err_console.print(f"[red]error:[/red] {_usage_problem(exc)}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    if isinstance(status, int) and status:  # a command raised typer.Exit(code)
        sys.exit(status)


def _usage_problem(exc: ClickException) -> str:
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{message} (see '{ctx.command_path} --help')"
