"""``airfed task run``: run a prepared task workdir, in a subprocess or a pod."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from airfed.sdk.cli._apps import task_app
from airfed.sdk.cli._output import print_json


@task_app.command("run")
def task_run(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="The task workdir holding task.json.")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result.")] = False,
) -> None:
    """Run the function of the task prepared in WORKDIR; exit 1 if it failed."""
    from airfed.node_api.runtime import run_task_workdir

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    result = run_task_workdir(workdir)
    if json_out:
        print_json(result)
    if result["status"] != "done":
        # main() runs Typer with standalone_mode=False, which drops Exit codes.
        sys.exit(1)
