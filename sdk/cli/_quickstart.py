"""``airfed quickstart``: a federated plan on a real data set, on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from airfed.sdk.cli._apps import app
from airfed.sdk.cli._output import console, err_console, print_json, print_table
from airfed.sdk.performance import FEDERATED
from airfed.sdk.quickstart import (
    DEFAULT_WORKDIR,
    MAX_NODES,
    QuickstartError,
    QuickstartOptions,
    QuickstartResult,
    run_quickstart,
    stop_on_sigterm,
)
from airfed.sdk.strategies import STRATEGIES

__all__ = ["quickstart"]

_TABLE_METRIC = "accuracy"


@app.command("quickstart")
def quickstart(
    nodes: Annotated[
        int, typer.Option(help=f"Number of organizations (1 to {MAX_NODES}).")
    ] = 3,
    rounds: Annotated[int, typer.Option(help="Rounds of federated training.")] = 3,
    strategy: Annotated[
        str,
        typer.Option(help=f"Strategy: {', '.join(STRATEGIES)}."),
    ] = "fedavg",
    workdir: Annotated[
        Path,
        typer.Option(help="Work folder for the network, data, Airflow and logs."),
    ] = DEFAULT_WORKDIR,
    force: Annotated[
        bool,
        typer.Option(help="Use a work folder that holds other files."),
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option(help="Leave everything up for the Airflow UI until Ctrl-C."),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object, nothing else.")
    ] = False,
) -> None:
    """Start a network of organizations here and train a model together."""
    stop_on_sigterm()
    out = err_console if json_out else console
    options = QuickstartOptions(
        workdir=workdir,
        nodes=nodes,
        rounds=rounds,
        strategy=strategy,
        force=force,
        keep_running=keep_running,
    )

    def show(result: QuickstartResult) -> None:
        if json_out:
            print_json(result.to_json())
        else:
            _print_result(result)

    try:
        result = run_quickstart(options, out, on_result=show)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted; every process the quickstart started is stopped"
        )
        raise typer.Exit(130) from None
    if not result.done:
        raise QuickstartError(
            f"the compute plan {result.plan_key} ended {result.status}: {result.error}"
        )
    if not json_out:
        console.print("Everything the quickstart started is stopped.")


def _print_result(result: QuickstartResult) -> None:
    columns = [c for c in result.table.columns if c[1] == _TABLE_METRIC]
    if not columns:
        console.print(f"plan {result.plan_key} recorded no {_TABLE_METRIC}")
        return
    indexes = [result.table.columns.index(c) for c in columns]
    headers = ["round", *(_model_title(model) for model, _ in columns)]
    rows = [
        (round_, *("" if values[i] is None else f"{values[i]:.3f}" for i in indexes))
        for round_, values in result.table.rows
    ]
    print_table(
        "Accuracy on held-out test data, per round "
        "(federated: mean over the organizations; local: the organization's own)",
        headers,
        rows,
    )
    if result.done:
        console.print(f"[green]plan {result.plan_key} done[/green]")


def _model_title(model: str) -> str:
    if model == FEDERATED:
        return "federated"
    return model.replace("local:", "local ")
