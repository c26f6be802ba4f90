"""``airfed plan simulate``: run a compiled plan in this process.

The plan spec names asset keys; a manifest (see
:func:`airfed.sdk.simulation.load_simulation_assets`) maps each to local
files: function folders with their metadata, openers, data sample folders.
No node, orchestrator or network is needed.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Annotated

import typer

from airfed.sdk.cli._apps import plan_app
from airfed.sdk.cli._output import print_json, print_table
from airfed.sdk.errors import AirfedError
from airfed.sdk.simulation import SimulationResult, load_simulation_assets, simulate
from airfed.sdk.spec import parse_plan_spec

__all__ = ["plan_simulate"]


@plan_app.command("simulate")
def plan_simulate(
    spec_file: Annotated[
        Path, typer.Argument(help="Compiled plan spec (JSON with schema_version).")
    ],
    assets: Annotated[
        Path,
        typer.Option(
            "--assets", help="Manifest mapping the plan's asset keys to local files."
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object.")
    ] = False,
) -> None:
    """Run a compute plan in this process, without Airflow or nodes."""
    try:
        text = spec_file.read_text()
    except OSError as exc:
        raise AirfedError(f"cannot read plan spec {spec_file}: {exc.strerror}") from exc
    spec = parse_plan_spec(text)
    result = simulate(spec, load_simulation_assets(assets))
    if json_out:
        print_json(result.to_dict())
    else:
        _print(result)
    if result.status != "done":
        raise AirfedError(f"the simulated plan failed: {result.error}")


def _print(result: SimulationResult) -> None:
    """Mean of each metric over the nodes, by round and model."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for p in result.performances:
        groups.setdefault((p.model, p.identifier, p.round), []).append(p.value)
    rows = [
        (model, metric, round, f"{fmean(values):.4f}", len(values))
        for (model, metric, round), values in sorted(groups.items())
    ]
    print_table(
        f"plan {result.plan_key}: {result.status}",
        ("model", "metric", "round", "mean over nodes", "nodes"),
        rows,
    )
